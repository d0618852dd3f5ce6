"""The three training objectives, as functions of a fixed batch (z_t, sigma) and the vector.

Notation as in METHODS.md: ``eps(z; h + c, y, t)`` is the UNet noise prediction with
``c`` added to the bottleneck, ``eps(z; P_y + d, t)`` with ``d`` added to the prompt
embedding. MSE is the mean over all elements.

* Embedding direction (arXiv 2505.15427), d = B @ A:
  ``L = loss_scale * MSE(eps(z; P_neutral + d), target)``; gradients through the whole UNet.
* CoDSMa: ``L = MSE(eps(z; h + c, neutral), target)``; only the decoder half sees the
  vector (the encoder computes h without any requires-grad input, so no graph is built).
* RespoDiff, alternating: ``L_resp = MSE(eps(z; h + RAM, neutral), target)`` updates RAM,
  then ``L_sem = lambda * MSE(eps(z; h + RAM + SAM, neutral), eps(z; h, neutral))``
  updates SAM (RAM held fixed).

Targets (no gradient), with guidance g:
* toward a target prompt: ``eps_u + g (eps_target - eps_u)`` (g = 1: just eps_target);
* away from a concept: ``eps_concept + g (eps_base - eps_concept)`` where the base is the
  empty prompt for the embedding direction (reference code) and the neutral prompt for
  the h-space methods (negative prompting, CoDSMa / RespoDiff).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .unet import PromptConds, UNetCaller

METHODS = ("embedding_direction", "codsma_cvector", "respodiff_ram_sam")
DIRECTIONS = ("toward_target", "away_from_concept")
VECTOR_METHOD = {"embedding_direction": "embedding_direction", "codsma_cvector": "hspace_cvector",
                 "respodiff_ram_sam": "respodiff_ram_sam"}


@dataclass(frozen=True)
class MethodDefaults:
    """Paper / reference-code settings (METHODS.md)."""

    learning_rate: float
    rollout_guidance: float
    toward_guidance: float
    away_guidance: float
    t_start: float   # first trained step, as a fraction of the rollout schedule
    t_end: float     # end (exclusive) of the trained steps
    loss_scale: float
    away_base: str   # "uncond" or "neutral"


DEFAULTS = {
    # Reference: Adam lr 0.06, CFG 7.5, loss 10 * MSE for steps 10..50 of 50.
    "embedding_direction": MethodDefaults(0.06, 7.5, 7.5, 7.5, 0.2, 1.0, 10.0, "uncond"),
    # Paper eq. 5 (target score without guidance); negative prompting for safety.
    "codsma_cvector": MethodDefaults(0.1, 3.0, 1.0, 7.5, 0.0, 0.98, 1.0, "neutral"),
    # Reference: Adam lr 0.1, rollout CFG 3, target guidance 4 (12 for safety), t in [0, 49) of 50.
    "respodiff_ram_sam": MethodDefaults(0.1, 3.0, 4.0, 12.0, 0.0, 0.98, 1.0, "neutral"),
}


@dataclass
class Prompts:
    """Prepared model inputs of the prompts a run needs."""

    neutral: PromptConds
    other: PromptConds          # the target prompt, or the concept to move away from
    uncond: PromptConds         # the empty prompt


def target_eps(caller: UNetCaller, z: torch.Tensor, sigma: torch.Tensor, prompts: Prompts, direction: str,
               guidance: float, away_base: str, with_neutral: bool = False):
    """(target, eps(z; h, neutral) or None) without gradients, in one batched UNet call."""
    with torch.no_grad():
        if direction == "toward_target":
            need = [prompts.other] if guidance == 1.0 else [prompts.other, prompts.uncond]
        elif direction == "away_from_concept":
            base = prompts.uncond if away_base == "uncond" else prompts.neutral
            need = [prompts.other, base]
        else:
            raise ValueError(f"direction {direction!r}; expected one of {DIRECTIONS}")
        neutral_index = None
        if with_neutral:
            if direction == "away_from_concept" and away_base == "neutral":
                neutral_index = 1
            else:
                need.append(prompts.neutral)
                neutral_index = len(need) - 1
        eps = caller.eps(z, sigma, need)
        if direction == "toward_target":
            target = eps[0] if guidance == 1.0 else eps[1] + guidance * (eps[0] - eps[1])
        else:
            target = eps[0] + guidance * (eps[1] - eps[0])
        return target, (eps[neutral_index] if neutral_index is not None else None)


@dataclass
class Phase:
    """One optimizer step of an iteration: which vector tensors it updates and its loss."""

    name: str
    params: tuple[str, ...]
    loss: Callable[[], torch.Tensor]


def embedding_direction_phases(caller, z, sigma, prompts, params, direction, guidance, loss_scale, away_base):
    target, _ = target_eps(caller, z, sigma, prompts, direction, guidance, away_base)

    def loss():
        d = params["direction_b"] @ params["direction_a"]
        eps = caller.eps(z, sigma, [prompts.neutral], text_shift=d, shift_prompts=1)[0]
        return loss_scale * F.mse_loss(eps, target)

    return [Phase("loss", ("direction_b", "direction_a"), loss)]


def codsma_phases(caller, z, sigma, prompts, params, direction, guidance, loss_scale, away_base):
    target, _ = target_eps(caller, z, sigma, prompts, direction, guidance, away_base)

    def loss():
        eps = caller.eps(z, sigma, [prompts.neutral], offset=params["c"], offset_prompts=1)[0]
        return loss_scale * F.mse_loss(eps, target)

    return [Phase("loss", ("c",), loss)]


def respodiff_phases(caller, z, sigma, prompts, params, direction, guidance, loss_scale, away_base, lam):
    target, neutral = target_eps(caller, z, sigma, prompts, direction, guidance, away_base, with_neutral=True)

    def resp():
        eps = caller.eps(z, sigma, [prompts.neutral], offset=params["ram"], offset_prompts=1)[0]
        return loss_scale * F.mse_loss(eps, target)

    def sem():
        offset = params["ram"].detach() + params["sam"]
        eps = caller.eps(z, sigma, [prompts.neutral], offset=offset, offset_prompts=1)[0]
        return lam * F.mse_loss(eps, neutral)

    return [Phase("ram", ("ram",), resp), Phase("sam", ("sam",), sem)]


def rollout_shift(method: str, params: dict[str, torch.Tensor]) -> dict:
    """What the rollout to z_t applies with the neutral prompt: the h-space vector, never the
    embedding direction (the reference advances latents with the un-shifted prediction).
    RespoDiff rolls out with the RAM-augmented model (paper: z_{t,neu} via f_resp)."""
    if method == "codsma_cvector":
        return {"offset": params["c"]}
    if method == "respodiff_ram_sam":
        return {"offset": params["ram"]}
    return {}


def init_params(method: str, generator: torch.Generator, *, text_shape=None, bottleneck_shape=None,
                rank: int = 1, init_std: float = 0.01) -> dict[str, torch.Tensor]:
    """Initial vector tensors (float32, CPU): B = 0 and A ~ N(0, 1) for the embedding direction
    (METHODS.md), small random c-vectors / RAM / SAM for the h-space methods."""
    if method == "embedding_direction":
        tokens, width = text_shape
        return {"direction_b": torch.zeros(tokens, rank),
                "direction_a": torch.randn(rank, width, generator=generator)}
    roles = ("c",) if method == "codsma_cvector" else ("ram", "sam")
    return {r: init_std * torch.randn(*bottleneck_shape, generator=generator) for r in roles}


def phases_for(method: str, caller, z, sigma, prompts, params, *, direction, guidance, loss_scale, away_base,
               lam) -> list[Phase]:
    if method == "embedding_direction":
        return embedding_direction_phases(caller, z, sigma, prompts, params, direction, guidance, loss_scale,
                                          away_base)
    if method == "codsma_cvector":
        return codsma_phases(caller, z, sigma, prompts, params, direction, guidance, loss_scale, away_base)
    if method == "respodiff_ram_sam":
        return respodiff_phases(caller, z, sigma, prompts, params, direction, guidance, loss_scale, away_base, lam)
    raise ValueError(f"method {method!r}; expected one of {METHODS}")
