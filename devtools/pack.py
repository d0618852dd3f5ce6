"""The pack, loaded the way ComfyUI loads it, once per process.

ComfyUI imports a custom node folder as a package (`nodes.load_custom_node`) and runs its
`comfy_entrypoint`; the pack's steering/ and training/ packages are then submodules of that
package. Tests, benchmarks and tools all go through `load()`, which finds an already loaded
copy by its file, so module state (such as the architecture registry) exists once.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import sys
from types import ModuleType

from devtools import comfy_env


def _entry_file(pack_dir: str) -> str:
    return os.path.realpath(os.path.join(pack_dir, "__init__.py"))


def loaded(pack_dir: str = comfy_env.REPO) -> ModuleType | None:
    """The pack package already imported from `pack_dir` (found by its __file__), if any."""
    entry = _entry_file(pack_dir)
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path) == entry:
            return module
    return None


def load(pack_dir: str = comfy_env.REPO) -> ModuleType:
    """The pack package, loaded by ComfyUI's own custom-node loader unless it already is.

    ComfyUI must be set up first (devtools.comfy_env.setup)."""
    module = loaded(pack_dir)
    if module is not None:
        return module
    import nodes  # ComfyUI's

    if not asyncio.run(nodes.load_custom_node(pack_dir, module_parent="custom_nodes")):
        raise RuntimeError(f"ComfyUI failed to load the pack from {pack_dir}")
    module = loaded(pack_dir)
    if module is None:
        raise RuntimeError(f"ComfyUI loaded {pack_dir} but no module has its file {_entry_file(pack_dir)}")
    return module


def module(dotted: str, pack_dir: str = comfy_env.REPO) -> ModuleType:
    """A submodule of the loaded pack, e.g. module('steering.hspace')."""
    return importlib.import_module(f"{load(pack_dir).__name__}.{dotted}")
