"""The registry's own checker (comfy-cli `comfy node validate`, offline) accepts pyproject.toml with
no warning, and refuses a copy that breaks a rule it enforces (so the check can fail)."""
from __future__ import annotations

import os
import re
import subprocess

from devtools.comfy_env import CACHE, REPO

COMFY_CLI = os.path.join(CACHE, "tools", "bin", "comfy")  # installed by scripts/setup.sh


def validate(folder: str, home: str) -> tuple[int, str]:
    """comfy-cli keeps its settings under $HOME/.config: a temporary home leaves no trace."""
    done = subprocess.run([COMFY_CLI, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=folder,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": home, "XDG_CONFIG_HOME": os.path.join(home, ".config"),
                               "NO_COLOR": "1"})
    return done.returncode, done.stdout + done.stderr


def test_registry_validation_passes_without_warnings(tmp_path):
    assert os.path.isfile(COMFY_CLI), f"comfy-cli not found at {COMFY_CLI}; run `make setup`"
    code, out = validate(REPO, str(tmp_path))
    assert code == 0 and "All validation checks passed" in out, out
    assert not re.search(r"(?i)warning|error", out), out


def test_registry_validation_refuses_a_broken_copy(tmp_path):
    text = open(os.path.join(REPO, "pyproject.toml")).read()
    broken = re.sub(r'(?m)^requires-comfyui = .*$', 'requires-comfyui = "latest"', text)
    assert broken != text
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(broken)
    code, out = validate(str(project), str(tmp_path))
    assert "Invalid requires-comfyui" in out, out
    (project / "pyproject.toml").write_text(re.sub(r'(?m)^version = .*$', 'version = ""', text))
    code, out = validate(str(project), str(tmp_path))
    assert "version is empty" in out, out


def test_icon_is_in_the_package():
    import tomllib

    comfy = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["tool"]["comfy"]
    assert comfy["Icon"].endswith("/main/js/icon.svg") and os.path.isfile(os.path.join(REPO, "js", "icon.svg"))
    tracked = subprocess.run(["git", "ls-files", "js/icon.svg"], cwd=REPO, capture_output=True, text=True).stdout
    assert tracked.strip() == "js/icon.svg", "the registry archive holds git-tracked files only"
