"""The pack's pure modules (maths, file formats, the policy's graph functions) imported without ComfyUI.

ComfyUI loads the pack as a package whose ``__init__`` registers nodes (and so imports ComfyUI). The
pure modules do not need that: :func:`module` imports them as submodules of a stand-in parent package
(``rs_pure``) whose ``__init__`` is never run, so ``from ..steering import x`` inside them resolves to
the same files. Tests of these modules need neither a ComfySession nor a server (``make test-fast``).

A module imported this way is a second copy of the one ComfyUI loads: do not mix their objects
(``isinstance`` across the two copies is false).
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

from devtools import comfy_env

PARENT = "rs_pure"


def parent() -> ModuleType:
    """The stand-in parent package (created once per process)."""
    package = sys.modules.get(PARENT)
    if package is None:
        package = ModuleType(PARENT, "The Responsible Steering pack's files, without its ComfyUI entry point.")
        package.__path__ = [comfy_env.REPO]
        package.__package__ = PARENT
        sys.modules[PARENT] = package
    return package


def module(dotted: str) -> ModuleType:
    """The pack's module `dotted` (e.g. "operator_policy.graph"), imported without ComfyUI."""
    parent()
    return importlib.import_module(f"{PARENT}.{dotted}")


def fixture(dotted: str):
    """A module-scoped pytest fixture returning :func:`module` (`dotted`): for tests of the maths and file
    formats, which then need no ComfySession (``make test-fast``)."""
    import pytest

    @pytest.fixture(scope="module")
    def pack_module():
        return module(dotted)

    pack_module.__doc__ = f"The pack's {dotted}, without ComfyUI."
    return pack_module
