"""Install step that ComfyUI-Manager runs after requirements.txt (``python install.py`` with ComfyUI's Python, in the
pack's folder; also at the next start when the Manager defers it): makes sure the NudeNet detector that the NudeNet
score, Detect Unsafe and Censor read (320n.onnx, shipped in the ``nudenet`` package) is installed.

The pack reads the ONNX file and never imports the package, so it is installed without its dependencies
(``--no-deps``: opencv-python-headless and onnxruntime, a second OpenCV build beside the one other packs bring),
pinned and hash-checked. A requirements.txt line cannot say ``--no-deps``, hence this script. Nothing is done when
the detector is already there. Exit status 1, with the command to run by hand, when it could not be installed.

    python install.py            # what the Manager runs
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

NUDENET = "nudenet==3.4.2"
NUDENET_SHA256 = "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"  # the PyPI wheel
DETECTOR = "320n.onnx"
PREFIX = "responsible-steering install:"


def detector_path() -> str | None:
    """The installed nudenet package's 320n.onnx (located, not imported: its import needs OpenCV), or None."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("nudenet")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, DETECTOR)
        if os.path.isfile(path):
            return path
    return None


def installer(python: str) -> list[str] | None:
    """The command that installs packages into `python`'s environment: its pip, else uv (environments made by uv
    have no pip); None when neither is there."""
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [python, "-m", "pip", "install"]
    uv = shutil.which("uv")
    return [uv, "pip", "install", "--python", python] if uv else None


def main() -> int:
    found = detector_path()
    if found:
        print(f"{PREFIX} NudeNet detector present: {found}")
        return 0
    command = installer(sys.executable)
    manual = f"{sys.executable} -m pip install --no-deps {NUDENET}"
    if command is None:
        print(f"{PREFIX} neither pip nor uv found for {sys.executable}; install the NudeNet detector with: {manual}",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        pinned = os.path.join(tmp, "nudenet.txt")
        with open(pinned, "w") as f:
            f.write(f"{NUDENET} --hash=sha256:{NUDENET_SHA256}\n")
        command = [*command, "--no-deps", "--require-hashes", "-r", pinned]
        print(f"{PREFIX} installing the NudeNet detector ({NUDENET}, without its dependencies): {' '.join(command)}",
              flush=True)
        done = subprocess.run(command)
    found = detector_path()
    if done.returncode != 0 or not found:
        print(f"{PREFIX} the NudeNet detector could not be installed (exit {done.returncode}); the NudeNet score, "
              f"Detect Unsafe and Censor need it. Install it with: {manual}", file=sys.stderr)
        return 1
    print(f"{PREFIX} NudeNet detector installed: {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
