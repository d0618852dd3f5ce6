"""Differentiable access to a ComfyUI UNet for training steering vectors.

ComfyUI runs nodes under ``torch.inference_mode()`` and the weights it loads there are
inference tensors: autograd refuses to save them for backward, even inside
``torch.inference_mode(False)``. ``gradient_ready`` fixes that without copying the UNet:
for the duration of training each inference parameter/buffer is swapped for a normal
tensor that *aliases the same storage* (zero copy), with ``requires_grad=False``; the
original objects are put back afterwards (also on error or cancel). Nothing is ever
written to the weights, so they stay bit-identical.

``UNetCaller`` evaluates the model's noise prediction ``eps(x, sigma, prompt)`` the way
ComfyUI's samplers do: the prompts are processed as the samplers process them
(``comfy.samplers.process_conds``: the model's own extra conditioning, e.g. SDXL's ADM
vector ``y``) and the model is called through ``comfy.samplers.calc_cond_batch`` with the
patcher's ``model_options``, so model wrappers (``model_function_wrapper``) and every
``transformer_options`` patch set on the MODEL act during training as they do during
sampling. The model's ``model_sampling`` converts sigma to the timestep and input
scaling, so EPS and V-prediction models give the same eps space. Optionally a trainable
offset is added to the UNet bottleneck (steering.hspace's ``BottleneckOffsetPatch``) or a
trainable shift to the text embedding, both on the first prompt of a call, which goes to
the model as the conditional (positive) prompt.
"""
from __future__ import annotations

import contextlib
import math
import uuid
from dataclasses import dataclass
from typing import Iterator

import torch

from ..steering.architectures import ArchitectureError, architecture_of_model
from ..steering.autograd_views import autograd_views
from ..steering.comfy_compat import bottleneck_patch, latent_downscale, model_options_for_call, prompt_model_conds
from ..steering.embedding_direction import fit_to_tokens
from ..steering.hspace import BottleneckOffsetPatch
from ..steering.precision import autocast


@contextlib.contextmanager
def gradient_ready(module: torch.nn.Module) -> Iterator[int]:
    """Inside: every inference parameter/buffer of `module` is a frozen zero-copy alias
    (steering.autograd_views). Must be entered with inference mode off; yields how many
    tensors were swapped."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gradient_ready() must be entered inside torch.inference_mode(False)")
    with autograd_views(module) as swapped:
        yield swapped


# The model inputs a plain text-to-image model gets besides the text (SDXL/SD3/FLUX: the pooled vector y;
# FLUX dev: its distilled guidance scale).
TEXT_TO_IMAGE_EXTRA = ("y", "guidance")


@dataclass
class PromptConds:
    """Prompts' model inputs: cross-attention tensor [R, N, D] and extra tensors (e.g. SDXL 'y' [R, ...]).

    R = 1 is one prompt for every sample; R > 1 holds one prompt per row (a prompt set, or the
    prompts drawn for the samples of a batch, see ``take``)."""

    cross_attn: torch.Tensor
    extra: dict[str, torch.Tensor]
    cond_class: type | None = None  # the model's conditioning class for cross_attn (None: CONDCrossAttn)

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
                           {k: v.index_select(0, index.to(v.device)) for k, v in self.extra.items()},
                           self.cond_class)


def stack_prompts(prompts: list[PromptConds]) -> PromptConds:
    """One PromptConds with a row per prompt (token counts brought to a common length)."""
    if len(prompts) == 1:
        return prompts[0]
    crosses = _common_tokens([p.cross_attn for p in prompts], prompts[0].cond_class)
    keys = set(prompts[0].extra)
    if any(set(p.extra) != keys for p in prompts):
        raise ArchitectureError("the prompts of a set give different extra model inputs; encode them with one CLIP")
    return PromptConds(torch.cat(crosses), {k: torch.cat([p.extra[k] for p in prompts]) for k in keys},
                       prompts[0].cond_class)


def _common_tokens(conds: list[torch.Tensor], cond_class: type | None) -> list[torch.Tensor]:
    """Cross-attention tensors brought to one token count as the model's conditioning class batches them:
    CLIP-chunk counts repeated to a common length (CONDCrossAttn, as ComfyUI does); a token sequence
    (SD3/FLUX, CONDRegular) cannot be, so those prompts must have one length."""
    lengths = {c.shape[1] for c in conds}
    if len(lengths) == 1:
        return conds
    import comfy.conds

    if cond_class is not None and not issubclass(cond_class, comfy.conds.CONDCrossAttn):
        raise ArchitectureError(
            f"the prompts of the set encode to different token counts {sorted(lengths)}; this model takes one "
            "token sequence per prompt, so a prompt set must encode to one length (shorten the longest prompts)")
    common = math.lcm(*lengths)
    return [c.repeat(1, common // c.shape[1], 1) for c in conds]


@contextlib.contextmanager
def sampling_run(patcher) -> Iterator[None]:
    """Inside: `patcher` is prepared to be run as ComfyUI's samplers prepare it for a run
    (``pre_run``: the model's current patcher, the extensions' pre-run callbacks), and
    cleaned up after it as they do (also on error or cancel)."""
    patcher.pre_run()
    try:
        yield
    finally:
        patcher.cleanup()


class UNetCaller:
    """eps predictions of one loaded ComfyUI model, differentiable w.r.t. offsets and text shifts.

    Use inside ``sampling_run(patcher)``."""

    def __init__(self, patcher, device: torch.device, compute_dtype: torch.dtype, autocast: bool):
        self.patcher = patcher
        self.base = patcher.model
        self.arch = architecture_of_model(patcher)
        self.downscale = latent_downscale(self.base)
        self.sampling = patcher.get_model_object("model_sampling")
        self.device = device
        self.compute_dtype = compute_dtype
        self.autocast = autocast
        self.model_options = model_options_for_call(patcher, device)

    def prepare_prompt(self, conditioning: list, latent_shape: tuple, what: str) -> PromptConds:
        """ComfyUI CONDITIONING (first entry) -> the model's inputs, processed as the samplers process a
        positive prompt (the model's extra_conds)."""
        if not conditioning:
            raise ValueError(f"{what}: the conditioning is empty")
        noise = torch.zeros(latent_shape, device=self.device)
        out = prompt_model_conds(self.base, conditioning, latent_shape[-1] * self.downscale,
                                 latent_shape[-2] * self.downscale, noise, self.device)
        unsupported = sorted(set(out) - {"c_crossattn", *TEXT_TO_IMAGE_EXTRA})
        if unsupported:
            raise ArchitectureError(
                f"{what}: this model needs extra inputs {unsupported} (inpainting / edit models); training "
                "supports plain text-to-image models (SD1.x, SD2.x, SDXL, SD3, FLUX)")
        cross = out["c_crossattn"].cond
        extra = {k: v.cond for k, v in out.items() if k != "c_crossattn"}
        return PromptConds(cross.detach().clone().to(self.device, torch.float32),
                           {k: v.detach().clone().to(self.device, torch.float32) for k, v in extra.items()},
                           type(out["c_crossattn"]))

    def prepare_prompts(self, conditionings: list[list], latent_shape: tuple, what: str) -> PromptConds:
        """Several CONDITIONINGs (a prompt set) -> one PromptConds with a row per prompt."""
        if not conditionings:
            raise ValueError(f"{what}: no prompt given")
        return stack_prompts([self.prepare_prompt(c, latent_shape, f"{what} prompt {i + 1}")
                              for i, c in enumerate(conditionings)])

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor, prompts: list[PromptConds], *,
                 text_shift: torch.Tensor | None = None, bottleneck=None) -> list[torch.Tensor]:
        """The model's denoised predictions for `x` [B, ...] at `sigma` [B] under each prompt, from
        ComfyUI's ``calc_cond_batch`` (one batched call when they fit in memory, as in sampling).

        Prompt i is the model's cond_or_uncond chunk i (the first one the conditional prompt);
        text_shift [T, D] is added to the first prompt's cross-attention; `bottleneck` (an object with
        ``shift(h, transformer_options) -> h``) acts on the UNet bottleneck for this call, after the
        model's own patches there."""
        import comfy.conds
        import comfy.samplers

        b = x.shape[0]
        conds = []
        for i, p in enumerate(prompts):
            if p.rows not in (1, b):
                raise ValueError(f"{p.rows} prompt rows for a batch of {b} samples; give one prompt or one per sample")
            cross = p.cross_attn.expand(b, -1, -1)
            if text_shift is not None and i == 0:
                cross = cross + fit_to_tokens(text_shift, cross.shape[1], self.arch).to(cross.dtype)
            model_conds = {"c_crossattn": (p.cond_class or comfy.conds.CONDCrossAttn)(cross)}
            model_conds.update({k: comfy.conds.CONDRegular(v.expand(b, *v.shape[1:])) for k, v in p.extra.items()})
            conds.append([{"model_conds": model_conds, "uuid": uuid.uuid4()}])
        options = dict(self.model_options)
        added = {}
        if bottleneck is not None:
            kind, patch = bottleneck_patch(self.patcher, bottleneck)
            added[kind] = [patch]
        options["transformer_options"] = with_patches(options.get("transformer_options", {}), **added)
        with autocast(self.device, self.compute_dtype if self.autocast else None):
            return comfy.samplers.calc_cond_batch(self.base, conds, x, sigma, options)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, prompts: list[PromptConds], *,
            text_shift: torch.Tensor | None = None, offset: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Noise predictions for `x` [B, ...] at `sigma` [B] under each prompt (see ``denoised``).

        text_shift [T, D] is added to the first prompt's cross-attention; offset [C, H, W] to the
        bottleneck rows of the first prompt. Returns one [B, ...] eps per prompt (float32)."""
        shift = BottleneckOffsetPatch(offset.unsqueeze(0), 1.0) if offset is not None else None
        denoised = self.denoised(x, sigma, prompts, text_shift=text_shift, bottleneck=shift)
        s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        return [(x - d.float()) / s for d in denoised]


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


def bottleneck_shape(caller: UNetCaller, latent_shape: tuple, prompt: PromptConds) -> tuple[int, int, int]:
    """[C, H, W] of the UNet bottleneck for latents of `latent_shape`, from one probe call."""
    seen: list[tuple] = []

    class Capture:
        @staticmethod
        def shift(h, transformer_options):
            if not seen:
                seen.append(tuple(h.shape[1:]))
            return h

    x = torch.zeros(1, *latent_shape[1:], device=caller.device)
    sigma = torch.full((1,), float(caller.sampling.sigma_max), device=caller.device)
    with torch.no_grad():
        caller.denoised(x, sigma, [prompt.take(torch.zeros(1, dtype=torch.long))], bottleneck=Capture())
    if not seen:
        raise ArchitectureError("this model has no UNet bottleneck (middle block) for an h-space vector")
    return seen[0]
