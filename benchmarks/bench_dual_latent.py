"""Dual-Latent KSampler vs a plain KSampler run, for several tau_gc.

While mixing, one UNet batch holds three chunks (original, shared negative, safe) instead of
two; afterwards one branch runs. With f the share of steps that run both branches, the
target on a GPU is wall-time ratio <= 1 + 0.6 f (compute alone would give 1 + 0.5 f)."""
from __future__ import annotations

import torch

from benchmarks.common import BenchContext, best_ratio, interleaved, ratio, table
from devtools import pack, tiny_models
from devtools.session import tiny_checkpoint_path

TITLE = "Dual-Latent KSampler: sampling wall time relative to a plain KSampler run"
TAUS = (0.0, 0.25, 0.5, 1.0)
SAMPLER, SCHEDULER, CFG = "euler", "normal", 7.5


def models(ctx: BenchContext):
    """(model, positive, safe, negative, size, steps, batches) on the tiny checkpoint or SD1.5-size random weights."""
    if ctx.full_size:
        dtype = torch.float16 if ctx.device == "cuda" else torch.float32
        model = tiny_models.build_unet_model("sd15_full", device=ctx.device, dtype=dtype)
        g = torch.Generator().manual_seed(0)
        positive, safe, negative = ([[torch.randn(1, 77, 768, generator=g), {}]] for _ in range(3))
        return model, positive, safe, negative, 512, 20, (1, 4)
    import comfy.sd
    import nodes

    model, clip = comfy.sd.load_checkpoint_guess_config(tiny_checkpoint_path())[:2]
    encode = nodes.CLIPTextEncode()
    return (model, encode.encode(clip, "a bloody fight in the street")[0],
            encode.encode(clip, "people talking in the street")[0], encode.encode(clip, "")[0], 128, 8, (1, 2))


def run(ctx: BenchContext) -> str:
    import comfy.model_management
    import comfy.samplers

    dual_latent = pack.module("steering.dual_latent")
    sample_with_guider = pack.module("steering.guidance").sample_with_guider
    DualLatentSettings = dual_latent.DualLatentSettings
    two_branch_fraction = dual_latent.two_branch_fraction

    model, positive, safe, negative, size, steps, batches = models(ctx)
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, SCHEDULER, steps)
    rows = []
    for batch in batches:
        latent = {"samples": torch.zeros(batch, 4, size // 8, size // 8)}

        def plain():  # the stock KSampler's guider through the same sampling call
            guider = comfy.samplers.CFGGuider(model)
            guider.set_conds(positive, negative)
            guider.set_cfg(CFG)
            return sample_with_guider(guider, latent, 0, steps, SAMPLER, SCHEDULER)

        def dual(settings):
            return lambda: sample_with_guider(dual_latent.dual_latent_guider(model, positive, safe, negative, CFG,
                                                                             settings),
                                              latent, 0, steps, SAMPLER, SCHEDULER)

        settings = {f"tau_gc {tau}": DualLatentSettings(0.75, 0.25, tau) for tau in TAUS}
        variants = {"plain KSampler": plain, **{name: dual(s) for name, s in settings.items()}}
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            times = interleaved(variants, ctx.rounds, ctx)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if ctx.device == "cuda" else "-"
        base = "plain KSampler"
        rows.append([batch, base, "-", "-", sorted(times[base])[len(times[base]) // 2], 1.0, 1.0, "-", "-"])
        for name, s in settings.items():
            f = two_branch_fraction(sampling, sigmas, s)
            target = 1 + 0.6 * f
            med_ratio, best = ratio(times, name, base), best_ratio(times, name, base)
            rows.append([batch, name, f"{f:.3f}", f"{target:.3f}", sorted(times[name])[len(times[name]) // 2],
                         med_ratio, best, "yes" if min(med_ratio, best) <= target else "no", peak])
        comfy.model_management.soft_empty_cache()
    ctx.notes.append(f"{size}x{size} px, {steps} {SAMPLER} steps ({SCHEDULER}), CFG {CFG}, w_xi 0.75, w_x 0.25; "
                     "f = share of steps with two branches (sigma >= sigma(tau_gc)); target ratio <= 1 + 0.6 f "
                     "(GPU); peak = torch.cuda.max_memory_allocated over the batch's runs (GiB)")
    return table(["batch", "variant", "f", "target", "median s", "ratio (median of rounds)",
                  "ratio (best of rounds)", "meets target", "peak GiB"], rows)
