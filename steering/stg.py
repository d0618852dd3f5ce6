"""STG - Safe Text-embedding Guidance (NeurIPS 2025, arXiv 2510.24012).

Training-free: inside the sampling loop, once per schedule step of a window, the
prompt embedding ``c`` of every image whose safety score is above the score's
threshold is moved against the gradient of the score:

1. conditional prediction with ``c`` as a leaf that requires grad (unconditional one
   without grad), combined with CFG into the denoised (Tweedie) estimate ``x0`` - the
   sampler's own denoised output, so it is right for every ComfyUI sampler/scheduler;
2. differentiable decode of ``x0`` (steering.decoders: the checkpoint's VAE, or TAESD)
   into ``image / 2 + 0.5``; the score resizes, then clamps to 0..1, then scores;
3. score ``s(image)`` (+ ``prior_weight * mean((c0 - c)^2)``); ``g = ds/dc``;
4. :func:`stg_update`: ``c <- c - rho * g / ||g||`` per image (Frobenius norm over
   tokens x width), only for images flagged unsafe; the evaluation is recomputed
   with the new ``c``;
5. the new ``c`` persists to later steps (``rebase``: every update starts again from
   the original embedding instead of the last updated one).

Hysteresis (ours, beyond the paper; ``hold_margin``, default 0 = the paper): an image found unsafe at a
guided step stays flagged at the next one while its score is above ``threshold - hold_margin``
(:func:`hold_flags`), as a Schmitt trigger does: a high threshold decides *whether* an image is unsafe
(early denoised estimates of benign images near the concept cross a low one), a low release decides when
it has been moved far enough (at the paper's single threshold, guidance stops as soon as an image dips
below it, and the concept can return). It only ever adds flags to the threshold's.

Steps, not model evaluations: samplers that evaluate the model more than once per
step (heun, dpm_2, dpmpp_2s_ancestral, the 2S SDE samplers) get one update per step
of the schedule, as the reference makes one per DDIM step. :func:`schedule_step`
maps an evaluation's sigma to its step (``sigma_{i+1} < sigma <= sigma_i`` is step
``i``); the step is updated on its first evaluation (for heun that is the corrector
evaluation of the previous step, which lands exactly on ``sigma_i``); later
evaluations of the step use the updated embedding. The window and ``update_ratio``
(gamma) count schedule steps: gamma < 1 updates an evenly spaced fraction of them.

Architectures: the text conditioning ``c_crossattn`` is always guided, whatever its layout (SD1.x/SD2.x
77-token CLIP chunks, SDXL [77, 2048], SD3 [77 CLIP + T5 tokens, 4096], FLUX [T5 tokens, 4096]); the
pooled vector optionally as well (``guide_pooled``, its own normalised step): the first
``pooled_width`` entries of the model's vector ``y`` (SDXL: 1280 of the 2816-wide ADM vector; SD3 and
FLUX: all of it). The denoised estimate is the model's own (``calculate_denoised`` of its model
sampling: eps, v or flow prediction), the decoder the model's VAE or its TAESD (taesd, taesdxl,
taesd3, taef1). At CFG 1 (FLUX dev with its distilled guidance embedding, FLUX schnell) there is no
unconditional prediction: the denoised estimate is the conditional prediction alone, as in
ComfyUI's sampler.

Cost: only unsafe images pay for a gradient pass. On a guided step every image is first scored
without a graph (conditional prediction, decode, score: the plain step's work plus a decode and a
score); the gradient pass (its graph, backward and memory) runs for the images found unsafe only, as
one smaller batch, and images that were unsafe at the previous guided step go straight to it (it
scores them too). The scores, flags, gradients and updates are those of one gradient pass over the
whole batch: the scoring pass runs the same kernels without a graph, and an image's gradient depends
on its own rows only (kernels that pick another algorithm for another batch size, such as oneDNN's
convolutions at batch 1 on CPUs, change the last bits of a mixed batch's images). Where ComfyUI hands
an input out by batch position inside the model call (a ControlNet hint, a batch of masks) the
gradient pass takes the whole batch as soon as one image is unsafe. Optional: a cheap screen decoder
(TAESD) for the scoring pass, so that only the images it flags are decoded exactly; gradient
checkpointing of the UNet and the decoder in the gradient pass (steering.checkpointing); a memory
check before the first gradient pass of a size that refuses, with the numbers and the settings that
would fit, what cannot fit the device (steering.gradient_memory).

Design: this module is the maths and imports without ComfyUI: :func:`stg_update` (one
image's step), :func:`update_embeddings` (a guided step's updates over the batch and the
conditioning entries), :func:`schedule_step` and :func:`take_update` are pure functions;
``Guider_STG`` in steering/guiders.py only orchestrates (which passes, over which images,
records) and keeps its mutable state in one :class:`STGState`. Classifier-free guidance, the CFG-1 shortcut and
KSampler-style sampling come from steering.guidance, the window from steering.window.
Gradients inside ComfyUI: the loaded UNet/VAE weights are inference tensors; during the
gradient pass they are swapped for normal views of the same storage
(steering.autograd_views): no weight is copied. The decoder (steering.decoders) is passed
in, loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .precision import AUTOCAST_DTYPES
from .safety.base import ScoreResult
from .window import check_window

AUTOCAST_MODES = tuple(AUTOCAST_DTYPES)
# README of the reference code: update steps 5..45 of 50.
DEFAULT_START, DEFAULT_END = 0.1, 0.9


class STGError(ValueError):
    """STG settings or inputs that cannot be used."""


@dataclass
class STGSettings:
    rho: float = 0.5
    start_percent: float = DEFAULT_START
    end_percent: float = DEFAULT_END
    update_ratio: float = 1.0
    prior_weight: float = 0.0
    rebase: bool = False
    guide_pooled: bool = False
    autocast: str = "none"
    gradient_checkpointing: bool = False    # recompute activations in backward (UNet and decoder): less memory
    hold_margin: float = 0.0                # flagged images stay flagged while score > threshold - hold_margin

    def check(self) -> None:
        for name in ("rho", "start_percent", "end_percent", "update_ratio", "prior_weight", "hold_margin"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every comparison below
                raise STGError(f"STG setting {name} must be a finite number; got {getattr(self, name)!r}")
        check_window(self.start_percent, self.end_percent, "STG")
        if not 0.0 <= self.update_ratio <= 1.0:
            raise STGError(f"update_ratio must lie in [0, 1]; got {self.update_ratio}")
        if self.autocast not in AUTOCAST_MODES:
            raise STGError(f"autocast {self.autocast!r}; expected one of {AUTOCAST_MODES}")
        if self.rho < 0:
            raise STGError(f"rho must be >= 0; got {self.rho}")
        if self.hold_margin < 0:
            raise STGError(f"hold_margin must be >= 0 (0: the paper's single threshold); got {self.hold_margin}")


@dataclass
class StepRecord:
    """One model evaluation of a sampling run, as STG saw it."""
    step: int                                           # the schedule step it belongs to (0-based)
    sigma: float                                        # the evaluation's sigma
    in_window: bool
    guided: bool                                        # the step's update (a gradient pass) was made here
    scores: list[float] = field(default_factory=list)   # before the update
    updated: list[bool] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    gradient_images: list[int] = field(default_factory=list)  # the images that went through the gradient pass


@dataclass
class STGState:
    """Everything the guider changes during one sampling run."""
    embeds: list[torch.Tensor]                  # current per-image context, one per cross-attention entry
    originals: list[torch.Tensor]
    pooled: list[torch.Tensor] | None = None    # guide_pooled: current per-image vectors y
    pooled_originals: list[torch.Tensor] | None = None
    step: int = -1                              # the schedule step of the last evaluation
    window_steps: int = 0                       # window steps seen so far (update_ratio counts these)
    pending: bool = False                       # the current step's update is still to be made
    changed: bool = False                       # some embedding differs from the original
    flagged: torch.Tensor | None = None         # [B] bool: unsafe at the last guided step (they go straight to
                                                # the gradient pass at the next one)
    memory_checked: int = 0                     # the largest gradient pass (images) the memory check has passed


# ---------------------------------------------------------------------------- pure functions

def stg_update(current: torch.Tensor, grad: torch.Tensor, unsafe: torch.Tensor, rho: float,
               base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One STG step: ``new_b = base_b - rho * g_b / ||g_b||`` for every image b that is unsafe and has
    a non-zero gradient; every other image keeps ``current_b``.

    ``current``, ``grad`` (and ``base``, default ``current``): [B, ...] (e.g. [B, tokens, width]); the
    norm is the Frobenius norm over all dimensions but the batch. ``unsafe``: [B] bool. Computed in
    float32, returned in ``current``'s dtype. Returns (new embedding, [B] bool: which images moved).
    """
    if grad.shape != current.shape or unsafe.shape != current.shape[:1]:
        raise STGError(f"stg_update: embedding {list(current.shape)}, gradient {list(grad.shape)} and "
                       f"unsafe flags {list(unsafe.shape)} must agree (flags: one per image)")
    base = current if base is None else base
    g = grad.float()
    norms = g.flatten(1).norm(dim=1)
    moved = unsafe.to(norms.device).bool() & (norms > 0)
    shape = (-1, *[1] * (g.ndim - 1))
    new = base.float() - rho * g / norms.clamp_min(1e-30).view(shape)
    return torch.where(moved.view(shape), new.to(current.dtype), current), moved


def hold_flags(scores: torch.Tensor, above: torch.Tensor, held: torch.Tensor | None, threshold: float,
               hold_margin: float) -> torch.Tensor:
    """The unsafe flags of a guided step with hysteresis: ``above`` (the score's own flags, score > threshold)
    or ``held`` (flagged at the previous guided step) with ``score > threshold - hold_margin``. ``scores``,
    ``above``, ``held``: [B]; ``held`` None or ``hold_margin`` 0: ``above`` itself (the paper)."""
    if held is None or hold_margin == 0:
        return above
    if held.shape != above.shape or scores.shape[:1] != above.shape:
        raise STGError(f"hold_flags: scores {list(scores.shape)}, flags {list(above.shape)} and held flags "
                       f"{list(held.shape)} must agree (one per image)")
    kept = held.to(above.device).bool() & (scores.detach().to(above.device).float() > threshold - hold_margin)
    return above.bool() | kept


def schedule_step(sigma: float, sigmas) -> int:
    """The schedule step of a model evaluation at ``sigma``: the largest i with ``sigmas[i] >= sigma``
    (relative tolerance 1e-5), i.e. ``sigmas[i+1] < sigma <= sigmas[i]``; 0 above the first sigma.
    ``sigmas``: the whole (decreasing) schedule including its final sigma."""
    values = sigmas.detach().float().cpu().tolist() if isinstance(sigmas, torch.Tensor) else [float(v) for v in sigmas]
    if len(values) < 2:
        return 0
    step = 0
    for i in range(len(values) - 1):
        if values[i] >= sigma * (1 - 1e-5) - 1e-12:
            step = i
    return step


def take_update(n: int, ratio: float) -> bool:
    """Whether the n-th (0-based) window step is updated at update ratio gamma: evenly spaced,
    floor((n + 1) * gamma) > floor(n * gamma) (gamma 1: every step; 0.5: every other, from the second)."""
    return math.floor((n + 1) * ratio + 1e-9) > math.floor(n * ratio + 1e-9)


# ---------------------------------------------------------------------------- what a guided step finds

@dataclass
class EmbeddingGradient:
    """Result of one gradient pass at x."""
    result: ScoreResult                 # scores and unsafe flags before the update
    grads: list[torch.Tensor]           # d score / d context, one per cross-attention entry
    pooled_grads: list[torch.Tensor]    # d score / d pooled head (guide_pooled), else empty
    cond_pred: torch.Tensor
    uncond_pred: torch.Tensor | None


@dataclass
class GuidedStep:
    """What the passes of one guided step found, for the whole batch."""
    scores: torch.Tensor                # [B] float: each image's score (from the pass that scored it)
    unsafe: torch.Tensor                # [B] bool
    grads: list[torch.Tensor]           # [B, ...] per cross-attention entry: zero for images without a gradient pass
    pooled_grads: list[torch.Tensor]
    cond_pred: torch.Tensor             # [B, ...] the conditional prediction each image's pass made
    uncond_pred: torch.Tensor | None
    gradient_rows: list[int]            # the images that went through the gradient pass


def rows_of(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The rows `rows` of `t` ([B, ...]); `t` itself for None (the whole batch)."""
    return t if rows is None else t.index_select(0, rows.to(t.device))


def placed_rows(part: torch.Tensor, rows: torch.Tensor | None, batch: int, into: torch.Tensor | None = None):
    """`part`, the rows `rows` of a batch of `batch`, as a [batch, ...] tensor: `into` (default zeros) with those rows
    replaced; `part` itself for rows None (the whole batch)."""
    if rows is None:
        return part
    if into is None:
        into = torch.zeros((batch, *part.shape[1:]), dtype=part.dtype, device=part.device)
    return into.to(part.dtype).index_copy(0, rows.to(part.device), part)


def update_embeddings(state: STGState, grads: list[torch.Tensor], pooled_grads: list[torch.Tensor],
                      unsafe: torch.Tensor, settings: STGSettings, pooled_width: int | None
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor, list[torch.Tensor]]:
    """The per-image updates of one guided step (:func:`stg_update` for every cross-attention entry, and for the
    first ``pooled_width`` entries of every pooled vector when guide_pooled), from the state's current embeddings
    (or its originals under ``rebase``). Returns (new embeddings, new pooled vectors or None, [B] bool: which images
    moved, the gradient norms [B] of each entry). Pure: the state is read, not changed."""
    embeds = list(state.embeds)
    pooled = None if state.pooled is None else list(state.pooled)
    norms = []
    updated = torch.zeros(unsafe.shape, dtype=torch.bool, device=unsafe.device)
    for k, g in enumerate(grads):
        base = state.originals[k] if settings.rebase else embeds[k]
        embeds[k], moved = stg_update(embeds[k], g, unsafe, settings.rho, base)
        updated = updated | moved
        norms.append(g.float().flatten(1).norm(dim=1))
    for k, g in enumerate(pooled_grads):
        current = pooled[k]
        base = (state.pooled_originals[k] if settings.rebase else current)[:, :pooled_width]
        head, moved = stg_update(current[:, :pooled_width], g, unsafe, settings.rho, base)
        pooled[k] = torch.cat([head, current[:, pooled_width:]], 1)
        updated = updated | moved
        norms.append(g.float().flatten(1).norm(dim=1))
    return embeds, pooled, updated, norms
