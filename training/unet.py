"""Differentiable access to a ComfyUI UNet for training steering vectors.

ComfyUI runs nodes under ``torch.inference_mode()`` and the weights it loads there are
inference tensors: autograd refuses to save them for backward, even inside
``torch.inference_mode(False)``. ``gradient_ready`` fixes that without copying the UNet:
for the duration of training each inference parameter/buffer is swapped for a normal
tensor that *aliases the same storage* (zero copy), with ``requires_grad=False``; the
original objects are put back afterwards (also on error or cancel). Nothing is ever
written to the weights, so they stay bit-identical.

``UNetCaller`` evaluates the model's noise prediction ``eps(x, sigma, prompt)`` through
ComfyUI's own ``BaseModel.apply_model`` (the model's ``model_sampling`` converts sigma
to the timestep and input scaling, so EPS and V-prediction models give the same eps
space), with ComfyUI's own extra conditioning (SDXL's ADM vector ``y``), and optionally
a trainable offset added to the UNet bottleneck (the middle-block output, seen by the
``output_block_patch`` before output block 0) or a trainable shift of the text
embedding.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.utils.checkpoint

from ..steering.architectures import ArchitectureError
from ..steering.autograd_views import autograd_views
from ..steering.embedding_direction import expand_to_tokens

MIDDLE_BLOCK_OUTPUT = ("output", 0)


@contextlib.contextmanager
def gradient_ready(module: torch.nn.Module) -> Iterator[int]:
    """Inside: every inference parameter/buffer of `module` is a frozen zero-copy alias
    (steering.autograd_views). Must be entered with inference mode off; yields how many
    tensors were swapped."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gradient_ready() must be entered inside torch.inference_mode(False)")
    with autograd_views(module) as swapped:
        yield swapped


def checkpointable_layers(diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers (ResBlocks, transformers, ...) inside the UNet's input/middle/output blocks."""
    layers = []
    for group in ("input_blocks", "output_blocks"):
        for block in getattr(diffusion_model, group, []):
            layers.extend(block)
    middle = getattr(diffusion_model, "middle_block", None)
    if middle is not None:
        layers.extend(middle)
    return layers


@contextlib.contextmanager
def gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool = True):
    """Recompute each UNet layer's activations in backward instead of storing them."""
    if not enabled:
        yield
        return
    patched = []
    try:
        for layer in checkpointable_layers(diffusion_model):
            original = layer.forward
            patched.append((layer, layer.__dict__.get("forward")))

            def checkpointed(*args, _forward=original, **kwargs):
                if not torch.is_grad_enabled():
                    return _forward(*args, **kwargs)
                return torch.utils.checkpoint.checkpoint(
                    lambda a, k: _forward(*a, **k), args, kwargs, use_reentrant=False)

            layer.forward = checkpointed
        yield
    finally:
        for layer, own_forward in patched:
            if own_forward is None:
                layer.__dict__.pop("forward", None)  # back to the class's forward
            else:
                layer.forward = own_forward


@dataclass
class PromptConds:
    """Prompts' model inputs: cross-attention tensor [R, N, D] and extra tensors (e.g. SDXL 'y' [R, ...]).

    R = 1 is one prompt for every sample; R > 1 holds one prompt per row (a prompt set, or the
    prompts drawn for the samples of a batch, see ``take``)."""

    cross_attn: torch.Tensor
    extra: dict[str, torch.Tensor]

    @property
    def tokens(self) -> int:
        return int(self.cross_attn.shape[1])

    @property
    def rows(self) -> int:
        return int(self.cross_attn.shape[0])

    def take(self, index: torch.Tensor) -> "PromptConds":
        """The rows `index` (one prompt per sample); a single prompt serves every sample as it is."""
        if self.rows == 1:
            return self
        index = index.to(self.cross_attn.device)
        return PromptConds(self.cross_attn.index_select(0, index),
                           {k: v.index_select(0, index.to(v.device)) for k, v in self.extra.items()})


def stack_prompts(prompts: list[PromptConds]) -> PromptConds:
    """One PromptConds with a row per prompt (token counts brought to a common length)."""
    if len(prompts) == 1:
        return prompts[0]
    crosses = _lcm_tokens([p.cross_attn for p in prompts])
    keys = set(prompts[0].extra)
    if any(set(p.extra) != keys for p in prompts):
        raise ArchitectureError("the prompts of a set give different extra model inputs; encode them with one CLIP")
    return PromptConds(torch.cat(crosses), {k: torch.cat([p.extra[k] for p in prompts]) for k in keys})


class BottleneckShift:
    """output_block_patch adding `offset` ([C, H, W] or [B, C, H, W]) to the first `rows` rows of h."""

    def __init__(self, offset: torch.Tensor, rows: int | None):
        self.offset = offset
        self.rows = rows

    def __call__(self, h, hsp, transformer_options):
        if transformer_options.get("block") != MIDDLE_BLOCK_OUTPUT:
            return h, hsp
        if h.shape[-3] != self.offset.shape[-3] or h.shape[-2:] != self.offset.shape[-2:]:
            raise ArchitectureError(
                f"h-space vector of shape {list(self.offset.shape[-3:])} does not fit this UNet's bottleneck "
                f"{list(h.shape[1:])} at this resolution")
        offset = self.offset.to(h.dtype)
        if self.rows is None or self.rows >= h.shape[0]:
            return h + offset, hsp
        return torch.cat([h[:self.rows] + offset, h[self.rows:]]), hsp


def _lcm_tokens(conds: list[torch.Tensor]) -> list[torch.Tensor]:
    """Repeat cross-attention tensors of different CLIP-chunk counts to a common length (as ComfyUI does)."""
    lengths = {c.shape[1] for c in conds}
    if len(lengths) == 1:
        return conds
    common = math.lcm(*lengths)
    return [c.repeat(1, common // c.shape[1], 1) for c in conds]


class UNetCaller:
    """eps predictions of one loaded ComfyUI model, differentiable w.r.t. offsets and text shifts."""

    def __init__(self, patcher, device: torch.device, compute_dtype: torch.dtype, autocast: bool):
        self.patcher = patcher
        self.base = patcher.model
        self.downscale = latent_downscale(self.base)
        self.sampling = patcher.get_model_object("model_sampling")
        self.device = device
        self.compute_dtype = compute_dtype
        self.autocast = autocast
        self._transformer_options = patcher.model_options.get("transformer_options", {})

    def prepare_prompt(self, conditioning: list, latent_shape: tuple, what: str) -> PromptConds:
        """ComfyUI CONDITIONING (first entry) -> the tensors apply_model takes, via the model's extra_conds."""
        if not conditioning:
            raise ValueError(f"{what}: the conditioning is empty")
        cond, options = conditioning[0]
        params = dict(options)
        params.update(cross_attn=cond, device=self.device, noise=torch.zeros(latent_shape, device=self.device),
                      width=latent_shape[-1] * self.downscale, height=latent_shape[-2] * self.downscale,
                      prompt_type="positive", seed=0)
        params.pop("model_conds", None)
        out = self.base.extra_conds(**params)
        unsupported = sorted(set(out) - {"c_crossattn", "y"})
        if unsupported:
            raise ArchitectureError(
                f"{what}: this model needs extra inputs {unsupported} (inpainting / edit models); training "
                "supports plain text-to-image UNets (SD1.x, SD2.x, SDXL)")
        cross = out["c_crossattn"].cond
        extra = {k: v.cond for k, v in out.items() if k != "c_crossattn"}
        return PromptConds(cross.detach().clone().to(self.device, torch.float32),
                           {k: v.detach().clone().to(self.device, torch.float32) for k, v in extra.items()})

    def prepare_prompts(self, conditionings: list[list], latent_shape: tuple, what: str) -> PromptConds:
        """Several CONDITIONINGs (a prompt set) -> one PromptConds with a row per prompt."""
        if not conditionings:
            raise ValueError(f"{what}: no prompt given")
        return stack_prompts([self.prepare_prompt(c, latent_shape, f"{what} prompt {i + 1}")
                              for i, c in enumerate(conditionings)])

    def _autocast(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, prompts: list[PromptConds], *,
            text_shift: torch.Tensor | None = None, shift_prompts: int = 0,
            offset: torch.Tensor | None = None, offset_prompts: int = 0) -> list[torch.Tensor]:
        """Noise predictions for `x` [B, ...] at `sigma` [B] under each prompt, in ONE batched UNet call.

        text_shift [T, D] is added to the cross-attention of the first `shift_prompts` prompts;
        offset (bottleneck) to the rows of the first `offset_prompts` prompts. Returns one
        [B, ...] eps per prompt (float32)."""
        b = x.shape[0]
        n = len(prompts)
        for p in prompts:
            if p.rows not in (1, b):
                raise ValueError(f"{p.rows} prompt rows for a batch of {b} samples; give one prompt or one per sample")
        crosses = _lcm_tokens([p.cross_attn for p in prompts])
        parts = []
        for i, c in enumerate(crosses):
            c = c.expand(b, -1, -1)
            if text_shift is not None and i < shift_prompts:
                c = c + expand_to_tokens(text_shift, c.shape[1]).to(c.dtype)
            parts.append(c)
        cross = torch.cat(parts)
        extra = {}
        for key in prompts[0].extra:
            extra[key] = torch.cat([p.extra[key].expand(b, *p.extra[key].shape[1:]) for p in prompts])
        x_in = x.repeat(n, *([1] * (x.dim() - 1)))
        sigma_in = sigma.repeat(n)
        shifts = ([BottleneckShift(offset, None if offset_prompts >= n else offset_prompts * b)]
                  if offset is not None and offset_prompts > 0 else [])
        options = with_patches(self._transformer_options, output_block_patch=shifts)
        options["sigmas"] = sigma_in
        options["cond_or_uncond"] = [0] * n
        with self._autocast():
            denoised = self.base.apply_model(x_in, sigma_in, c_crossattn=cross, transformer_options=options,
                                             **extra)
        s = sigma_in.reshape(-1, *([1] * (x.dim() - 1)))
        eps = (x_in - denoised.float()) / s
        return list(eps.chunk(n))


def with_patches(transformer_options: dict, **added: list) -> dict:
    """A copy of `transformer_options` with more patches of each kind given (e.g.
    ``output_block_patch=[fn]``) after the ones it has; the input and its lists are not changed."""
    options = dict(transformer_options)
    patches = {k: list(v) for k, v in options.get("patches", {}).items()}
    for kind, fns in added.items():
        if fns:
            patches.setdefault(kind, []).extend(fns)
    options["patches"] = patches
    return options


def latent_downscale(base) -> int:
    """Image pixels per latent pixel: the latent format's ``spacial_downscale_ratio`` where it has one
    (newer ComfyUI, and models built outside comfy.supported_models), else SD's VAE factor 8."""
    return int(getattr(base.latent_format, "spacial_downscale_ratio", 8))


def bottleneck_shape(caller: UNetCaller, latent_shape: tuple, prompt: PromptConds) -> tuple[int, int, int]:
    """[C, H, W] of the UNet bottleneck for latents of `latent_shape`, from one probe call."""
    seen: list[tuple] = []

    def capture(h, hsp, transformer_options):
        if transformer_options.get("block") == MIDDLE_BLOCK_OUTPUT and not seen:
            seen.append(tuple(h.shape[1:]))
        return h, hsp

    options = with_patches(caller._transformer_options, output_block_patch=[capture])
    x = torch.zeros(1, *latent_shape[1:], device=caller.device)
    sigma = torch.full((1,), float(caller.sampling.sigma_max), device=caller.device)
    options["sigmas"] = sigma
    options["cond_or_uncond"] = [0]
    first = prompt.take(torch.zeros(1, dtype=torch.long))
    with torch.no_grad(), caller._autocast():
        caller.base.apply_model(x, sigma, c_crossattn=first.cross_attn, transformer_options=options, **first.extra)
    if not seen:
        raise ArchitectureError("this model has no UNet bottleneck (middle block) for an h-space vector")
    return seen[0]
