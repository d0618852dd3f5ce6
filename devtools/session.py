"""ComfyUI running in this process with the pack loaded, for tests and tools.

`ComfySession(base_dir)` sets up ComfyUI's folders in a temporary base directory (the
tiny checkpoint linked into models/checkpoints, the pack linked into custom_nodes/),
loads the pack exactly as ComfyUI loads it (devtools.pack) and runs API-format prompts
through ComfyUI's own validation and PromptExecutor, so nodes run under
torch.inference_mode() as in production. Prompts are built with ComfyUI's
`comfy_execution.graph_utils.GraphBuilder(prefix="")`.
"""
from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

from devtools import comfy_env, pack, tiny_models

PACK_NAME = "responsible-steering"


# Every key a PromptExecutor reads from its cache arguments (execution.py): 0.3.75 reads "lru" and "ram",
# upstream 0.38's execute_async also "ram_inactive" (a KeyError without it). 0 = no RAM-pressure eviction.
EXECUTOR_CACHE_ARGS = {"lru": 0, "ram": 0.0, "ram_inactive": 0.0}

def tiny_checkpoint_path() -> str:
    """The tiny real SD1 checkpoint (generated once into the cache)."""
    return tiny_models.ensure_sd1_checkpoint(os.path.join(comfy_env.MODEL_CACHE, "checkpoints"))


def make_base_dir(base: str) -> dict[str, str]:
    """A ComfyUI base directory: models, input/output/temp and custom_nodes with this pack linked in."""
    dirs = {name: os.path.join(base, *name.split("/")) for name in
            ("models/checkpoints", "models/steering_vectors", "models/vae_approx", "input", "output", "temp",
             "custom_nodes", "user")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    link = os.path.join(dirs["custom_nodes"], PACK_NAME)
    if not os.path.lexists(link):
        os.symlink(comfy_env.REPO, link)
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
    """What a prompt produced: the prompt as run, the UI outputs of its output nodes, and every
    node's cached outputs (read through `output` / `outputs`)."""
    prompt: dict
    ui: dict
    executor: Any

    def outputs(self, node_id: str, slot: int = 0) -> list:
        """The whole list a node produced at an output slot (one item per batch of a list output)."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if entry is None:
            raise KeyError(f"node {node_id} produced no cached output")
        if asyncio.iscoroutine(entry):
            entry = asyncio.run(entry)
        values = entry.outputs if hasattr(entry, "outputs") else entry
        return list(values[slot])

    def output(self, node_id: str, slot: int = 0):
        """The first item a node produced at an output slot (the value, for nodes without list outputs)."""
        return self.outputs(node_id, slot)[0]


class ComfySession:
    """ComfyUI running in this process with the pack loaded."""

    def __init__(self, base_dir: str):
        comfy_env.setup()
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
        self.pack = pack.load(self.dirs["pack"])
        self.nodes = nodes
        self.server = _ServerStub()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args=EXECUTOR_CACHE_ARGS)
        self.checkpoint_name = self.dirs["checkpoint_name"]
        self.vector_dir = self.dirs["models/steering_vectors"]
        self.output_dir = self.dirs["output"]

    def module(self, dotted: str):
        """A submodule of the pack as ComfyUI loaded it, e.g. module('steering.hspace')."""
        return pack.module(dotted, self.dirs["pack"])

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
