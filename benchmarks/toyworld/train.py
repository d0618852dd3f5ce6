"""Train ToyWorld (or ToyWorld-SD: --world toyworld_sd) from scratch, reproducibly (CPU, fixed seed).

    .venv/bin/python -m benchmarks.toyworld.train [--world toyworld] [--steps 8000] [--seed 0] [--threads 2] [--out PATH]

Data are drawn on the fly from world.py with a seeded generator; the UNet (ComfyUI's own
UNetModel inside comfy.model_base.BaseModel) and the text encoder are trained jointly with
the v-prediction loss on ComfyUI's discrete schedule (target (eps - sigma x0) / sqrt(1 + sigma^2),
the output ComfyUI's V_PREDICTION model sampling turns back into x0); the EMA weights are
written (atomically) as safetensors with the settings in the metadata. A run's weights are
bit-reproducible for the same seed and thread count (both recorded in the metadata); the
committed weights took 8000 steps with 2 threads (~30 min on a 2-core CPU). A world's model module
may store its weights in a smaller dtype (``WEIGHTS_DTYPE``; ToyWorld-SD: float16, as SD checkpoints are
shipped); training always runs in float32.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch

from devtools import pure

HERE = os.path.dirname(os.path.abspath(__file__))


WORLDS = ("toyworld", "toyworld_sd")  # the pack's demo-world packages


def save(path: str, unet, text, metadata: dict, dtype: torch.dtype = torch.float32) -> None:
    from safetensors.torch import save_file

    def stored(v: torch.Tensor) -> torch.Tensor:
        return v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().clone()

    state = {f"unet.{k}": stored(v) for k, v in unet.state_dict().items()}
    state.update({f"text.{k}": stored(v) for k, v in text.state_dict().items()})
    with pure.module("steering.files").atomic_file(path, suffix=".safetensors") as tmp:
        save_file(state, tmp, metadata={k: str(v) for k, v in metadata.items()})


def v_prediction_pair(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the UNet's input, its v-prediction target) for clean latents `x0` noised by `noise` at `sigma`, scaled as
    ComfyUI's V_PREDICTION model sampling expects."""
    return (x0 + sigma * noise) / torch.sqrt(sigma * sigma + 1), (noise - sigma * x0) / torch.sqrt(sigma * sigma + 1)


def train(steps: int, seed: int, out: str, batch: int = 32, lr: float = 1e-3, ema_decay: float = 0.999,
          log_every: int = 100, checkpoint_every: int = 250, stop_after: int | None = None, threads: int = 1,
          keep_snapshots: bool = False, world_package: str = "toyworld") -> None:
    """Train for `steps` (the learning-rate schedule's length), optionally stopping after `stop_after`
    steps; the EMA weights are written every `checkpoint_every` steps (metadata trained_steps), and
    with `keep_snapshots` also to ``<out>.step<N>.safetensors`` (to compare training lengths)."""
    from devtools import comfy_env

    comfy_env.setup()
    from benchmarks.toyworld import pack_toyworld

    M, world = pack_toyworld("model", world_package), pack_toyworld("world", world_package)
    dtype = getattr(M, "WEIGHTS_DTYPE", torch.float32)

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    base = M.build_base_model()
    unet = base.diffusion_model
    M.init_weights(unet, seed)
    unet.train()
    text = M.TextEncoder()
    unet_parameters, text_parameters = (sum(p.numel() for p in m.parameters()) for m in (unet, text))
    params = list(unet.parameters()) + list(text.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / steps))))
    sigmas = base.model_sampling.sigmas
    metadata = {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "ema_decay": ema_decay,
                "threads": threads, "script": "benchmarks/toyworld/train.py", "unet_config": json.dumps(M.UNET_CONFIG),
                "prediction": "v", "zero_terminal_snr": json.dumps(bool(base.model_sampling.zsnr))}
    if world_package != "toyworld":  # ToyWorld's committed metadata predates these keys
        metadata.update({"world": world_package, "unet_parameters": unet_parameters,
                         "text_parameters": text_parameters, "weights_dtype": str(dtype).removeprefix("torch.")})
    start, running = time.time(), 0.0

    def write(at_step: int):
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
        at = {"trained_steps": at_step, **({} if world_package == "toyworld" else
                                             {"training_seconds": round(time.time() - start)})}
        save(out, unet, text, {**metadata, **at}, dtype)
        if keep_snapshots:
            save(f"{os.path.splitext(out)[0]}.step{at_step}.safetensors", unet, text, {**metadata, **at}, dtype)
        with torch.no_grad():
            for p, v in zip(params, live):
                p.copy_(v)

    for step in range(1, steps + 1):
        images, tokens = world.make_batch(batch, rng)
        x0 = M.encode_images(images)
        t = torch.randint(0, len(sigmas), (batch,))
        sigma = sigmas[t].view(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        x_in, target = v_prediction_pair(x0, noise, sigma)
        pred = unet(x_in, t.float(), context=text(tokens))
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        running += float(loss.detach())
        if step % log_every == 0:
            print(f"step {step}/{steps} loss {running / log_every:.4f} {time.time() - start:.0f}s", flush=True)
            running = 0.0
        if step % checkpoint_every == 0 or step == steps or step == stop_after:
            write(step)
        if step == stop_after:
            break
    print(f"wrote {out} after {time.time() - start:.0f}s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=WORLDS, default="toyworld", help="which demo world to train")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (part of what reproduces a run)")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--keep-snapshots", action="store_true",
                        help="also keep the EMA weights of every checkpoint as <out>.step<N>.safetensors")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this many steps (the schedule stays that of --steps)")
    parser.add_argument("--out", default=None, help="default: the world's committed weights file")
    args = parser.parse_args(argv)
    out = args.out or os.path.normpath(os.path.join(HERE, "..", "..", args.world, f"{args.world}.safetensors"))
    train(args.steps, args.seed, out, batch=args.batch, stop_after=args.stop_after, threads=args.threads,
          checkpoint_every=args.checkpoint_every, keep_snapshots=args.keep_snapshots, world_package=args.world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
