"""Fit steering vectors on ToyWorld with the pack's own training code.

The vectors the efficacy benchmark applies are learned by ``training/loop.py`` -- the
objectives, batched rollouts and loop behind the Train Steering Vector node -- run under
``torch.inference_mode()`` exactly as ComfyUI runs that node, on ToyWorld's ComfyUI model.
So the benchmark measures the pack's training, not a re-implementation of it. Results are
the pack's SteeringVector (arch "toyworld", registered when the pack loads)
and are saved in its vector file format.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from . import pack_toyworld


@dataclass
class FitSpec:
    """One vector to learn: Train Steering Vector's settings, with prompt sets."""

    name: str
    method: str                 # embedding_direction, codsma_cvector, respodiff_ram_sam
    direction: str              # toward_target, away_from_concept
    neutral: list[str]          # the prompt set (each sample draws one)
    target: list[str]           # one target / concept for all, or one per neutral prompt
    settings: dict = field(default_factory=dict)  # other TrainConfig fields (iterations, lambda_sem, ...)

    def describe(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in sorted(self.settings.items()))
        targets = sorted(set(self.target))
        target = targets[0] if len(targets) == 1 else f"{len(targets)} paired targets"
        return f"{self.method} {self.direction.replace('_', ' ')} {target}; {len(self.neutral)} neutral prompts; {extra}"


def train_vector(tw, pack, spec: FitSpec, *, steps: int, guidance: float, seed: int = 0, model_module=None):
    """(SteeringVector, loss history, seconds) of one run of the pack's training loop on ToyWorld (or on the
    demo world whose model module is `model_module`, e.g. ToyWorld-SD's).

    `pack` imports pack modules by name (``pack("training.loop")``). Rollouts use ToyWorld's
    sampling schedule (`steps` steps of ComfyUI's "normal" scheduler) and CFG `guidance`."""
    loop = pack("training.loop")
    M = model_module or pack_toyworld("model")
    settings = {"iterations": 200, "batch_size": 8, "rollout_guidance": guidance, **spec.settings}
    cfg = loop.TrainConfig(method=spec.method, direction=spec.direction, seed=seed, resolution=M.IMAGE_SIZE,
                           rollout_steps=steps, scheduler="normal", arch=M.ARCH_NAME,
                           neutral_text="\n".join(spec.neutral), target_text="\n".join(spec.target), **settings)
    start = time.time()
    with torch.inference_mode():  # as ComfyUI's executor runs the training node
        conditionings = {"neutral": [tw.encode(p) for p in spec.neutral],
                         "other": [tw.encode(t) for t in spec.target], "uncond": tw.encode("")}
        result = loop.train(tw.model, conditionings, cfg)
    vector = loop.vector_of(result, M.ARCH_NAME)
    return dataclasses.replace(vector, info={**vector.info, "name": spec.name}), result.history, time.time() - start
