"""Training checkpoints: vector, optimizer and RNG state in one safetensors file (no pickle).

Tensors: ``param.<role>`` (the vector so far), ``optim.<phase>.<index>.<key>`` (Adam
moments and step counters), ``rng`` (the CPU generator state), ``trajectory.<key>`` (an
on-policy run stopped inside a trajectory: its latents ``x``). Metadata (JSON
strings): the run's configuration, the iteration reached, the loss history, optimizer
hyper-parameters and grad-scaler state. Written atomically; a resumed run continues
exactly where the uninterrupted run would be.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..steering.vector_file import write_safetensors_atomically

CHECKPOINT_FORMAT = "responsible-steering.training-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_SUFFIX = ".checkpoint.safetensors"


class CheckpointError(ValueError):
    """A training checkpoint is missing, malformed or belongs to a different run."""


@dataclass
class TrainState:
    iteration: int
    params: dict[str, torch.Tensor]
    optimizers: dict[str, dict]            # phase -> optimizer.state_dict()
    scalers: dict[str, dict]               # phase -> GradScaler.state_dict() (fp16 only)
    rng_state: torch.Tensor
    history: dict[str, list[float]]
    config: dict[str, Any] = field(default_factory=dict)
    trajectory: dict[str, torch.Tensor] = field(default_factory=dict)  # on-policy latents mid-trajectory


def _split_optimizer(phase: str, state_dict: dict, tensors: dict) -> dict:
    """Tensors of an optimizer state into `tensors`; the JSON-able rest is returned."""
    rest = {"param_groups": state_dict["param_groups"], "state": {}}
    for index, entry in state_dict["state"].items():
        plain = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{phase}.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                plain[key] = value
        rest["state"][str(index)] = plain
    return rest


def _join_optimizer(phase: str, rest: dict, tensors: dict) -> dict:
    state = {}
    for index, plain in rest["state"].items():
        entry = dict(plain)
        prefix = f"optim.{phase}.{index}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                entry[key[len(prefix):]] = value
        state[int(index)] = entry
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(path: str, state: TrainState) -> str:
    """Write atomically (temp file + rename)."""

    tensors: dict[str, torch.Tensor] = {f"param.{r}": t.detach().to("cpu", torch.float32).contiguous()
                                        for r, t in state.params.items()}
    optim_meta = {phase: _split_optimizer(phase, sd, tensors) for phase, sd in state.optimizers.items()}
    tensors["rng"] = state.rng_state.to("cpu").contiguous()
    for k, t in state.trajectory.items():
        tensors[f"trajectory.{k}"] = t.detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "iteration": str(state.iteration),
        "config": json.dumps(state.config, sort_keys=True),
        "history": json.dumps(state.history),
        "optimizers": json.dumps(optim_meta, sort_keys=True),
        "scalers": json.dumps(state.scalers, sort_keys=True),
    }
    return write_safetensors_atomically(tensors, path, metadata)


def load_checkpoint(path: str) -> TrainState:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"no training checkpoint at {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {e}") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(CHECKPOINT_VERSION):
        raise CheckpointError(f"{path}: checkpoint version {metadata.get('format_version')!r} is not supported")
    try:
        optim_meta = json.loads(metadata["optimizers"])
        state = TrainState(
            iteration=int(metadata["iteration"]),
            params={k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")},
            optimizers={phase: _join_optimizer(phase, rest, {k: v for k, v in tensors.items()
                                                             if k.startswith(f"optim.{phase}.")})
                        for phase, rest in optim_meta.items()},
            scalers=json.loads(metadata["scalers"]),
            rng_state=tensors["rng"],
            history=json.loads(metadata["history"]),
            config=json.loads(metadata["config"]),
            trajectory={k[len("trajectory."):]: v for k, v in tensors.items() if k.startswith("trajectory.")},
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete ({e})") from None
    return state
