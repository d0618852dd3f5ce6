"""Where the real ComfyUI lives, and the one place that makes it importable.

`make setup` (scripts/setup.sh) unpacks ComfyUI 0.3.75 into .cache/comfyui/. ComfyUI is
not an installable package: its modules (`comfy`, `nodes`, `execution`, `folder_paths`,
...) are imported from its folder, so `setup()` puts that folder FIRST on sys.path. That
matters because this repository also has a `nodes/` package; ComfyUI's `nodes` must win,
and the pack's own nodes are only ever reached through the loaded pack (devtools.pack).

Nothing else in the repository edits sys.path: the repository root is on the path by
configuration (pytest's `pythonpath`, or `python -m devtools....` from the root).
"""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("RS_CACHE", os.path.join(REPO, ".cache"))
COMFY_VERSION = "0.3.75"
COMFY_DIR = os.environ.get("RS_COMFYUI_DIR", os.path.join(CACHE, "comfyui", f"ComfyUI-{COMFY_VERSION}"))
MODEL_CACHE = os.path.join(CACHE, "models")
# the newest comfyui-frontend-package's static files (scripts/setup.sh: NEWEST_FRONTEND), for --front-end-root
NEWEST_FRONTEND_DIR = os.path.join(CACHE, "frontend", "newest")


def setup(cpu: bool = True) -> str:
    """Make the cached ComfyUI importable (first on sys.path) and configure it without CLI parsing:
    on the CPU unless `cpu` is False. Idempotent; returns ComfyUI's folder.

    Call it before anything imports ComfyUI's modules (`cpu` only takes effect before
    comfy.model_management is first imported)."""
    if not os.path.isfile(os.path.join(COMFY_DIR, "main.py")):
        raise RuntimeError(f"ComfyUI {COMFY_VERSION} not found at {COMFY_DIR}; run `make setup` first")
    if COMFY_DIR not in sys.path:
        sys.path.insert(0, COMFY_DIR)
    from comfy.cli_args import args

    args.cpu = cpu
    import utils.install_util  # noqa: F401  ComfyUI's `utils` package must be imported before its `nodes`

    return COMFY_DIR
