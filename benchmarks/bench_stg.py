"""STG vs a plain KSampler run from the same seed: wall-time ratio at the README window
(steps 5-45 of 50, i.e. 0.1-0.9 of the schedule) with every image guided on every window
step (worst case). Target on GPU: <= 2.5x. Also peak GPU memory on CUDA."""
from __future__ import annotations

import torch

from benchmarks.common import BenchContext, interleaved, random_sd_vae, random_taesd_decoder, ratio, table
from devtools import pack, tiny_models
from devtools.session import tiny_checkpoint_path

TITLE = "STG: sampling wall time relative to a plain KSampler run"


def models(ctx: BenchContext):
    """(model, vae, positive, negative, size, batch, steps) on the tiny checkpoint or SD1.5-size random weights."""
    if ctx.full_size:
        dtype = torch.float16 if ctx.device == "cuda" else torch.float32
        model = tiny_models.build_unet_model("sd15_full", device=ctx.device, dtype=dtype)
        vae = random_sd_vae(ctx.device, dtype)
        g = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.randn(1, 77, 768, generator=g), {}]]
        size, batch, steps = (512, 4, 50) if ctx.device == "cuda" else (64, 1, 10)
        return model, vae, positive, negative, size, batch, steps
    import comfy.sd
    import nodes

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(tiny_checkpoint_path())[:3]
    encode = nodes.CLIPTextEncode()
    return model, vae, encode.encode(clip, "a photo of a person")[0], encode.encode(clip, "")[0], 64, 1, 10


def run(ctx: BenchContext) -> str:
    import comfy.model_management
    import comfy.samplers

    stg, decoders = pack.module("steering.stg"), pack.module("steering.decoders")
    guiders = pack.module("steering.guiders")
    sample_with_guider = pack.module("steering.guidance").sample_with_guider
    ColourStatisticScore = pack.module("steering.safety").ColourStatisticScore
    nudenet = pack.module("steering.safety.nudenet")
    LABELS, NudeNetScore = nudenet.LABELS, nudenet.NudeNetScore

    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        model, vae, positive, negative, size, batch, steps = models(ctx)
    latent = {"samples": torch.zeros(batch, 4, size // 8, size // 8)}
    # every image counts as unsafe on every window step: the worst case
    nudity = NudeNetScore(LABELS, detection_threshold=0.0, threshold=-1.0)
    colour = ColourStatisticScore("brightness", threshold=-10.0)

    def plain():  # the stock KSampler's guider through the same sampling call
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(7.5)
        sample_with_guider(guider, latent, 0, steps, "euler", "normal")

    def guided(score, autocast="none", decoder=None, update_ratio=1.0):
        settings = stg.STGSettings(rho=0.5, start_percent=stg.DEFAULT_START, end_percent=stg.DEFAULT_END,
                                   autocast=autocast, update_ratio=update_ratio)

        def go():
            guider = guiders.make_stg_guider(model, positive, negative, 7.5, decoder or decoders.VAEDecoder(vae), score,
                                             settings)
            sample_with_guider(guider, latent, 0, steps, "euler", "normal")
            go.guided = sum(r.guided for r in guider.records)
        return go

    variants = {"plain KSampler": plain, "STG, NudeNet score": guided(nudity)}
    if ctx.full_size:
        taesd = decoders.TAESDDecoder(random_taesd_decoder(ctx.device, vae.vae_dtype))
        variants["STG, NudeNet score, TAESD decode"] = guided(nudity, decoder=taesd)
        variants["STG, NudeNet score, update ratio 0.5"] = guided(nudity, update_ratio=0.5)
    else:
        variants["STG, colour score"] = guided(colour)
    if ctx.device == "cuda":
        variants["STG, NudeNet score, fp16 autocast"] = guided(nudity, "fp16")
    with torch.inference_mode():
        times = interleaved(variants, ctx.rounds, ctx)
    peaks = {}
    if ctx.device == "cuda":
        for name, fn in variants.items():
            comfy.model_management.soft_empty_cache()
            torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode():
                fn()
            peaks[name] = torch.cuda.max_memory_allocated() / 2 ** 30
    rows = []
    base = "plain KSampler"
    for name in variants:
        med = sorted(times[name])[len(times[name]) // 2]
        row = [name, med, ratio(times, name, base) if name != base else 1.0]
        if peaks:
            row.append(peaks[name])
        rows.append(row)
    guided_steps = getattr(variants["STG, NudeNet score"], "guided", "?")
    ctx.notes.append(f"{size}x{size} px, batch {batch}, {steps} euler steps, CFG 7.5; STG window 0.1-0.9 "
                     f"({guided_steps} of {steps} steps guided, every image updated), full VAE decode unless noted; "
                     "target ratio <= 2.5 on GPU")
    headers = ["variant", "median s", "ratio vs plain"] + (["peak GiB"] if peaks else [])
    return table(headers, rows)
