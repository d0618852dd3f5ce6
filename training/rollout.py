"""Reverse-process rollouts to z_t, batched: all samples of a training batch in one run.

Each sample i stops after its own number of steps ``stop[i]``; at step j the UNet runs
once on the samples still active (``stop > j``), cond and uncond in the same call. The
schedule is the loaded model's own (``comfy.samplers.calculate_sigmas`` over its
``model_sampling``), and the update (``Stepper``) is deterministic in ComfyUI's sigma
space, so EPS, V-prediction and SDXL models are handled by ComfyUI's conversions:
``euler`` is the DDIM step ``x <- x + (sigma_next - sigma) * eps``; ``lms`` the linear
multistep step of order 4 of diffusers' ``LMSDiscreteScheduler`` (the embedding-direction
reference's sampler): ``x <- x + sum_i c_i eps_{j-i}`` with c_i the integral of the
Lagrange basis polynomial over the past sigmas from sigma_j to sigma_{j+1} (every step, the
last one included). No gradients flow through a rollout.
"""
from __future__ import annotations

import math

import torch

from ..steering.guidance import cfg_mix
from .unet import PromptConds, UNetCaller

SCHEDULERS = ("ddim_uniform", "normal", "karras", "simple", "sgm_uniform", "exponential", "beta")
SAMPLERS = ("euler", "lms")
LMS_ORDER = 4


class Stepper:
    """x_{j+1} from x_j and the (guided) eps_j on `sigmas`, for one batch; lms keeps the last eps."""

    def __init__(self, sigmas: torch.Tensor, sampler: str = "euler", history: list[torch.Tensor] | None = None):
        if sampler not in SAMPLERS:
            raise ValueError(f"rollout sampler {sampler!r}; expected one of {list(SAMPLERS)}")
        self.sigmas = sigmas
        self.sampler = sampler
        self.history: list[torch.Tensor] = list(history or [])
        self._sigmas_np = sigmas.double().numpy()

    def step(self, x: torch.Tensor, j: int, eps: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x_{j+1} for the rows `rows` of the batch (None: all of them); `x` and `eps` hold just those rows."""
        if self.sampler == "euler":
            return x + (float(self.sigmas[j + 1]) - float(self.sigmas[j])) * eps
        import comfy.k_diffusion.sampling as kds

        if rows is None:
            full = eps
        else:  # rows that are still running were running at every earlier step, so their history is complete
            full = (self.history[-1].clone() if self.history else eps.new_zeros((int(rows.max()) + 1, *eps.shape[1:])))
            full = full.index_copy(0, rows, eps)
        self.history.append(full)
        del self.history[:-LMS_ORDER]
        order = min(j + 1, LMS_ORDER, len(self.history))
        out = x
        for i in range(order):
            coeff = kds.linear_multistep_coeff(order, self._sigmas_np, j, i)
            past = self.history[-1 - i]
            out = out + coeff * (past if rows is None else past.index_select(0, rows))
        return out


def schedule(sampling, steps: int, scheduler: str = "ddim_uniform") -> torch.Tensor:
    """The model's own schedule for `steps` steps (the last sigma is 0), float32 on the CPU."""
    import comfy.samplers

    if steps < 1:
        raise ValueError(f"rollout steps must be >= 1; got {steps}")
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).float().cpu()
    if sigmas.shape[0] < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"scheduler {scheduler!r} gave an unusable schedule for {steps} steps: {sigmas.tolist()}")
    return sigmas  # ddim_uniform may give a step more when 1000 % steps != 0, as in ComfyUI's samplers


def start_latent(sampling, sigma0: float, noise: torch.Tensor) -> torch.Tensor:
    """z_T for pure noise, scaled as ComfyUI's samplers do (model_sampling.noise_scaling)."""
    max_denoise = math.isclose(float(sampling.sigma_max), sigma0, rel_tol=1e-5) or sigma0 > float(sampling.sigma_max)
    sigma = torch.full((noise.shape[0],), sigma0, device=noise.device)
    return sampling.noise_scaling(sigma, noise, torch.zeros_like(noise), max_denoise)


def guided_eps(caller: UNetCaller, x: torch.Tensor, sigma: torch.Tensor, cond: PromptConds,
               uncond: PromptConds | None, guidance: float, **shifts) -> torch.Tensor:
    """CFG eps_u + g (eps_c - eps_u) in one UNet call; shifts apply to the conditional prompt only."""
    if uncond is None or guidance == 1.0:
        return caller.eps(x, sigma, [cond], **shifts)[0]
    eps_c, eps_u = caller.eps(x, sigma, [cond, uncond], **shifts)
    return cfg_mix(eps_c, eps_u, guidance)


@torch.no_grad()
def batched_rollout(caller: UNetCaller, noise: torch.Tensor, sigmas: torch.Tensor, stop: torch.Tensor,
                    cond: PromptConds, uncond: PromptConds | None, guidance: float,
                    offset: torch.Tensor | None = None, text_shift: torch.Tensor | None = None,
                    stepper: Stepper | None = None) -> torch.Tensor:
    """z at sigmas[stop[i]] for every sample i, from one batched reverse run (`cond`: one prompt for
    all samples, or one row per sample); `stepper`: the update (default euler), which keeps its history
    for a caller that continues the run."""
    stop = stop.to("cpu", torch.long)
    if stop.shape[0] != noise.shape[0]:
        raise ValueError(f"{stop.shape[0]} stop steps for {noise.shape[0]} samples")
    if stop.numel() == 0:
        raise ValueError("a rollout needs at least one sample")
    if int(stop.max()) >= sigmas.shape[0] or int(stop.min()) < 0:
        raise ValueError(f"stop steps {stop.tolist()} outside the {sigmas.shape[0] - 1}-step schedule")
    sampling = caller.sampling
    stepper = stepper or Stepper(sigmas)
    x = start_latent(sampling, float(sigmas[0]), noise)
    shifts = {"offset": None if offset is None else offset.detach(),
              "text_shift": None if text_shift is None else text_shift.detach()}
    for j in range(int(stop.max())):
        active = (stop > j).nonzero().flatten()
        idx = active.to(x.device)
        everyone = active.shape[0] == x.shape[0]
        xa = x if everyone else x.index_select(0, idx)
        sigma = torch.full((xa.shape[0],), float(sigmas[j]), device=x.device)
        eps = guided_eps(caller, xa, sigma, cond if everyone else cond.take(active), uncond, guidance, **shifts)
        stepped = stepper.step(xa, j, eps, None if everyone else idx)
        if everyone:
            x = stepped
        else:
            x = x.index_copy(0, idx, stepped)
    return x


def sequential_rollout(caller: UNetCaller, noise: torch.Tensor, sigmas: torch.Tensor, stop: torch.Tensor,
                       cond: PromptConds, uncond: PromptConds | None, guidance: float, **shifts) -> torch.Tensor:
    """The reference code's way: one reverse run per sample (for benchmarks and tests)."""
    return torch.cat([batched_rollout(caller, noise[i:i + 1], sigmas, stop[i:i + 1], cond.take(torch.tensor([i])),
                                      uncond, guidance, **shifts) for i in range(noise.shape[0])])
