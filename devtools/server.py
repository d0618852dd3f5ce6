"""A real ComfyUI server (`python main.py`) with the pack in custom_nodes, on a free loopback port."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from devtools import comfy_env
from devtools.session import PromptError, make_base_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`python main.py` of the real ComfyUI, with the pack in custom_nodes, on a free port.

    By default the cached ComfyUI runs with `base_dir` as its base directory (models, custom_nodes with
    the pack linked in, input/output). `comfy_dir` runs another ComfyUI folder as it is, without a base
    directory (its own custom_nodes and models: what an installer such as ComfyUI-Manager set up there);
    `front_end_root` serves another frontend build (--front-end-root)."""

    def __init__(self, base_dir: str, port: int | None = None, python: str = sys.executable,
                 log_path: str | None = None, comfy_dir: str | None = None, front_end_root: str | None = None):
        comfy_env.setup()
        self.comfy_dir = comfy_dir or comfy_env.COMFY_DIR
        self.dirs = make_base_dir(base_dir) if comfy_dir is None else {}
        os.makedirs(base_dir, exist_ok=True)
        self.base_dir = base_dir
        self.front_end_root = front_end_root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = python
        self.log_path = log_path or os.path.join(base_dir, "server.log")
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        if self.comfy_dir == comfy_env.COMFY_DIR:
            cmd += ["--base-directory", self.base_dir]
        if self.front_end_root:
            cmd += ["--front-end-root", self.front_end_root]
        return cmd

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command(), cwd=self.comfy_dir, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {self.process.returncode}; see {self.log_path}")
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI server not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise PromptError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}") from None

    def object_info(self) -> dict:
        return self.get("/object_info")

    def run_prompt(self, prompt: dict, timeout: float = 600.0) -> dict:
        """POST /prompt and wait for the history entry; returns it (raises on error)."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": "rs-tests"})["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    raise PromptError(f"prompt failed: {status.get('messages')}", details=entry)
                if status.get("completed"):
                    return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")


def write_policy(base_dir: str, document, name: str = "policy.json") -> str:
    """An operator's policy (a dict, or a text written as it is) at the default place of the server with
    base directory `base_dir` (<user>/responsible-steering/`name`); returns its path."""
    folder = os.path.join(base_dir, "user", "responsible-steering")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(document if isinstance(document, str) else json.dumps(document))
    return path


@contextlib.contextmanager
def started(server: ComfyServer, **env):
    """`server` started with `env` added to its environment (one torch thread unless `env` says otherwise:
    test machines have few cores), and stopped afterwards; the caller's environment is put back at once."""
    added = {"OMP_NUM_THREADS": "1", **env}
    saved = {key: os.environ.get(key) for key in added}
    os.environ.update(added)
    try:
        server.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield server
    finally:
        server.stop()
