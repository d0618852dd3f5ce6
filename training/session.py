"""One training run as Train Steering Vector asks for it: text prompts in, a vector file out.

The node's text inputs are read here: the neutral prompt is a prompt set written one per
line (steering/prompts.py); with one neutral prompt the whole target text is the target
(it may span lines), with several the target is one line for all of them or one line per
neutral prompt (paired). Prompts are encoded exactly as CLIPTextEncode encodes them. The
run keeps a resumable checkpoint in ComfyUI's output folder (``steering_training/``);
a fresh run removes an older run's checkpoint of the same save name first.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

from ..steering.architectures import (ArchitectureError, architecture_of_conditioning, architecture_of_model,
                                      get_architecture, unet_bottleneck_channels)
from ..steering.prompts import prompt_lines
from ..steering.vector_file import SteeringVector, sanitize_filename, save_vector
from .checkpoint import CHECKPOINT_SUFFIX
from .loop import TrainConfig, TrainResult, train, vector_of
from .objectives import get_objective

CHECKPOINT_FOLDER = "steering_training"


def encode_text(clip, text: str) -> list:
    """CONDITIONING of `text`, exactly as CLIPTextEncode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def prompt_problem(neutral_prompt: str | None, target_prompt: str | None) -> str | None:
    """What is wrong with the prompt texts, or None; a text not known yet (None) is not checked."""
    neutral = None if neutral_prompt is None else prompt_lines(neutral_prompt)
    target = None if target_prompt is None else prompt_lines(target_prompt)
    if neutral == []:
        return "neutral_prompt is empty; give the neutral prompt the vector is learned on, e.g. 'a person'"
    if target == []:
        return ("target_prompt is empty; give the target prompt (e.g. 'a woman') or the concept to move "
                "away from (e.g. 'violence')")
    if neutral and target and len(neutral) > 1 and len(target) not in (1, len(neutral)):
        return (f"target_prompt has {len(target)} lines for {len(neutral)} neutral prompts; give one target "
                "line for all of them or one per neutral prompt")
    return None


def prompt_sets(neutral_prompt: str, target_prompt: str) -> tuple[list[str], list[str]]:
    """The neutral prompts and their targets (one target for all, or one per neutral prompt)."""
    problem = prompt_problem(neutral_prompt, target_prompt)
    if problem:
        raise ValueError(problem)
    neutral, target = prompt_lines(neutral_prompt), prompt_lines(target_prompt)
    if len(neutral) == 1:  # one prompt: the whole text (a target may span several lines)
        target = [target_prompt.strip()]
    return neutral, target


def checkpoint_path_for(save_name: str) -> str:
    """Where the run saving `save_name` keeps its checkpoint (ComfyUI output folder)."""
    import folder_paths

    stem = sanitize_filename(save_name)[: -len(".safetensors")]
    return os.path.join(folder_paths.get_output_directory(), CHECKPOINT_FOLDER, stem + CHECKPOINT_SUFFIX)


def training_arch(model, method: str) -> str:
    """The model's architecture, if training supports it (or a clear error)."""
    arch = architecture_of_model(model)
    architecture = get_architecture(arch)
    if architecture.native_resolution is None:
        raise ArchitectureError(
            f"training needs a model whose native resolution the pack knows; this model is {architecture.label}")
    if get_objective(method).needs_bottleneck:
        unet_bottleneck_channels(model, f"the {method} objective's vectors")  # clear error if there is no h-space
    return arch


@dataclass
class TrainedVector:
    vector: SteeringVector
    filename: str          # the vector file written (in the folder given)
    result: TrainResult


def train_vector(model, clip, cfg: TrainConfig, neutral_prompt: str, target_prompt: str, *, save_name: str,
                 resume: bool, folder: str,
                 on_progress: Callable[[int, int, dict[str, float]], None] | None = None,
                 check_interrupt: Callable[[], None] | None = None) -> TrainedVector:
    """Train `cfg` (its texts, arch and, at resolution 0, resolution are filled in here) on `model` for the
    prompt texts, and write the vector to `folder` as `save_name`."""
    arch = training_arch(model, cfg.method)
    neutral_lines, target_lines = prompt_sets(neutral_prompt, target_prompt)
    conditionings = {"neutral": [encode_text(clip, t) for t in neutral_lines],
                     "other": [encode_text(clip, t) for t in target_lines],
                     "uncond": encode_text(clip, "")}
    cond, options = conditionings["neutral"][0][0]
    clip_arch = architecture_of_conditioning(cond, options.get("pooled_output"))
    if clip_arch != arch:
        raise ArchitectureError(
            f"the CLIP gives {clip_arch} conditioning ({list(cond.shape)}) but the model is {arch}; connect "
            "the text encoder that belongs to this checkpoint")
    cfg = dataclasses.replace(cfg, resolution=cfg.resolution or get_architecture(arch).native_resolution,
                              neutral_text="\n".join(neutral_lines), target_text="\n".join(target_lines), arch=arch)
    checkpoint = checkpoint_path_for(save_name)
    if not resume and os.path.exists(checkpoint):
        os.remove(checkpoint)  # a fresh run must not leave an older run's checkpoint behind
    result = train(model.clone(), conditionings, cfg, checkpoint_path=checkpoint, resume=resume,
                   on_progress=on_progress, check_interrupt=check_interrupt)
    vector = vector_of(result, arch)
    path = save_vector(vector, folder, save_name)
    return TrainedVector(vector, os.path.basename(path), result)
