"""Apply nodes vs a plain KSampler run: embedding direction and h-space vectors cost
(almost) nothing at sampling time. Target: wall-time ratio <= 1.02."""
from __future__ import annotations

import torch

from benchmarks.common import BenchContext, best_ratio, interleaved, ratio, table
from devtools import pack, tiny_models
from devtools.session import tiny_checkpoint_path

TITLE = "Apply nodes: sampling wall time relative to a plain KSampler run"


def models(ctx: BenchContext):
    """(model, positive, negative, size, steps) on the tiny checkpoint or SD1.5-size random weights."""
    if ctx.full_size:
        model = tiny_models.build_unet_model("sd15_full", device=ctx.device, dtype=torch.float16)
        g = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.randn(1, 77, 768, generator=g), {}]]
        return model, positive, negative, 512, 20
    import comfy.sd
    import nodes

    model, clip = comfy.sd.load_checkpoint_guess_config(tiny_checkpoint_path())[:2]
    encode = nodes.CLIPTextEncode()
    return model, encode.encode(clip, "a photo of a person")[0], encode.encode(clip, "")[0], 128, 8


def patch_cost_note(ctx: BenchContext, model, hspace_model, positive, size: int) -> str:
    """The h-space patch's own cost per UNet call against one UNet forward (cond+uncond batch):
    a noise-free estimate of the overhead that the wall-time ratios measure."""
    import time

    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    unet = model.model
    device = comfy.model_management.get_torch_device()
    x = torch.randn(2, 4, size // 8, size // 8, device=device)
    sigma = torch.full((2,), 5.0, device=device)
    context = torch.cat([positive[0][0]] * 2).to(device)
    patch = hspace_model.model_options["transformer_options"]["patches"]["output_block_patch"][0]
    h = torch.randn(2, 1280, size // 16, size // 16, device=device, dtype=unet.get_dtype())
    options = {"block": ("output", 0), "sigmas": sigma, "cond_or_uncond": [0, 1]}

    def best_of(fn, repeats: int) -> float:
        best = float("inf")
        for _ in range(5):
            ctx.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            ctx.synchronize()
            best = min(best, (time.perf_counter() - start) / repeats)
        return best

    with torch.inference_mode():
        forward = best_of(lambda: unet.apply_model(x, sigma, c_crossattn=context), 2)
        patch_time = best_of(lambda: patch(h, h, options), 200)
        other_blocks = best_of(lambda: patch(h, h, {"block": ("output", 1)}), 200)
    blocks = len(unet.diffusion_model.output_blocks)
    per_call = patch_time + (blocks - 1) * other_blocks
    return (f"h-space patch cost per UNet call (batch 2): {per_call * 1e6:.1f} us (bottleneck add "
            f"{patch_time * 1e6:.1f} us + {blocks - 1} other output blocks x {other_blocks * 1e6:.2f} us) "
            f"vs one UNet forward {forward * 1e3:.1f} ms: {100 * per_call / forward:.3f} % overhead")


def run(ctx: BenchContext) -> str:
    import comfy.sample

    apply_embedding_direction = pack.module("steering.embedding_direction").apply_embedding_direction
    patch_model_with_offsets = pack.module("steering.hspace").patch_model_with_offsets

    model, positive, negative, size, steps = models(ctx)
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(77, positive[0][0].shape[-1], generator=g) * 0.1
    offsets = torch.randn(2, 1280, 8, 8, generator=g)
    steered_positive = apply_embedding_direction(positive, [direction], "sd1", 1.0, 0.3, 1.0)
    hspace_model = patch_model_with_offsets(model, offsets[:1], 1.0, 0.0, 1.0)
    fair_model = patch_model_with_offsets(model, offsets, 1.0, 0.0, 1.0, seed=3)
    rows = []
    for batch in (1, 4):
        latent = torch.zeros(batch, 4, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, 0)

        def sampler(m, pos):
            return lambda: comfy.sample.sample(m, noise, steps, 7.5, "euler", "normal", pos, negative, latent,
                                               disable_pbar=True, seed=0)

        variants = {
            "plain KSampler": sampler(model, positive),
            "Apply Embedding Direction (0.3-1.0)": sampler(model, steered_positive),
            "Apply h-space Vector": sampler(hspace_model, positive),
            "Apply h-space Vector (fair, 2 vectors)": sampler(fair_model, positive),
        }
        with torch.inference_mode():
            times = interleaved(variants, ctx.rounds, ctx)
        base = "plain KSampler"
        for name in variants:
            med = sorted(times[name])[len(times[name]) // 2]
            rows.append([batch, name, med, min(times[name]),
                         ratio(times, name, base) if name != base else 1.0,
                         best_ratio(times, name, base) if name != base else 1.0])
    ctx.notes.append(f"{size}x{size} px, {steps} euler steps, CFG 7.5; target ratio <= 1.02")
    ctx.notes.append(patch_cost_note(ctx, model, hspace_model, positive, size))
    return table(["batch", "variant", "median s", "best s", "ratio vs plain (median of rounds)",
                  "ratio vs plain (best of rounds)"], rows)
