"""Fit steering vectors on ToyWorld (benchmark-local, plain torch on ToyWorld's UNet).

These follow the papers' objectives (METHODS.md) at ToyWorld's scale, so the efficacy
benchmark can run every apply method of the pack on vectors that were really learned:

* ``fit_embedding_direction``: arXiv 2505.15427. Rank-r d = B @ A added to the prompt
  embedding; loss ``MSE(eps(z, c + d), eps_u + w (eps_u - eps_unsafe))``-style target,
  i.e. ``eps_unsafe + w * (eps_uncond - eps_unsafe)`` on latents of un-shifted CFG
  rollouts of the training prompts, over the later steps of the schedule.
* ``fit_hspace_vector``: CoDSMa. A c-vector [C, H, W] added to the bottleneck;
  ``|| D(h + c; prompt, t) - D(h; target, t) ||^2`` where the target is either another
  prompt (fairness: "a shape" -> "a circle") or CFG of the prompt with a negative
  prompt (safety: negative "red"), on latents of rollouts *with* the current c.

Rollouts use Euler steps on ComfyUI's own sigmas (``model_sampling``) with CFG; pools of
rollouts are refreshed every few iterations (cheaper than one rollout per iteration).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from . import model as M


@dataclass
class Denoiser:
    """Noise (eps) predictions of ToyWorld's UNet with optional text / bottleneck offsets."""

    tw: M.ToyWorld

    def __post_init__(self):
        self.unet = self.tw.model.model.diffusion_model
        self.sampling = self.tw.model.model.model_sampling

    def sigmas(self, steps: int) -> torch.Tensor:
        import comfy.samplers

        return comfy.samplers.calculate_sigmas(self.sampling, "normal", steps).float()

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
            h_offset: torch.Tensor | None = None) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        x_in = x / torch.sqrt(sigma.view(-1, 1, 1, 1) ** 2 + 1)
        options = {}
        if h_offset is not None:
            def patch(h, hsp, transformer_options):
                if transformer_options.get("block") == ("output", 0):
                    h = h + h_offset
                return h, hsp
            options = {"patches": {"output_block_patch": [patch]}}
        out = self.unet(x_in, self.sampling.timestep(sigma).float(), context=context, transformer_options=options)
        denoised = self.sampling.calculate_denoised(sigma, out, x)  # the model is v-prediction
        return (x - denoised) / sigma.view(-1, 1, 1, 1)

    @torch.no_grad()
    def rollout(self, context: torch.Tensor, uncond: torch.Tensor, seeds: list[int], steps: int, cfg: float,
                h_offset: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Euler CFG trajectory [x_0 = noise * sigma_max, x_1, ..., x_steps] for each context row."""
        sigmas = self.sigmas(steps)
        noise = torch.stack([torch.randn(M.LATENT_CHANNELS, M.LATENT_SIZE, M.LATENT_SIZE,
                                         generator=torch.Generator().manual_seed(s)) for s in seeds])
        x = noise * sigmas[0]
        xs = [x]
        for i in range(steps):
            both = self.eps(torch.cat([x, x]), sigmas[i], torch.cat([context, uncond.expand_as(context)]),
                            None if h_offset is None else torch.cat([h_offset.expand(x.shape[0], -1, -1, -1),
                                                                     torch.zeros_like(h_offset).expand(x.shape[0], -1, -1, -1)]))
            e_c, e_u = both.chunk(2)
            e = e_u + cfg * (e_c - e_u)
            x = x + e * (sigmas[i + 1] - sigmas[i])
            xs.append(x)
        return xs


def _embed(tw: M.ToyWorld, prompts: list[str]) -> torch.Tensor:
    return tw.embed(prompts)


def fit_embedding_direction(tw: M.ToyWorld, prompts: list[str], unsafe_concept: str, iterations: int = 200,
                            rank: int = 1, lr: float = 0.06, guidance: float = 4.0, steps: int = 20,
                            first_step: int = 4, batch: int = 8, seed: int = 0, refresh: int = 25,
                            preserve_prompts: list[str] | None = None, preserve_weight: float = 0.0,
                            mode: str = "away", target_of=None) -> torch.Tensor:
    """Direction d [T, 768] = B @ A. mode "away": the paper's safety target (away from `unsafe_concept`);
    mode "toward": a fairness target ``eps_u + w (eps(concept) - eps_u)`` (toward that prompt), where the
    concept is `unsafe_concept` or, with `target_of`, ``target_of(training prompt)`` per row."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    den = Denoiser(tw)
    T, D = tw.embed([""]).shape[1:]
    b = torch.zeros(T, rank, requires_grad=True)
    a = torch.randn(rank, D, requires_grad=True)
    opt = torch.optim.Adam([b, a], lr=lr)
    sigmas = den.sigmas(steps)
    uncond = _embed(tw, [""])
    concept = _embed(tw, [unsafe_concept])
    pool: list = []
    for it in range(iterations):
        if it % refresh == 0:
            chosen = [rng.choice(prompts) for _ in range(batch)]
            seeds = [rng.randrange(2 ** 31) for _ in range(batch)]
            ctx = _embed(tw, chosen)
            row_concept = _embed(tw, [target_of(p) for p in chosen]) if target_of else concept.expand_as(ctx)
            pool = [(ctx, den.rollout(ctx, uncond, seeds, steps, guidance))]
            if preserve_prompts and preserve_weight > 0:
                keep = [rng.choice(preserve_prompts) for _ in range(batch)]
                kctx = _embed(tw, keep)
                pool.append((kctx, den.rollout(kctx, uncond, [rng.randrange(2 ** 31) for _ in keep], steps,
                                                guidance)))
        k = rng.randrange(first_step, steps)
        ctx, xs = pool[0]
        x, s = xs[k], sigmas[k]
        d = b @ a
        with torch.no_grad():
            e_concept = den.eps(x, s, row_concept)
            e_u = den.eps(x, s, uncond.expand_as(ctx))
            if mode == "away":
                target = e_concept + guidance * (e_u - e_concept)
            else:
                target = e_u + guidance * (e_concept - e_u)
        loss = torch.nn.functional.mse_loss(den.eps(x, s, ctx + d), target)
        if len(pool) > 1:
            kctx, kxs = pool[1]
            with torch.no_grad():
                keep_target = den.eps(kxs[k], s, kctx)
            loss = loss + preserve_weight * torch.nn.functional.mse_loss(den.eps(kxs[k], s, kctx + d), keep_target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (b @ a).detach()


def fit_hspace_vector(tw: M.ToyWorld, pairs: list[tuple[str, str, str]], iterations: int = 200, lr: float = 0.05,
                      guidance: float = 4.0, target_guidance: float = 4.0, steps: int = 20, batch: int = 8,
                      seed: int = 0, refresh: int = 25) -> torch.Tensor:
    """c-vector [C, H, W] by CoDSMa's loss. `pairs` are (prompt, target prompt, negative prompt): the
    target denoiser is CFG(target, negative, target_guidance) (negative "" = plain conditional
    prediction of the target prompt when target_guidance is 1)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    den = Denoiser(tw)
    c = torch.zeros(*M.BOTTLENECK_SHAPE, requires_grad=True)
    opt = torch.optim.Adam([c], lr=lr)
    sigmas = den.sigmas(steps)
    uncond = _embed(tw, [""])
    for it in range(iterations):
        if it % refresh == 0:
            chosen = [rng.choice(pairs) for _ in range(batch)]
            ctx = _embed(tw, [p for p, _, _ in chosen])
            tgt = _embed(tw, [t for _, t, _ in chosen])
            neg = _embed(tw, [n for _, _, n in chosen])
            xs = den.rollout(ctx, uncond, [rng.randrange(2 ** 31) for _ in chosen], steps, guidance,
                             h_offset=c.detach())
        k = rng.randrange(0, steps)
        x, s = xs[k], sigmas[k]
        with torch.no_grad():
            e_t = den.eps(x, s, tgt)
            e_n = den.eps(x, s, neg)
            target = e_n + target_guidance * (e_t - e_n)
        pred = den.eps(x, s, ctx, h_offset=c.expand(x.shape[0], -1, -1, -1))
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return c.detach()
