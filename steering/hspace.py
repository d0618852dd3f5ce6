"""h-space steering (CoDSMa c-vectors, RespoDiff RAM+SAM, SDisc): add a vector to the
UNet bottleneck, i.e. the middle-block output, at every step inside a sigma window.

ComfyUI 0.3.75 has no middle-block hook; its ``output_block_patch`` is called before
every output block with the running activation, and before output block 0 that
activation is exactly the middle-block output (after ControlNet's middle residual),
for SD1.x, SD2.x and SDXL alike. The patch acts only there.

Batch layout: ComfyUI stacks the chunks listed in ``cond_or_uncond`` (0 = cond,
1 = uncond), each holding the same images in order, so row r of the bottleneck is
image ``r % images`` of chunk ``r // images``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .fair import fair_assignment
from .vector_file import resize_spatial

RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")
BRANCHES = ("cond_only", "cond_and_uncond")
MIDDLE_BLOCK_OUTPUT = ("output", 0)


class BottleneckOffsetPatch:
    """An ``output_block_patch`` adding ``strength * offset`` to the bottleneck.

    `offsets` is [K, C, H, W]: with K > 1 each image gets one of them by the fair
    assignment for `seed` (see fair.py); with K == 1 all images get it."""

    def __init__(
        self,
        offsets: torch.Tensor,
        strength: float,
        sigma_start: float,
        sigma_end: float,
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
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
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
        return self.sigma_end <= sigma <= self.sigma_start

    def assignment(self, images: int) -> list[int]:
        if self.offsets.shape[0] == 1:
            return [0] * images
        return fair_assignment(self.offsets.shape[0], images, self.seed, self.assignment_mode)

    def offset_rows(self, images: int, like: torch.Tensor) -> torch.Tensor:
        """[images, C, H, W] offsets for the images of one chunk, resized and cast like `like`."""
        key = (images, tuple(like.shape[1:]), like.dtype, like.device)
        cached = self._cache.get(key)
        if cached is None:
            if like.shape[1] != self.offsets.shape[1]:
                raise ValueError(
                    f"h-space vector has {self.offsets.shape[1]} channels but this UNet's bottleneck "
                    f"has {like.shape[1]} (shape {list(like.shape)})")
            resized = resize_spatial(self.offsets, tuple(like.shape[-2:]), self.resize_mode)
            index = torch.tensor(self.assignment(images), device=resized.device)
            cached = (self.strength * resized.index_select(0, index)).to(device=like.device, dtype=like.dtype)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        if transformer_options.get("block") != MIDDLE_BLOCK_OUTPUT:
            return h, hsp
        sigmas = transformer_options.get("sigmas")
        if sigmas is None or not self.in_window(float(sigmas.reshape(-1)[0])):
            return h, hsp
        chunks: Sequence[int] = transformer_options.get("cond_or_uncond") or [0]
        images = h.shape[0] // len(chunks)
        rows = self.offset_rows(images, h)
        parts = []
        for index, kind in enumerate(chunks):
            part = h[index * images:(index + 1) * images]
            if kind == 0 or self.branches == "cond_and_uncond":
                part = part + rows
            parts.append(part)
        return torch.cat(parts) if len(parts) > 1 else parts[0], hsp


def patch_model_with_offsets(
    model,
    offsets: torch.Tensor,
    strength: float,
    start_percent: float,
    end_percent: float,
    **patch_options,
):
    """Clone a ComfyUI ModelPatcher and add a BottleneckOffsetPatch to the clone.

    The window is converted to sigmas with the model's own sampling (as ComfyUI does for
    conditioning ranges). The input model is not modified."""
    if not (0.0 <= start_percent <= end_percent <= 1.0):
        raise ValueError(f"need 0 <= start <= end <= 1; got start={start_percent}, end={end_percent}")
    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    patch = BottleneckOffsetPatch(
        offsets,
        strength,
        sigma_start=float(sampling.percent_to_sigma(start_percent)),
        sigma_end=float(sampling.percent_to_sigma(end_percent)),
        **patch_options,
    )
    patched.set_model_output_block_patch(patch)
    return patched
