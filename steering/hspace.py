"""h-space steering (CoDSMa c-vectors, RespoDiff RAM+SAM, SDisc): add a vector to the
UNet bottleneck, i.e. the middle-block output, at every step inside a sigma window.

Where ComfyUI has a middle-block hook (upstream 0.38) the patch runs there; ComfyUI 0.3.75
has none, and the patch runs as the ``output_block_patch`` before output block 0, whose
running activation is exactly the middle-block output (after ControlNet's middle
residual), for SD1.x, SD2.x and SDXL alike (steering/comfy_compat.py picks the route).

One patch class serves applying a vector and training one: training gives it the
trainable tensor itself (then nothing is cached, so every call sees the current values
and gradients flow into it) and no window (every step).

Batch layout: ComfyUI stacks the chunks listed in ``cond_or_uncond`` (``COND`` = the
positive prompt, 1 = uncond), each holding the same images in order, so row r of the
bottleneck is image ``r % images`` of chunk ``r // images``. A call over some images of the
sampler's batch only (STG's gradient pass over its flagged images) says which
(steering.guidance.BatchRows), and each of them gets its own vector, as in the whole batch's call.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .architectures import ArchitectureError, architecture_of_model, unet_bottleneck_channels
from .comfy_compat import set_bottleneck_patch
from .fair import fair_assignment
from .guidance import batch_rows
from .vector_file import SteeringVector, VectorFileError, resize_spatial
from .window import SigmaWindow

RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")
BRANCHES = ("cond_only", "cond_and_uncond")
COND = 0  # ComfyUI's cond_or_uncond entry of the positive (conditional) prompt


class BottleneckOffsetPatch:
    """Adds ``strength * offset`` to the bottleneck (``shift``; installed by comfy_compat's bottleneck patch).

    `offsets` is [K, C, H, W]: with K > 1 each image gets one of them by the fair
    assignment for `seed` (see fair.py); with K == 1 all images get it. `window`: the
    sigmas it acts at (None: every step)."""

    def __init__(
        self,
        offsets: torch.Tensor,
        strength: float,
        window: SigmaWindow | None = None,
        branches: str = "cond_only",
        resize_mode: str = "bilinear",
        seed: int = 0,
        assignment_mode: str = "uniform",
    ):
        if offsets.dim() != 4:
            raise ValueError(f"offsets must be [K, C, H, W]; got {list(offsets.shape)}")
        if branches not in BRANCHES:
            raise ValueError(f"branches {branches!r}; expected one of {BRANCHES}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {resize_mode!r}; expected one of {RESIZE_MODES}")
        self.offsets = offsets
        self.strength = float(strength)
        self.window = window
        self.branches = branches
        self.resize_mode = resize_mode
        self.seed = int(seed)
        self.assignment_mode = assignment_mode
        self._cache: dict[tuple, torch.Tensor] = {}

    def to(self, device):
        """Move with the model (ComfyUI calls this through ``model_patches_to``)."""
        self.offsets = self.offsets.to(device)
        self._cache.clear()
        return self

    def in_window(self, sigma: float) -> bool:
        return self.window is None or sigma in self.window

    def assignment(self, images: int) -> list[int]:
        if self.offsets.shape[0] == 1:
            return [0] * images
        return fair_assignment(self.offsets.shape[0], images, self.seed, self.assignment_mode)

    def offset_rows(self, images: int, like: torch.Tensor) -> torch.Tensor:
        """The offsets for the images of one chunk, resized and cast like `like`: [images, C, H, W], or
        [C, H, W] (the same for every image) when there is one offset."""
        if self.offsets.requires_grad:  # a tensor being trained: its current values, with their gradient
            return self._rows(images, like)
        key = (images, tuple(like.shape[1:]), like.dtype, like.device)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._rows(images, like)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def _rows(self, images: int, like: torch.Tensor) -> torch.Tensor:
        if like.shape[1] != self.offsets.shape[1]:
            raise ArchitectureError(
                f"h-space vector has {self.offsets.shape[1]} channels but this UNet's bottleneck "
                f"has {like.shape[1]} (shape {list(like.shape)})")
        resized = resize_spatial(self.offsets, tuple(like.shape[-2:]), self.resize_mode)
        if resized.shape[0] == 1:
            rows = self.strength * resized[0]
        else:
            index = torch.tensor(self.assignment(images), device=resized.device)
            rows = self.strength * resized.index_select(0, index)
        return rows.to(device=like.device, dtype=like.dtype)

    def shift(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        """The bottleneck `h` [rows, C, H, W] with the offsets added to the chosen chunks' rows."""
        sigmas = transformer_options.get("sigmas")
        if self.window is not None and (sigmas is None or not self.in_window(float(sigmas.reshape(-1)[0]))):
            return h
        chunks: Sequence[int] = transformer_options.get("cond_or_uncond") or [COND]
        images = h.shape[0] // len(chunks)
        picked = batch_rows(transformer_options, images)  # a call over some images of the batch (STG)
        if picked is None:
            rows = self.offset_rows(images, h)
        else:
            rows = self.offset_rows(picked.batch, h)
            if rows.dim() == 4:
                rows = rows[list(picked.rows)]
        parts = []
        for index, kind in enumerate(chunks):
            part = h[index * images:(index + 1) * images]
            if kind == COND or self.branches == "cond_and_uncond":
                part = part + rows
            parts.append(part)
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def checked_offsets(model, vectors: Iterable[SteeringVector]) -> torch.Tensor:
    """[K, C, H, W] offsets of h-space vectors that fit the model (or a clear error), each resized to the
    largest spatial size among them."""
    model_arch = architecture_of_model(model)
    channels = unet_bottleneck_channels(model, "h-space vectors (c-vector, RespoDiff)")
    offsets = []
    for v in vectors:
        if v.kind != "hspace":
            raise VectorFileError(f"{v.describe()} is not an h-space vector; use Apply Embedding Direction")
        if v.arch != model_arch:
            raise ArchitectureError(f"{v.describe()} was learned for {v.arch}, but the model is {model_arch}")
        offset = v.hspace_offset()
        if offset.shape[0] != channels:
            raise ArchitectureError(
                f"{v.describe()} has {offset.shape[0]} channels; this model's bottleneck has {channels}")
        offsets.append(offset)
    size = (max(o.shape[-2] for o in offsets), max(o.shape[-1] for o in offsets))
    return torch.stack([resize_spatial(o, size) for o in offsets])


def patch_model_with_offsets(
    model,
    offsets: torch.Tensor,
    strength: float,
    start_percent: float,
    end_percent: float,
    prefer_hook: bool = True,
    **patch_options,
):
    """Clone a ComfyUI ModelPatcher and add a BottleneckOffsetPatch to the clone.

    The window is converted to sigmas with the model's own sampling (steering/window.py).
    `prefer_hook`: use ComfyUI's middle-block hook where it has one (False: always the output-block
    route; both give the same images). The input model is not modified."""
    window = SigmaWindow.of(model.get_model_object("model_sampling"), start_percent, end_percent, "h-space")
    patched = model.clone()
    set_bottleneck_patch(patched, BottleneckOffsetPatch(offsets, strength, window, **patch_options), prefer_hook)
    return patched
