"""Dual latent reconstruction (arXiv 2411.13982): editing-free safe generation that keeps the
global context of the original prompt.

Two denoising branches start from the same noise: the original prompt ``c_x`` and a safe
prompt ``c_xi``. Up to the global-context threshold tau_gc (a fraction of the schedule,
converted to a sigma with the model's ``percent_to_sigma``, so it means the same noise
level for every scheduler) the latent is the weighted sum ``w_xi * x_safe + w_x * x_orig``;
after tau_gc only the safe branch continues. The returned latent is the safe branch's.

How the mixing is defined for every sampler (the paper only describes a DDIM-like loop):
both branches always step from the *same* current latent ``z`` and share its noise, and the
mixing is done on the denoised (x0) predictions inside the guider::

    D(z, sigma) = a * D_safe(z, sigma) + b * D_orig(z, sigma)   while sigma >= sigma(tau_gc)
    D(z, sigma) = D_safe(z, sigma)                               afterwards
    a = w_xi / (w_xi + w_x),  b = w_x / (w_xi + w_x)

where each ``D_*`` is that branch's own CFG result with the shared negative prompt. The
sampler therefore integrates one well-defined ODE/SDE whose vector field switches at tau_gc
(exactly like a prompt scheduled with ConditioningSetTimestepRange). Why this *is* the
paper's latent sum: every first-order step (Euler, DDIM, DPM++ 1st order, LCM, and the
ancestral/SDE variants with the noise they share) is affine in D with coefficients that do
not depend on D, so ``a * step(z, D_safe) + b * step(z, D_orig) == step(z, a D_safe + b D_orig)``
when a + b = 1. Multistep samplers (DPM++ 2M, LMS, UniPC, DEIS) are linear in the history of
D's too, so with constant weights mixing the two branches' latents equals one multistep
run on the mixed predictions; only the 1-2 steps right after tau_gc extrapolate from the
mixed history (as after any scheduled prompt switch). Second-order samplers (Heun, DPM++ 2S)
evaluate the mixed field at every stage. Ancestral/SDE noise is injected into the one shared
latent, so the mix never averages independent noises (which would lower the noise level
and blur the image).

The weights are normalised to sum 1 so the latent stays at the noise level the sampler
expects (with w_xi + w_x = 1, as in the paper, nothing changes). Cost: while mixing, the
UNet runs one batch of three chunks (original, shared negative, safe) instead of two; the
negative prediction is shared because both branches sit on the same latent. After tau_gc,
with w_xi = 0 or w_x = 0, and when the safe conditioning equals the original (a prompt the
input detector judged safe) only one branch is evaluated, through ComfyUI's own
``sampling_function``, so those phases are bit-identical to a plain KSampler.

Chunk labels: in the three-chunk call the UNet (and every patch in it) sees the labels
``[0, 1, 0]``: the safe prompt is a conditional prompt, so patches that act on the conditional
chunk only (h-space vectors, PAG/SAG-style attention patches reading
``transformer_options["cond_or_uncond"]``) shift the safe branch as they shift the original one,
and as they do after tau_gc, when the safe prompt runs alone.

Limits of the equivalences: ``w_xi = 0`` reproduces the original prompt only with
``tau_gc = 1``; with ``tau_gc < 1`` the safe prompt still takes over after tau_gc. At tau_gc
the field switches between two model evaluations: a multistep sampler's next 1-2 steps use a
history of mixed predictions, and a two-evaluation sampler (Heun, DPM-2, DPM++ 2S, SDE 2S)
whose step straddles sigma_gc evaluates its first stage mixed and its second safe-only (each
evaluation is judged by its own sigma).

Design: this module is the method's maths and imports without ComfyUI: :class:`DualLatentSettings` (weights,
which branches run at a sigma), the conditioning checks and :func:`mix_predictions` are plain functions of their
inputs. The guider that runs it (steering/guiders.py ``Guider_DualLatent``, a ComfyUI CFG guider) only picks the
branches of each evaluation, calls the model once and mixes with :func:`mix_predictions`. Classifier-free
guidance (hooks, the CFG-1 shortcut) and KSampler-style sampling come from steering.guidance, the sigma of tau_gc
from steering.window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import guidance
from .architectures import ArchitectureError, model_context_width
from .window import percent_sigma

# The paper tunes w_xi in 0.5..0.95; we default to the middle, with w_x = 1 - w_xi,
# and mix over the first half of the schedule.
DEFAULT_W_XI = 0.75
DEFAULT_W_X = 0.25
DEFAULT_TAU_GC = 0.5

ORIGINAL, SAFE, BOTH = "original", "safe", "both"


class DualLatentError(ValueError):
    """Dual-latent settings or conditionings that cannot be used."""


@dataclass(frozen=True)
class DualLatentSettings:
    """The method's three knobs; checked on construction."""

    w_xi: float = DEFAULT_W_XI
    w_x: float = DEFAULT_W_X
    tau_gc: float = DEFAULT_TAU_GC

    def __post_init__(self):
        for name in ("w_xi", "w_x", "tau_gc"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DualLatentError(f"{name} must be a finite number; got {value!r}")
        if self.w_xi < 0 or self.w_x < 0:
            raise DualLatentError(f"the latent weights must be >= 0; got w_xi={self.w_xi}, w_x={self.w_x}")
        if self.w_xi + self.w_x <= 0:
            raise DualLatentError(f"w_xi + w_x must be > 0 (they are normalised to sum 1); got w_xi={self.w_xi}, "
                             f"w_x={self.w_x}")
        if not 0.0 <= self.tau_gc <= 1.0:
            raise DualLatentError(f"tau_gc is a fraction of the schedule and must lie in [0, 1]; got {self.tau_gc}")

    @property
    def safe_weight(self) -> float:
        """a = w_xi / (w_xi + w_x)."""
        return self.w_xi / (self.w_xi + self.w_x)

    @property
    def original_weight(self) -> float:
        """b = w_x / (w_xi + w_x)."""
        return self.w_x / (self.w_xi + self.w_x)

    def sigma_gc(self, model_sampling) -> float:
        """The sigma at tau_gc: mixing while sigma >= sigma_gc (0 -> never, 1 -> every step). tau_gc = 0 is
        infinity: flow models (SD3, FLUX) put percent 0 exactly at their first sigma, which would mix it."""
        if self.tau_gc == 0:
            return math.inf
        return percent_sigma(model_sampling, self.tau_gc)

    def branches_at(self, sigma: float, sigma_gc: float, has_safe_branch: bool = True) -> str:
        """Which branches one model evaluation at `sigma` needs: ORIGINAL, SAFE or BOTH."""
        if not has_safe_branch:
            return ORIGINAL
        if sigma >= sigma_gc:
            if self.w_xi == 0:
                return ORIGINAL
            if self.w_x == 0:
                return SAFE
            return BOTH
        return SAFE


# ---------------------------------------------------------------------------- conditioning checks

def _entries(conditioning, name: str) -> list:
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise DualLatentError(f"{name}: expected a CONDITIONING (a non-empty list of [tensor, dict]); "
                         f"got {type(conditioning).__name__}{' (empty)' if conditioning == [] else ''}")
    for i, entry in enumerate(conditioning):
        if (not isinstance(entry, (list, tuple)) or len(entry) < 2 or not torch.is_tensor(entry[0])
                or entry[0].dim() != 3 or not isinstance(entry[1], dict)):
            raise DualLatentError(f"{name}[{i}]: expected [tensor [B, tokens, width], dict]; got "
                             f"{type(entry).__name__}")
    return list(conditioning)


def _describe(conditioning) -> str:
    entry = conditioning[0]
    pooled = entry[1].get("pooled_output")
    text = f"[{', '.join(str(s) for s in entry[0].shape)}]"
    return text + (f" with pooled_output [{', '.join(str(s) for s in pooled.shape)}]" if pooled is not None
                   else " without pooled_output")


def check_conditionings(positive, safe_positive, negative, model=None) -> None:
    """Clear errors for conditionings that cannot be mixed: different text-encoder widths, a pooled
    output on one side only (SDXL vs SD1.x), or a width the model does not take."""
    named = {"positive": _entries(positive, "positive"), "safe_positive": _entries(safe_positive, "safe_positive"),
             "negative": _entries(negative, "negative")}
    widths = {name: {int(e[0].shape[-1]) for e in entries} for name, entries in named.items()}
    for name, w in widths.items():
        if len(w) != 1:
            raise ArchitectureError(f"{name} mixes conditioning widths {sorted(w)}; one text encoder expected")
    expected = next(iter(widths["positive"]))
    for name in ("safe_positive", "negative"):
        got = next(iter(widths[name]))
        if got != expected:
            raise ArchitectureError(
                f"{name} conditioning {_describe(named[name])} does not match positive {_describe(named['positive'])}: "
                f"width {got} vs {expected}. Encode both prompts with the same CLIP (model architecture).")
    pooled_shapes = {name: {None if e[1].get("pooled_output") is None else tuple(e[1]["pooled_output"].shape[1:])
                            for e in entries} for name, entries in named.items()}
    if pooled_shapes["safe_positive"] != pooled_shapes["positive"]:
        raise ArchitectureError(
            f"safe_positive conditioning {_describe(named['safe_positive'])} does not match positive "
            f"{_describe(named['positive'])}: pooled outputs differ. Encode both prompts with the same CLIP.")
    if model is not None:
        width = model_context_width(model)
        if width is not None and width != expected:
            raise ArchitectureError(
                f"the model takes conditioning of width {width}, but the prompts have width {expected} "
                f"(positive {_describe(named['positive'])}): use the CLIP of the same checkpoint")


def conditionings_equal(a, b) -> bool:
    """True when two conditionings are the same prompt (same tensors, pooled outputs and options):
    the safe branch would then repeat the original one and is skipped."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    for (ta, da), (tb, db) in ((x[:2], y[:2]) for x, y in zip(a, b)):
        if ta.shape != tb.shape or not torch.equal(ta, tb) or set(da) != set(db):
            return False
        for key in da:
            va, vb = da[key], db[key]
            if torch.is_tensor(va) or torch.is_tensor(vb):
                if not (torch.is_tensor(va) and torch.is_tensor(vb) and va.shape == vb.shape and torch.equal(va, vb)):
                    return False
            elif va is not vb and va != vb:
                return False
    return True


def as_positive(conditioning) -> list:
    """A copy of the safe conditioning that the model treats as a positive prompt."""
    return [[entry[0], {**entry[1], "prompt_type": entry[1].get("prompt_type", "positive")}, *entry[2:]]
            for entry in conditioning]


# ---------------------------------------------------------------------------- the guider

# Positions of the three prompts in the conds list of the batched call, and the chunk label the
# UNet's patches see for each.
ORIGINAL_POSITION, UNCOND_POSITION, SAFE_POSITION = 0, 1, 2
CHUNK_LABELS = {ORIGINAL_POSITION: guidance.COND, UNCOND_POSITION: guidance.UNCOND, SAFE_POSITION: guidance.COND}


def relabel_chunks(cond_or_uncond) -> list[int]:
    """The chunk labels patches see for a batch of the three-chunk call: the safe prompt is a
    conditional prompt (COND), exactly as it is when it runs alone after tau_gc."""
    return [CHUNK_LABELS.get(int(i), int(i)) for i in cond_or_uncond]


def with_safe_chunk_as_cond(model_options: dict) -> dict:
    """A copy of `model_options` whose UNet wrapper relabels the safe chunk as conditional.

    ComfyUI's ``calc_cond_batch`` labels each chunk of the batch with its position in the conds
    list and passes the labels to the UNet as ``transformer_options["cond_or_uncond"]``; patches
    that act on the conditional chunk only (h-space vectors, PAG/SAG-style attention patches)
    test for the cond label (0) or the uncond label (1), so a third position would be skipped.
    The labels that place the outputs stay the positions (calc_cond_batch keeps its own list);
    only what the UNet and any user ``model_function_wrapper`` (called next, with the relabelled
    arguments) see changes. ``model_options`` itself is not modified."""
    inner = model_options.get("model_function_wrapper")

    def wrapper(apply_model, args):
        labels = relabel_chunks(args["cond_or_uncond"])
        c = dict(args["c"])
        transformer_options = dict(c.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = labels[:]
        c["transformer_options"] = transformer_options
        args = {**args, "c": c, "cond_or_uncond": labels}
        if inner is not None:
            return inner(apply_model, args)
        return apply_model(args["input"], args["timestep"], **c)

    return {**model_options, "model_function_wrapper": wrapper}


def mix_predictions(original: torch.Tensor, safe: torch.Tensor, settings: DualLatentSettings) -> torch.Tensor:
    """The mixed denoised prediction while both branches run: ``b * D_orig + a * D_safe`` (weights normalised to
    sum 1, see the module doc)."""
    return settings.original_weight * original + settings.safe_weight * safe


def dual_latent_guider(model, positive, safe_positive, negative, cfg: float, settings: DualLatentSettings):
    """The dual-latent guider (steering/guiders.py: ComfyUI's CFG guider class) with its prompts and CFG set."""
    from .guiders import Guider_DualLatent

    guider = Guider_DualLatent(model, settings)
    guider.set_conds(positive, safe_positive, negative)
    guider.set_cfg(cfg)
    return guider


def two_branch_fraction(model_sampling, sigmas: torch.Tensor, settings: DualLatentSettings) -> float:
    """f: the share of a first-order sampler's steps (one model evaluation at each sigma but the
    last) that run both branches."""
    sigma_gc = settings.sigma_gc(model_sampling)
    steps = [float(s) for s in sigmas[:-1]]
    if not steps:
        return 0.0
    return sum(settings.branches_at(s, sigma_gc) == BOTH for s in steps) / len(steps)
