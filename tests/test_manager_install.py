"""ComfyUI-Manager's own CLI (cm-cli, comfyui-manager 4.x) installs the pack into a fresh ComfyUI from a
local git URL with the network shut off; that ComfyUI's server then loads every node of the pack and
runs an example workflow. (cm-cli clones the repository's committed HEAD, as it would from GitHub.)
The pack's install.py, which the Manager runs, brings the NudeNet detector into an environment without it
(offline, from the wheel `make setup` keeps in its cache, as pip would fetch it from PyPI)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from devtools import comfy_env
from devtools.server import ComfyServer
from devtools.session import tiny_checkpoint_path
from devtools.workflows import WORKFLOW_DIR, load_workflow, tiny_profile, ui_to_api

CM_CLI = os.path.join(os.path.dirname(sys.executable), "cm-cli")
PACK = "responsible-steering"
# any connection goes to a closed port, and pip may not use an index: the install must be offline
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "all_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": "", "PIP_NO_INDEX": "1", "UV_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def git(*args: str, cwd: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_manager_installs_the_pack_offline_and_it_runs(comfy, tmp_path):
    assert os.path.isfile(CM_CLI), f"cm-cli not found at {CM_CLI}; run `make setup` (comfyui-manager)"
    fresh = tmp_path / "ComfyUI"
    shutil.copytree(comfy_env.COMFY_DIR, fresh, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (fresh / "custom_nodes" / PACK).exists()
    source = tmp_path / "src" / PACK
    git("clone", "-q", comfy_env.REPO, str(source), cwd=str(tmp_path))

    done = subprocess.run([CM_CLI, "install", f"file://localhost{source}"], cwd=str(tmp_path),
                          env={**os.environ, "COMFYUI_PATH": str(fresh), "HOME": str(tmp_path), **OFFLINE},
                          capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "Installation was successful" in log, log[-3000:]
    # the Manager ran the pack's install.py (this environment has the detector already)
    assert "responsible-steering install: NudeNet detector present" in log, log[-3000:]
    installed = fresh / "custom_nodes" / PACK
    assert (installed / "__init__.py").is_file() and (installed / "nodes").is_dir()
    assert git("rev-parse", "HEAD", cwd=str(installed)) == git("rev-parse", "HEAD", cwd=comfy_env.REPO)

    (fresh / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    checkpoint = tiny_checkpoint_path()
    os.symlink(checkpoint, fresh / "models" / "checkpoints" / os.path.basename(checkpoint))
    with ComfyServer(str(tmp_path / "server"), comfy_dir=str(fresh)) as server:
        info = server.object_info()
        loaded = {k for k, v in info.items() if v.get("python_module", "").endswith(PACK)}
        expected = {k for k in comfy.nodes.NODE_CLASS_MAPPINGS if k.startswith("RS")}
        assert loaded == expected, sorted(loaded ^ expected)
        path = os.path.join(WORKFLOW_DIR, "dual_latent_user_safe_prompt.json")
        prompt = tiny_profile(ui_to_api(load_workflow(path), lambda t: info[t]["input"]),
                              os.path.basename(checkpoint))
        entry = server.run_prompt(prompt)
    images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
    assert images and all((fresh / "output" / i["subfolder"] / i["filename"]).is_file() for i in images)


NUDENET_WHEEL = "nudenet-3.4.2-py3-none-any.whl"


def test_install_script_brings_the_nudenet_detector_offline(tmp_path):
    """install.py in a fresh environment without the nudenet package installs it without its dependencies (no
    OpenCV, no onnxruntime), hash-checked, so the detector file is there; a second run finds it and installs nothing.
    A broken index (nothing to install from) fails with the command to run by hand."""
    import hashlib
    import importlib.util

    wheels = os.path.join(comfy_env.CACHE, "downloads")
    assert os.path.isfile(os.path.join(wheels, NUDENET_WHEEL)), f"{NUDENET_WHEEL} not in {wheels}; run `make setup`"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = str(venv / "bin" / "python")
    script = os.path.join(comfy_env.REPO, "install.py")
    probe = ("import importlib.util, os; s = importlib.util.find_spec('nudenet'); "
             "print(os.path.join(s.submodule_search_locations[0], '320n.onnx') if s else '')")
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip() == ""

    def install(**env):
        return subprocess.run([python, script], cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HOME": str(tmp_path), **OFFLINE, **env})

    failed = install(PIP_FIND_LINKS=str(tmp_path / "nowhere"))
    assert failed.returncode == 1 and f"-m pip install --no-deps nudenet==3.4.2" in failed.stderr, failed.stderr

    done = install(PIP_FIND_LINKS=wheels)
    assert done.returncode == 0 and "NudeNet detector installed" in done.stdout, done.stdout + done.stderr
    detector = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip()
    ours = os.path.join(importlib.util.find_spec("nudenet").submodule_search_locations[0], "320n.onnx")
    digest = lambda path: hashlib.sha256(open(path, "rb").read()).hexdigest()  # noqa: E731
    assert os.path.isfile(detector) and digest(detector) == digest(ours)
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert "nudenet==3.4.2" in listed and "opencv" not in listed and "onnxruntime" not in listed, listed

    again = install()
    assert again.returncode == 0 and "NudeNet detector present" in again.stdout, again.stdout + again.stderr
