"""Apply nodes vs a plain KSampler run: embedding direction and h-space vectors cost
(almost) nothing at sampling time. Target: wall-time ratio <= 1.02."""
from __future__ import annotations

import torch

from common import BenchContext, best_ratio, interleaved, load_pack, ratio, table

TITLE = "Apply nodes: sampling wall time relative to a plain KSampler run"


def models(ctx: BenchContext):
    """(model, positive, negative, size, steps) on the tiny checkpoint or SD1.5-size random weights."""
    if ctx.full_size:
        import tiny_checkpoint

        model = tiny_checkpoint.build_unet_model("sd15_full", device=ctx.device, dtype=torch.float16)
        g = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.randn(1, 77, 768, generator=g), {}]]
        return model, positive, negative, 512, 20
    import comfy.sd
    import nodes
    import rs_harness

    model, clip = comfy.sd.load_checkpoint_guess_config(rs_harness.tiny_checkpoint_path())[:2]
    encode = nodes.CLIPTextEncode()
    return model, encode.encode(clip, "a photo of a person")[0], encode.encode(clip, "")[0], 128, 8


def run(ctx: BenchContext) -> str:
    import comfy.sample

    load_pack()
    from steering.embedding_direction import apply_embedding_direction
    from steering.hspace import patch_model_with_offsets

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
    return table(["batch", "variant", "median s", "best s", "ratio vs plain (median of rounds)",
                  "ratio vs plain (best of rounds)"], rows)
