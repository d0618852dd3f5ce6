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

Design: :func:`stg_update`, :func:`schedule_step` and :func:`take_update` are pure
functions; :class:`Guider_STG` only orchestrates (gradient pass, records) and keeps its
mutable state in one :class:`STGState`. Classifier-free guidance, the CFG-1 shortcut and
KSampler-style sampling come from steering.guidance, the window from steering.window.
Gradients inside ComfyUI: the loaded UNet/VAE weights are inference tensors; during the
gradient pass they are swapped for normal views of the same storage
(steering.autograd_views): no weight is copied. The decoder (steering.decoders) is passed
in, loaded.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.samplers

from . import guidance
from .architectures import ArchitectureError, architecture_of_model, get_architecture
from .autograd_views import autograd_views, grad_input
from .checkpointing import gradient_checkpointing
from .comfy_compat import free_memory, gradient_pass
from .gradient_memory import check_gradient_memory
from .safety.base import SafetyScore, ScoreResult
from .window import SigmaWindow, check_window

AUTOCAST_MODES = ("none", "fp16", "bf16")
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

    def check(self) -> None:
        for name in ("rho", "start_percent", "end_percent", "update_ratio", "prior_weight"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every comparison below
                raise STGError(f"STG setting {name} must be a finite number; got {getattr(self, name)!r}")
        check_window(self.start_percent, self.end_percent, "STG")
        if not 0.0 <= self.update_ratio <= 1.0:
            raise STGError(f"update_ratio must lie in [0, 1]; got {self.update_ratio}")
        if self.autocast not in AUTOCAST_MODES:
            raise STGError(f"autocast {self.autocast!r}; expected one of {AUTOCAST_MODES}")
        if self.rho < 0:
            raise STGError(f"rho must be >= 0; got {self.rho}")


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


# ---------------------------------------------------------------------------- the guider

def _autocast(device: torch.device, mode: str):
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16)


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


def _rows_of(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The rows `rows` of `t` ([B, ...]); `t` itself for None (the whole batch)."""
    return t if rows is None else t.index_select(0, rows.to(t.device))


def _placed(part: torch.Tensor, rows: torch.Tensor | None, batch: int, into: torch.Tensor | None = None):
    """`part`, the rows `rows` of a batch of `batch`, as a [batch, ...] tensor: `into` (default zeros) with those rows
    replaced; `part` itself for rows None (the whole batch)."""
    if rows is None:
        return part
    if into is None:
        into = torch.zeros((batch, *part.shape[1:]), dtype=part.dtype, device=part.device)
    return into.to(part.dtype).index_copy(0, rows.to(part.device), part)


class Guider_STG(comfy.samplers.CFGGuider):
    """CFG guider that applies STG; use with SamplerCustomAdvanced or steering.guidance.sample_with_guider.

    `screen`: an optional cheap decoder (TAESD) that scores every image first without a graph; only the images
    it flags go through the exact gradient pass with `decoder`. None: `decoder` scores (the exact path).

    Public results of the last run: :attr:`records` (one per model evaluation), :attr:`state`
    (the current and original embeddings), :meth:`guided_steps` and :meth:`report`."""

    def __init__(self, model_patcher, decoder, score: SafetyScore, settings: STGSettings, screen=None):
        settings.check()
        model_patcher = model_patcher.clone()
        if decoder.patchers():
            model_patcher.set_additional_models("rs_stg_decoder", decoder.patchers())
        super().__init__(model_patcher)
        self.decoder = decoder
        self.screen = screen
        self.score = score
        self.settings = settings
        self.pooled_width = None
        if settings.guide_pooled:
            arch = get_architecture(architecture_of_model(model_patcher))
            self.pooled_width = arch.pooled_width
            if self.pooled_width is None:
                raise ArchitectureError(f"guide_pooled needs a model with a pooled text vector (SDXL, SD3, FLUX); "
                                        f"this model is {arch.label}")
        self.records: list[StepRecord] = []
        self.state: STGState | None = None
        self._sigmas = None
        self._schedule_cache = None
        self._window: SigmaWindow | None = None

    # -- run bookkeeping
    def inner_sample(self, noise, latent_image, device, sampler, sigmas, *args, **kwargs):
        self.state = None
        self.records = []
        self._sigmas = sigmas
        self._schedule_cache = None
        self._window = SigmaWindow.of(self.inner_model.model_sampling, self.settings.start_percent,
                                      self.settings.end_percent, "STG")
        return super().inner_sample(noise, latent_image, device, sampler, sigmas, *args, **kwargs)

    def guided_steps(self) -> list[int]:
        """Schedule steps (0-based) of the last run whose update was made (scored, and a gradient pass for the
        images found unsafe)."""
        return [r.step for r in self.records if r.guided]

    def report(self) -> str:
        """Human-readable summary of the last run."""
        steps = sorted({r.step for r in self.records})
        guided = [r for r in self.records if r.guided]
        passes = sum(len(r.gradient_images) for r in guided)
        screen = "; screened by TAESD first" if self.screen is not None else ""
        lines = [f"STG: {len(guided)} of {len(steps)} schedule steps guided ({len(self.records)} model "
                 f"evaluations; rho {self.settings.rho:g}, window {self.settings.start_percent:g}-"
                 f"{self.settings.end_percent:g}, update ratio {self.settings.update_ratio:g}); "
                 f"score: {self.score.describe()}",
                 f"gradient passes: {passes} image(s) in all (only images found unsafe pay for one{screen})"]
        for r in guided:
            scores = ", ".join(f"{s:.4g}{'*' if u else ''}" for s, u in zip(r.scores, r.updated))
            lines.append(f"step {r.step} (sigma {r.sigma:.4g}): scores [{scores}] (* = updated)")
        if self.state is not None:
            drift = [float((e - o).flatten(1).norm(dim=1).max())
                     for e, o in zip(self.state.embeds, self.state.originals)]
            lines.append(f"largest embedding change per image: {max(drift):.4g}")
        return "\n".join(lines)

    # -- embeddings
    def _positive_entries(self) -> list[dict]:
        positive = self.conds.get("positive") or []
        if not any("c_crossattn" in p.get("model_conds", {}) for p in positive):
            raise ArchitectureError("STG needs a cross-attention text conditioning (c_crossattn) in the positive "
                                    "input; this model/conditioning has none")
        return positive

    def initial_state(self, batch: int) -> STGState:
        """Per-image copies of the positive embeddings (and pooled vectors) for a batch of ``batch``."""
        def per_image(t: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(False):
                t = t.detach().clone()
            if t.shape[0] != batch:
                t = t[:batch] if t.shape[0] > batch else t.repeat(math.ceil(batch / t.shape[0]),
                                                                  *[1] * (t.ndim - 1))[:batch]
            return t

        embeds, pooled = [], []
        for entry in self._positive_entries():
            mc = entry.get("model_conds", {})
            if "c_crossattn" not in mc:
                continue
            embeds.append(per_image(mc["c_crossattn"].cond))
            if self.pooled_width is not None:
                if "y" not in mc:
                    raise ArchitectureError("guide_pooled: the conditioning has no pooled vector (y)")
                pooled.append(per_image(mc["y"].cond))
        has_pooled = self.pooled_width is not None
        return STGState(embeds=embeds, originals=[e.clone() for e in embeds],
                        pooled=pooled if has_pooled else None,
                        pooled_originals=[p.clone() for p in pooled] if has_pooled else None)

    def _positive_with(self, embeds: list[torch.Tensor], pooled: list[torch.Tensor] | None,
                       rows: torch.Tensor | None = None, batch: int = 0) -> list[dict]:
        """The positive conditioning with the given per-image embeddings (and pooled vectors); for a call over the
        images `rows` of a batch of `batch`, the entries' other per-image inputs are cut to those rows too."""
        out, k = [], 0
        for entry in self._positive_entries():
            mc = entry.get("model_conds", {})
            if "c_crossattn" not in mc and rows is None:
                out.append(entry)
                continue
            entry = entry.copy()
            mc = dict(mc)
            if rows is not None:
                for name, cond in mc.items():
                    value = getattr(cond, "cond", None)
                    if isinstance(value, torch.Tensor) and batch > 1 and value.shape[:1] == (batch,):
                        mc[name] = cond._copy_with(_rows_of(value, rows))
            if "c_crossattn" in mc:
                # the model's own conditioning classes (UNets: CONDCrossAttn; SD3/FLUX: CONDRegular), so batching
                # and token-count handling stay as the model defines them
                mc["c_crossattn"] = type(mc["c_crossattn"])(embeds[k])
                if pooled is not None:
                    mc["y"] = type(mc["y"])(pooled[k])
                k += 1
            entry["model_conds"] = mc
            out.append(entry)
        return out

    def _rows_callable(self) -> bool:
        """Whether a model call may hold only some images of the batch: not when a positive entry carries an input
        that ComfyUI hands out by batch position inside the call (a ControlNet / T2I-Adapter hint, a batch of
        masks); then every gradient pass takes the whole batch."""
        for entry in self._positive_entries():
            if entry.get("control") is not None:
                return False
            mask = entry.get("mask")
            if isinstance(mask, torch.Tensor) and mask.ndim > 2 and mask.shape[0] > 1:
                return False
        return True

    def _schedule(self, model_options: dict) -> list[float] | None:
        """The whole schedule of this run (ComfyUI passes it to the model), as floats (converted once)."""
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        sigmas = sigmas if sigmas is not None else self._sigmas
        if sigmas is None:
            return None
        if self._schedule_cache is None or self._schedule_cache[0] is not sigmas:
            values = sigmas.detach().float().cpu().tolist() if isinstance(sigmas, torch.Tensor) else list(sigmas)
            self._schedule_cache = (sigmas, values)
        return self._schedule_cache[1]

    # -- prediction
    def _negative(self, model_options: dict):
        return guidance.uncond_or_none(self.conds.get("negative"), self.cfg, model_options)

    def _combine(self, cond_pred, uncond_pred, positive, negative, x, timestep, model_options):
        return guidance.combine(self.inner_model, cond_pred, uncond_pred, self.cfg, x, timestep, model_options,
                                positive, negative)

    def _predict(self, conds, x, timestep, model_options):
        # one conditioning per call, directly (the gradient pass runs through it)
        return comfy.samplers.calc_cond_batch(self.inner_model, [conds], x, timestep, model_options)[0]

    def _score(self, x, timestep, embeds, pooled, uncond_pred, negative, model_options, decoder=None,
               rows: torch.Tensor | None = None, batch: int = 0):
        """Score and conditional prediction of the images at x (all of them, or the images `rows` of a batch of
        `batch`: x, timestep, embeds, pooled and uncond_pred then hold those rows only)."""
        if rows is not None:
            model_options = guidance.with_batch_rows(model_options, rows.tolist(), batch)
        positive = self._positive_with(embeds, pooled, rows, batch)
        cond_pred = self._predict(positive, x, timestep, model_options)
        if uncond_pred is None:
            uncond_pred = torch.zeros_like(cond_pred)
        denoised = self._combine(cond_pred, uncond_pred, positive, negative, x, timestep, model_options)
        score, unsafe = self.score.score_and_flags((decoder or self.decoder)(denoised, self.inner_model))
        return ScoreResult(score, unsafe), cond_pred

    def score_at(self, x, timestep, model_options, embeds: list[torch.Tensor],
                 pooled: list[torch.Tensor] | None = None) -> ScoreResult:
        """Safety score (no gradient) of the denoised estimate at x with the given per-image embeddings."""
        negative = self._negative(model_options)
        with torch.inference_mode(False), torch.no_grad():
            x_, t_ = grad_input(x), grad_input(timestep)
            uncond = None if negative is None else self._predict(negative, x_, t_, model_options)
            result, _ = self._score(x_, t_, [grad_input(e) for e in embeds],
                                    None if pooled is None else [grad_input(p) for p in pooled], uncond, negative,
                                    model_options)
        return result

    def _grad_modules(self):
        modules = [self.inner_model, *self.decoder.modules(), *self.score.modules()]
        for patcher in getattr(self, "loaded_models", []) or []:
            module = getattr(patcher, "model", None)
            if isinstance(module, torch.nn.Module):
                modules.append(module)
        return modules

    @contextlib.contextmanager
    def _pass(self, device: torch.device, grad: bool):
        """The context of a scoring pass (grad False: no graph) or a gradient pass: ComfyUI's training mode,
        autograd-safe views of the weights, the autocast setting, and for a gradient pass gradient checkpointing
        when set. A scoring pass runs the same kernels as the gradient pass, so both give the same scores."""
        s = self.settings
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
            stack.enter_context(gradient_pass(self.model_patcher, *self.decoder.patchers()))
            stack.enter_context(autograd_views(*self._grad_modules()))
            stack.enter_context(_autocast(device, s.autocast))
            if grad:
                stack.enter_context(gradient_checkpointing(getattr(self.inner_model, "diffusion_model", None),
                                                           *self.decoder.modules(),
                                                           enabled=s.gradient_checkpointing))
            yield

    def _gradient(self, x_, t_, model_options, embeds, pooled, originals, uncond_pred, negative,
                  rows: torch.Tensor | None, batch: int):
        """One gradient pass over the images `rows` (None: all) of the batch: their scores, the gradient of
        (score + prior term) of the unsafe ones w.r.t. their embeddings (and pooled heads), their conditional
        prediction. Runs inside inference_mode(False); x_, t_, uncond_pred are the whole batch's."""
        s = self.settings
        pick = lambda t: _rows_of(t, rows)  # noqa: E731
        leaves = [grad_input(pick(e)).requires_grad_(True) for e in embeds]
        heads = []
        if self.pooled_width is not None:
            if pooled is None:
                raise ArchitectureError("guide_pooled: embedding_gradient needs the pooled vectors")
            heads = [grad_input(pick(y)[:, :self.pooled_width]).requires_grad_(True) for y in pooled]
        with self._pass(x_.device, grad=True):
            full_pooled = None
            if heads:
                full_pooled = [torch.cat([h, grad_input(pick(y)[:, self.pooled_width:])], 1)
                               for h, y in zip(heads, pooled)]
            result, cond_pred = self._score(pick(x_), pick(t_), leaves, full_pooled,
                                            None if uncond_pred is None else pick(uncond_pred), negative,
                                            model_options, rows=rows, batch=batch)
            total = result.score.float()
            if s.prior_weight:
                for leaf, orig in zip(leaves, originals):
                    total = total + s.prior_weight * (pick(orig).to(leaf) - leaf).pow(2).flatten(1).mean(1)
            variables = leaves + heads
            mask = result.unsafe.to(total.device)
            if bool(mask.any()):
                grads = torch.autograd.grad(total[mask].sum(), variables, allow_unused=True)
                grads = [torch.zeros_like(v) if g is None else g.detach() for g, v in zip(grads, variables)]
            else:
                grads = [torch.zeros_like(v) for v in variables]
        n = len(leaves)
        return EmbeddingGradient(ScoreResult(result.score.detach(), result.unsafe), grads[:n], grads[n:],
                                 cond_pred.detach(), None)

    def embedding_gradient(self, x, timestep, model_options, embeds: list[torch.Tensor],
                           pooled: list[torch.Tensor] | None = None,
                           originals: list[torch.Tensor] | None = None) -> EmbeddingGradient:
        """Scores at x and the gradient of (score + prior term) of the unsafe images w.r.t. the embeddings
        (and the pooled heads when guide_pooled), from one gradient pass over the whole batch; ``originals``
        anchor the prior term (default: embeds)."""
        negative = self._negative(model_options)
        with torch.inference_mode(False):
            x_, t_ = grad_input(x), grad_input(timestep)
            with torch.no_grad():
                uncond_pred = None if negative is None else self._predict(negative, x_, t_, model_options)
            found = self._gradient(x_, t_, model_options, embeds, pooled,
                                   originals if originals is not None else embeds, uncond_pred, negative,
                                   None, x.shape[0])
        found.uncond_pred = uncond_pred
        return found

    def guided_step(self, x, timestep, model_options, state: STGState) -> GuidedStep:
        """Score every image of the batch, and run the gradient pass for the unsafe ones only.

        Images flagged at the previous guided step go straight to the gradient pass (it scores them too); every
        other image is scored first without a graph (with the screen decoder when one is set), and only the
        ones found unsafe then go through the gradient pass. An image that is never unsafe costs the plain
        prediction + decode + score, and no graph is ever kept for it. Scores, flags, gradients and predictions
        are those of one gradient pass over the whole batch (the same kernels, without a graph where none is
        needed), with the gradient of the images that were not unsafe zero."""
        batch = x.shape[0]
        negative = self._negative(model_options)
        sub_batches = self._rows_callable()
        device = x.device
        with torch.inference_mode(False):
            x_, t_ = grad_input(x), grad_input(timestep)
            with torch.no_grad():
                uncond_pred = None if negative is None else self._predict(negative, x_, t_, model_options)
            expected = state.flagged if state.flagged is not None else torch.zeros(batch, dtype=torch.bool)
            expected = expected.cpu()
            if not sub_batches and bool(expected.any()):
                expected = torch.ones(batch, dtype=torch.bool)
            scores = torch.zeros(batch, dtype=torch.float32)
            unsafe = torch.zeros(batch, dtype=torch.bool)
            cond_pred = None
            to_score = (~expected).nonzero().flatten()
            if len(to_score):
                rows = None if len(to_score) == batch else to_score
                with self._pass(device, grad=False):
                    result, pred = self._score(
                        _rows_of(x_, rows), _rows_of(t_, rows), [_rows_of(grad_input(e), rows) for e in state.embeds],
                        None if state.pooled is None else [_rows_of(grad_input(p), rows) for p in state.pooled],
                        None if uncond_pred is None else _rows_of(uncond_pred, rows), negative, model_options,
                        decoder=self.screen, rows=rows, batch=batch)
                scores[to_score] = result.score.detach().float().cpu()
                unsafe[to_score] = result.unsafe.cpu().bool()
                cond_pred = _placed(pred, rows, batch)
            wanted = expected | unsafe
            if not sub_batches and bool(wanted.any()):
                wanted = torch.ones(batch, dtype=torch.bool)
            gradient_rows = wanted.nonzero().flatten()
            grads = [torch.zeros_like(e) for e in state.embeds]
            pooled_grads = [torch.zeros_like(p[:, :self.pooled_width]) for p in state.pooled or []] \
                if self.pooled_width is not None else []
            if len(gradient_rows):
                rows = None if len(gradient_rows) == batch else gradient_rows
                self._check_memory(len(gradient_rows), x, state)
                found = self._gradient(x_, t_, model_options, state.embeds, state.pooled, state.originals,
                                       uncond_pred, negative, rows, batch)
                scores[gradient_rows] = found.result.score.float().cpu()
                unsafe[gradient_rows] = found.result.unsafe.cpu().bool()
                grads = [_placed(f, rows, batch, g) for g, f in zip(grads, found.grads)]
                pooled_grads = [_placed(f, rows, batch, g) for g, f in zip(pooled_grads, found.pooled_grads)]
                cond_pred = _placed(found.cond_pred, rows, batch, cond_pred)
        state.flagged = unsafe.clone()
        return GuidedStep(scores, unsafe, grads, pooled_grads, cond_pred, uncond_pred, gradient_rows.tolist())

    def _check_memory(self, images: int, x: torch.Tensor, state: STGState) -> None:
        """Before the first gradient pass over this many images: refuse (with the numbers and the settings that
        would fit) a pass that cannot fit the device's free memory."""
        if images <= state.memory_checked:
            return
        check_gradient_memory(self.inner_model, self.decoder, self.settings, images, tuple(x.shape),
                              free_memory(self.model_patcher, x.device), x.device)
        state.memory_checked = images

    def _plain(self, state: STGState, x, timestep, model_options, seed):
        # until an update happened the conditioning is exactly the user's (no repeated copies)
        positive = self._positive_with(state.embeds, state.pooled) if state.changed else self.conds.get("positive")
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                positive, self.cfg, model_options=model_options, seed=seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        s = self.settings
        if self.state is None or self.state.embeds[0].shape[0] != x.shape[0]:
            self.state = self.initial_state(x.shape[0])
        state = self.state
        sigma = float(timestep.reshape(-1)[0])
        sigmas = self._schedule(model_options)
        step = schedule_step(sigma, sigmas) if sigmas is not None else state.step + 1
        step_sigma = float(sigmas[step]) if sigmas is not None else sigma
        in_window = step_sigma in self._window
        if step != state.step:          # the first evaluation of a step decides its update
            state.step = step
            state.pending = in_window and s.rho > 0 and take_update(state.window_steps, s.update_ratio)
            state.window_steps += int(in_window)
        if not state.pending:
            self.records.append(StepRecord(step, sigma, in_window, False))
            return self._plain(state, x, timestep, model_options, seed)
        state.pending = False
        comfy.model_management.throw_exception_if_processing_interrupted()
        found = self.guided_step(x, timestep, model_options, state)
        unsafe = found.unsafe.to(x.device)
        norms = []
        with torch.inference_mode(False):
            updated = torch.zeros(unsafe.shape, dtype=torch.bool, device=unsafe.device)
            for k, g in enumerate(found.grads):
                base = state.originals[k] if s.rebase else state.embeds[k]
                state.embeds[k], moved = stg_update(state.embeds[k], g, unsafe, s.rho, base)
                updated = updated | moved
                norms.append(g.float().flatten(1).norm(dim=1))
            for k, g in enumerate(found.pooled_grads):
                width = self.pooled_width
                current = state.pooled[k]
                base = (state.pooled_originals[k] if s.rebase else current)[:, :width]
                head, moved = stg_update(current[:, :width], g, unsafe, s.rho, base)
                state.pooled[k] = torch.cat([head, current[:, width:]], 1)
                updated = updated | moved
                norms.append(g.float().flatten(1).norm(dim=1))
        state.changed = state.changed or bool(updated.any())
        self.records.append(StepRecord(step, sigma, True, True, [float(v) for v in found.scores],
                                       [bool(u) for u in updated],
                                       [float(v) for v in torch.stack(norms).max(0).values] if norms else [],
                                       found.gradient_rows))
        negative = self._negative(model_options)
        positive = self._positive_with(state.embeds, state.pooled)
        cond_pred = self.updated_prediction(found.cond_pred, updated, state, x, timestep, model_options)
        uncond_pred = found.uncond_pred if found.uncond_pred is not None else torch.zeros_like(cond_pred)
        return self._combine(cond_pred.to(x.dtype), uncond_pred.to(x.dtype), positive, negative, x, timestep,
                             model_options)

    def updated_prediction(self, cond_pred, updated: torch.Tensor, state: STGState, x, timestep,
                           model_options) -> torch.Tensor:
        """The conditional prediction after an update: the updated images' again with their new embedding (one
        call over those images), the others' as their pass made it."""
        moved = updated.nonzero().flatten().cpu()
        if not len(moved):
            return cond_pred
        batch = x.shape[0]
        rows = None if len(moved) == batch or not self._rows_callable() else moved
        with torch.inference_mode(False), torch.no_grad():
            options = model_options if rows is None else guidance.with_batch_rows(model_options, rows.tolist(), batch)
            positive = self._positive_with([_rows_of(e, rows) for e in state.embeds],
                                           None if state.pooled is None else [_rows_of(p, rows) for p in state.pooled],
                                           rows, batch)
            fresh = self._predict(positive, _rows_of(grad_input(x), rows), _rows_of(grad_input(timestep), rows),
                                  options)
        return _placed(fresh, rows, batch, cond_pred)


def make_guider(model, positive, negative, cfg: float, decoder, score: SafetyScore,
                settings: STGSettings, screen=None) -> Guider_STG:
    """The STG guider with its prompts and CFG scale set (`screen`: see Guider_STG)."""
    guider = Guider_STG(model, decoder, score, settings, screen)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider

