"""Test harness: a real ComfyUI 0.3.75 (from `make setup`) with this pack loaded.

Reusable pieces for every test module:

* ComfySession: ComfyUI in this process, folders in a temporary base directory,
  the pack loaded from custom_nodes/ exactly as ComfyUI loads it, and API-format
  prompts executed through ComfyUI's own validation and PromptExecutor (so nodes run
  under torch.inference_mode(), as in production).
* Graph: a small builder for API-format prompts.
* ui_to_api: convert a UI-format workflow (what users save and share) into an API
  prompt, using the node schemas (in-process classes or a server's /object_info).
* ComfyServer: a real `main.py` server on a free loopback port.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("RS_CACHE", os.path.join(REPO, ".cache"))
COMFY_VERSION = "0.3.75"
COMFY_DIR = os.environ.get("RS_COMFYUI_DIR", os.path.join(CACHE, "comfyui", f"ComfyUI-{COMFY_VERSION}"))
PACK_NAME = "responsible-steering"
MODEL_CACHE = os.path.join(CACHE, "models")

sys.path.insert(0, os.path.join(REPO, "scripts"))


def ensure_comfy_importable() -> None:
    """Put the cached ComfyUI first on sys.path and set it up for tests (CPU, no CLI parsing)."""
    if not os.path.isfile(os.path.join(COMFY_DIR, "main.py")):
        raise RuntimeError(f"ComfyUI {COMFY_VERSION} not found at {COMFY_DIR}; run `make setup` first")
    if COMFY_DIR not in sys.path:
        sys.path.insert(0, COMFY_DIR)
    from comfy.cli_args import args

    args.cpu = True
    import utils.install_util  # noqa: F401  must precede `nodes` (HARNESS.md)


def tiny_checkpoint_path() -> str:
    """The tiny real SD1 checkpoint (generated once into the cache)."""
    import tiny_checkpoint

    return tiny_checkpoint.ensure_sd1_checkpoint(os.path.join(MODEL_CACHE, "checkpoints"))


def make_base_dir(base: str) -> dict[str, str]:
    """A ComfyUI base directory: models, input/output/temp and custom_nodes with this pack linked in."""
    dirs = {name: os.path.join(base, *name.split("/")) for name in
            ("models/checkpoints", "models/steering_vectors", "models/vae_approx", "input", "output", "temp",
             "custom_nodes", "user")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    link = os.path.join(dirs["custom_nodes"], PACK_NAME)
    if not os.path.lexists(link):
        os.symlink(REPO, link)
    ckpt = tiny_checkpoint_path()
    ckpt_link = os.path.join(dirs["models/checkpoints"], os.path.basename(ckpt))
    if not os.path.lexists(ckpt_link):
        os.symlink(ckpt, ckpt_link)
    dirs["pack"] = link
    dirs["checkpoint_name"] = os.path.basename(ckpt)
    return dirs


class _ServerStub:
    """What PromptExecutor needs of a server; records the messages it sends."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class PromptError(RuntimeError):
    """A prompt failed validation or execution; carries ComfyUI's error details."""

    def __init__(self, message: str, details: Any = None, exception_type: str | None = None):
        super().__init__(message)
        self.details = details
        self.exception_type = exception_type


@dataclass
class RunResult:
    prompt: dict
    ui: dict
    _executor: Any

    def output(self, node_id: str, slot: int = 0):
        """The value a node produced at an output slot (first item of its output list)."""
        entry = self._executor.caches.outputs.get(str(node_id))
        if entry is None:
            raise KeyError(f"node {node_id} produced no cached output")
        if asyncio.iscoroutine(entry):
            entry = asyncio.run(entry)
        outputs = entry.outputs if hasattr(entry, "outputs") else entry
        return outputs[slot][0]


class ComfySession:
    """ComfyUI running in this process with the pack loaded."""

    def __init__(self, base_dir: str):
        ensure_comfy_importable()
        self.dirs = make_base_dir(base_dir)
        import folder_paths

        folder_paths.set_output_directory(self.dirs["output"])
        folder_paths.set_input_directory(self.dirs["input"])
        folder_paths.set_temp_directory(self.dirs["temp"])
        folder_paths.set_user_directory(self.dirs["user"])
        folder_paths.add_model_folder_path("checkpoints", self.dirs["models/checkpoints"], is_default=True)
        folder_paths.add_model_folder_path("steering_vectors", self.dirs["models/steering_vectors"], is_default=True)
        folder_paths.add_model_folder_path("vae_approx", self.dirs["models/vae_approx"], is_default=True)

        import execution
        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        ok = asyncio.run(nodes.load_custom_node(self.dirs["pack"], module_parent="custom_nodes"))
        if not ok:
            raise RuntimeError(f"ComfyUI failed to load the pack from {self.dirs['pack']}")
        self.pack = sys.modules[self.dirs["pack"].replace(".", "_x_")]
        self.nodes = nodes
        self.server = _ServerStub()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0})
        self.checkpoint_name = self.dirs["checkpoint_name"]
        self.vector_dir = self.dirs["models/steering_vectors"]
        self.output_dir = self.dirs["output"]

    def module(self, dotted: str):
        """A submodule of the pack as ComfyUI loaded it, e.g. module('steering.hspace')."""
        import importlib

        return importlib.import_module(f"{self.pack.__name__}.{dotted}")

    def node_class(self, class_type: str):
        return self.nodes.NODE_CLASS_MAPPINGS[class_type]

    def input_spec(self, class_type: str) -> dict:
        return self.node_class(class_type).INPUT_TYPES()

    def run(self, prompt: dict) -> RunResult:
        """Validate and execute an API-format prompt; raise PromptError on any failure."""
        import execution

        prompt = json.loads(json.dumps(prompt))  # what a client would send
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise PromptError(f"prompt invalid: {valid[1]} {valid[3]}", details=valid)
        self.server.messages.clear()
        self.executor.execute(prompt, prompt_id, {}, valid[2])
        for event, data in self.executor.status_messages:
            if event == "execution_error":
                raise PromptError(data.get("exception_message", "execution failed"), details=data,
                                  exception_type=data.get("exception_type"))
            if event == "execution_interrupted":
                raise PromptError("execution interrupted", details=data)
        return RunResult(prompt, self.executor.history_result["outputs"], self.executor)


class Graph:
    """Build API-format prompts: ``ref = g.add("KSampler", model=ckpt[0], ...)``."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}
        self._ids = itertools.count(1)

    class Ref:
        def __init__(self, node_id: str):
            self.id = node_id

        def __getitem__(self, slot: int):
            return [self.id, slot]

    def add(self, class_type: str, node_id: str | None = None, **inputs) -> "Graph.Ref":
        node_id = node_id or str(next(self._ids))
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return Graph.Ref(node_id)

    def prompt(self) -> dict:
        return json.loads(json.dumps(self.nodes))


# ---------------------------------------------------------------------------- UI format -> API format

CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOT_EXECUTED = {"Note", "MarkdownNote"}


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ui_to_api(workflow: dict, input_spec: Callable[[str], dict]) -> dict:
    """Convert a UI-format workflow (frontend JSON, version 0.4) to an API prompt.

    Widget values are matched to the node's widget inputs in schema order (required,
    then optional), skipping the frontend's control_after_generate values."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        class_type = node["type"]
        if class_type in NOT_EXECUTED:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({class_type}) is muted or bypassed; not supported here")
        spec = input_spec(class_type)
        ordered = list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values", [])
        if isinstance(values, dict):
            values = [values[name] for name, s in ordered if _is_widget(s) and name in values]
        values = list(values)
        inputs = {}
        for name, s in ordered:
            if _is_widget(s) and values:
                value = values.pop(0)
                inputs[name] = value
                options = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                if (s[0] == "INT" and values and isinstance(values[0], str) and values[0] in CONTROL_VALUES
                        and (options.get("control_after_generate") or name in ("seed", "noise_seed"))):
                    values.pop(0)
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": class_type, "inputs": inputs}
    return prompt


def load_workflow(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- real server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`python main.py` of the real ComfyUI, with the pack in custom_nodes, on a free port."""

    def __init__(self, base_dir: str, port: int | None = None, python: str = sys.executable,
                 log_path: str | None = None):
        ensure_comfy_importable()
        self.dirs = make_base_dir(base_dir)
        self.base_dir = base_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = python
        self.log_path = log_path or os.path.join(base_dir, "server.log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base_dir, "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch"]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=self._log, stderr=subprocess.STDOUT)
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
