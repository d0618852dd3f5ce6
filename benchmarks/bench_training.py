"""Train Steering Vector: iterations/s of each objective, and the batched rollout (all samples
of a batch in one reverse run, each stopped at its own t) against one run per sample, side by
side. Target: batched >= 3x faster at batch 8. With --full-size: SD1.5-size random weights at
512 px, batch 8, with peak GPU memory (target <= 12 GiB in fp16)."""
from __future__ import annotations

import time

import torch

from benchmarks.common import BenchContext, interleaved, ratio, table
from devtools import pack, tiny_models
from devtools.session import tiny_checkpoint_path

TITLE = "Training: iterations/s per objective, batched vs one-at-a-time rollout"


def setup(ctx: BenchContext):
    """(model, conditionings, resolution, batch, rollout_steps, iterations), all made under inference mode."""
    with torch.inference_mode():
        if ctx.full_size:
            dtype = torch.float16 if ctx.device == "cuda" else torch.float32
            model = tiny_models.build_unet_model("sd15_full", device=ctx.device, dtype=dtype)
            g = torch.Generator().manual_seed(0)
            conds = {k: [[torch.randn(1, 77, 768, generator=g), {}]] for k in ("neutral", "other", "uncond")}
            return model, conds, 512, 8, 50, 5 if ctx.device == "cuda" else 1
        import comfy.sd

        model, clip = comfy.sd.load_checkpoint_guess_config(tiny_checkpoint_path(), output_vae=False)[:2]
        texts = {"neutral": "a person", "other": "a woman", "uncond": ""}
        conds = {k: clip.encode_from_tokens_scheduled(clip.tokenize(t)) for k, t in texts.items()}
        return model, conds, 64, 8, 6, 1


def peak_memory(ctx: BenchContext) -> str:
    if ctx.device != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def reset_peak(ctx: BenchContext) -> None:
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run(ctx: BenchContext) -> str:
    loop = pack.module("training.loop")
    rollout = pack.module("training.rollout")
    unet = pack.module("training.unet")
    model, conds, resolution, batch, steps, iterations = setup(ctx)

    # 1. iterations/s of each objective (the whole loop: rollout, targets, backward, Adam)
    rows = []
    for method in ("codsma_cvector", "respodiff_ram_sam", "embedding_direction"):
        for checkpointing in ((False, True) if ctx.full_size else (False,)):
            cfg = loop.TrainConfig(method=method, iterations=iterations, batch_size=batch, resolution=resolution,
                                   rollout_steps=steps, gradient_checkpointing=checkpointing, seed=1)
            reset_peak(ctx)
            with torch.inference_mode():
                if ctx.device == "cuda":  # warm-up: kernels, allocator
                    loop.train(model, conds, loop.TrainConfig(**{**cfg.as_dict(), "iterations": 1}))
                ctx.synchronize()
                start = time.perf_counter()
                loop.train(model, conds, cfg)
                ctx.synchronize()
            elapsed = time.perf_counter() - start
            rows.append([method, "on" if checkpointing else "off", batch, f"{resolution} px", steps,
                         iterations / elapsed, peak_memory(ctx)])
    section = table(["objective", "grad. checkpointing", "batch", "size", "rollout steps", "iterations/s",
                     "peak memory"], rows)

    # 2. batched rollout vs one reverse run per sample, same stop steps, side by side
    import comfy.model_management as mm

    with torch.inference_mode():
        mm.load_models_gpu([model])
        device = model.load_device
        base = model.model
        dtype = base.manual_cast_dtype or base.get_dtype()
        latent = (batch, base.latent_format.latent_channels, resolution // 8, resolution // 8)
        with torch.inference_mode(False), unet.gradient_ready(base.diffusion_model), unet.sampling_run(model):
            caller = unet.UNetCaller(model, device, dtype, autocast=dtype != torch.float32)
            cond, uncond = (caller.prepare_prompt(conds[k], latent, k) for k in ("neutral", "uncond"))
            sigmas = rollout.schedule(caller.sampling, steps)
            g = torch.Generator().manual_seed(0)
            stop = torch.randint(0, steps, (batch,), generator=g)
            noise = torch.randn(latent, generator=g).to(device)
            offset = 0.1 * torch.randn(1280, resolution // 64, resolution // 64, generator=g).to(device)
            if tuple(offset.shape) != unet.bottleneck_shape(caller, latent, cond):
                offset = None
            variants = {
                "batched": lambda: rollout.batched_rollout(caller, noise, sigmas, stop, cond, uncond, 3.0,
                                                           offset=offset),
                "one run per sample": lambda: rollout.sequential_rollout(caller, noise, sigmas, stop, cond, uncond,
                                                                         3.0, offset=offset),
            }
            rounds = max(1, ctx.rounds // (2 if not ctx.full_size else 1))
            times = interleaved(variants, rounds, ctx, warmup=0 if not ctx.full_size else 1)
    speedup = ratio(times, "one run per sample", "batched")
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    section += "\n\n" + table(
        ["rollout", "batch", "stop steps", "median s", "speed-up"],
        [["batched", batch, str(stop.tolist()), med["batched"], speedup],
         ["one run per sample", batch, str(stop.tolist()), med["one run per sample"], 1.0]])
    ctx.notes.append(f"{'SD1.5-size random weights' if ctx.full_size else 'tiny checkpoint'}, {resolution} px, "
                     f"CFG-3 DDIM rollout of {steps} steps, target speed-up >= 3x at batch 8"
                     + ("; fp16 weights + autocast" if ctx.device == "cuda" and ctx.full_size else ""))
    return section
