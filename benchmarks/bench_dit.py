"""SD3 and FLUX: each text-side method's sampling wall time relative to the plain sampler, side by side.

On the tiny in-memory FLUX dev and SD3 models (devtools.tiny_dit: ComfyUI's own model classes, small width
and depth, the real conditioning shapes and 16-channel latents), from the same seed: the plain KSampler,
STG (colour score, every image guided on every step of the window 0.1-0.9: the worst case), the dual-latent
KSampler (tau_gc 0.5) and an embedding direction (strength 1 from 0.28). FLUX dev runs as its users run it,
at CFG 1 with FluxGuidance 3.5; SD3 at CFG 4.5. Real-size figures need a GPU (none was lent so far).
"""
from __future__ import annotations

import torch

from benchmarks.common import BenchContext, interleaved, ratio, table
from devtools import pack, tiny_dit

TITLE = "SD3 and FLUX: STG, dual latent and embedding directions relative to the plain sampler"
DEVICES = ("cpu",)
SIZE, BATCH, STEPS = 128, 1, 10
CFG = {"flux": 1.0, "sd3": 4.5}


def prompts(name: str):
    """(positive, safe, negative) conditionings of the tiny model's CLIP (FLUX: with FluxGuidance 3.5)."""
    import node_helpers

    clip = tiny_dit.build_clip(name)

    def encode(text):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return node_helpers.conditioning_set_values(cond, {"guidance": 3.5}) if name == "flux" else cond

    return encode("a photo of a person at the beach"), encode("a photo of a beach"), encode("")


def variants(name: str) -> tuple[dict, list[str]]:
    import comfy.sample

    stg, decoders = pack.module("steering.stg"), pack.module("steering.decoders")
    guiders = pack.module("steering.guiders")
    dl, ed = pack.module("steering.dual_latent"), pack.module("steering.embedding_direction")
    sample_with_guider = pack.module("steering.guidance").sample_with_guider
    colour = pack.module("steering.safety").ColourStatisticScore("brightness", threshold=-10.0)
    model, vae = tiny_dit.build_model(name), tiny_dit.build_vae(name)
    positive, safe, negative = prompts(name)
    cfg = CFG[name]
    latent = {"samples": torch.zeros(BATCH, 16, SIZE // 8, SIZE // 8)}
    direction = torch.randn(positive[0][0].shape[1], 4096, generator=torch.Generator().manual_seed(0)) * 0.05
    steered = ed.apply_embedding_direction(positive, [direction], name, 1.0, 0.28, 1.0)
    records: list[str] = []

    def ksampler(conditioning):
        def go():
            noise = comfy.sample.prepare_noise(latent["samples"], 0)
            comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", conditioning, negative,
                                latent["samples"], disable_pbar=True, seed=0)
        return go

    def stg_run():
        settings = stg.STGSettings(rho=0.5, start_percent=stg.DEFAULT_START, end_percent=stg.DEFAULT_END)
        guider = guiders.make_stg_guider(model, positive, negative, cfg, decoders.vae_decoder(vae), colour, settings)
        sample_with_guider(guider, latent, 0, STEPS, "euler", "simple")
        if not records:
            records.append(f"{len(guider.guided_steps())} of {STEPS} steps guided")

    def dual_run():
        guider = dl.dual_latent_guider(model, positive, safe, negative, cfg, dl.DualLatentSettings())
        sample_with_guider(guider, latent, 0, STEPS, "euler", "simple")

    return ({"plain KSampler": ksampler(positive), "STG": stg_run, "dual latent": dual_run,
             "embedding direction": ksampler(steered)}, records)


def gradient_pass_parts(name: str, ctx: BenchContext) -> tuple[float, float]:
    """Median seconds of one forward + backward pass of the decoder and of the transformer, at the bench's size."""
    compat, decoders = pack.module("steering.comfy_compat"), pack.module("steering.decoders")
    model, vae = tiny_dit.build_model(name), tiny_dit.build_vae(name)
    decoder = decoders.vae_decoder(vae)
    positive, _, _ = prompts(name)
    latent = torch.randn(BATCH, 16, SIZE // 8, SIZE // 8)

    def decode():
        x0 = latent.clone().requires_grad_(True)
        decoder(x0, model.model).mean().backward()

    def transformer():
        context = positive[0][0].clone().requires_grad_(True)
        extra = {"y": positive[0][1]["pooled_output"], "guidance": torch.tensor([3.5])} if name == "flux" else \
            {"y": positive[0][1]["pooled_output"]}
        model.model.diffusion_model(latent, torch.tensor([0.5]), context=context, **extra).mean().backward()

    with torch.inference_mode(False), torch.enable_grad(), compat.tracked_adds_out_of_place():
        times = interleaved({"decode": decode, "transformer": transformer}, ctx.rounds, ctx)
    return tuple(sorted(times[k])[len(times[k]) // 2] for k in ("decode", "transformer"))


def run(ctx: BenchContext) -> str:
    rows = []
    facts = []
    for name in ("flux", "sd3"):
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            fns, records = variants(name)
            times = interleaved(fns, ctx.rounds, ctx)
        label = {"flux": "FLUX dev (tiny), CFG 1", "sd3": "SD3 (tiny), CFG 4.5"}[name]
        for variant in fns:
            median = sorted(times[variant])[len(times[variant]) // 2]
            rows.append([label, variant, median, 1.0 if variant == "plain KSampler"
                         else ratio(times, variant, "plain KSampler")])
        facts.append(f"{label}: STG {records[0] if records else ''}")
    ctx.notes.append(f"{SIZE}x{SIZE} px, batch {BATCH}, {STEPS} euler steps (simple scheduler); "
                     + "; ".join(facts) + "; dual latent mixes until tau_gc 0.5; the direction acts from 0.28. "
                     "FLUX at CFG 1 has no unconditional prediction, so every method's extra model call weighs "
                     "more against its single plain call than on SD3")
    decode, transformer = gradient_pass_parts("flux", ctx)
    ctx.notes.append(f"Where STG's time goes on the tiny FLUX model: one forward + backward pass of the 16-channel "
                     f"TAESD-layout VAE decoder at {SIZE} px takes {decode:.3f} s, of the transformer {transformer:.3f} s "
                     "(medians): the ratio here is mostly the differentiable decode. At real size the balance turns "
                     "(FLUX's transformer has 12 B parameters, its VAE decoder tens of millions); measuring that "
                     "needs a GPU, and none was lent")
    return table(["model", "variant", "median s", "ratio vs plain"], rows)


def facts(ctx: BenchContext) -> str:
    return (f"{ctx.device_name}; tiny in-memory FLUX dev and SD3 models (devtools.tiny_dit); "
            f"{ctx.rounds} rounds")
