"""Real size without a GPU: time per step against the plain sampler, and peak memory, of every method at SD1.5
and SDXL size.

    .venv/bin/python -m benchmarks.run real_size [--device cuda]                 # the table, into RESULTS.md
    .venv/bin/python -m benchmarks.bench_real_size --model sd15 [--only NAME ...] # one model, printed
    .venv/bin/python -m benchmarks.bench_real_size --model sdxl --keep          # one model again, kept for --table
    .venv/bin/python -m benchmarks.bench_real_size --table                      # the section again, from the kept results

Models: random-weight UNets of ComfyUI's own configs (devtools.tiny_models.comfy_table_config: SD1.5 860 M, SDXL
2.6 B parameters), the full SD VAE (ComfyUI's default SD VAE config, 83.6 M; SDXL's VAE has the same layout) and
ComfyUI's TAESD decoder with random weights, and the real NudeNet detector (the nudenet package's 320n.onnx).
Random weights give the real shapes, so the real memory and the real cost ratios; the images are noise. The score
flags every image or none by its threshold (NudeNet, all 18 labels, detections above confidence 0; unsafe above
-1, or above 1e6). Attention: PyTorch's scaled_dot_product_attention in the UNet and the VAE, as ComfyUI attends
on NVIDIA GPUs (on a CPU it would pick its sub-quadratic attention).

Each model runs in a process of its own. Its variants run once each, in a fixed order, after a warm-up step, each
right after one plain step of its own: a ratio is against that neighbouring plain step (the speed of a shared
machine drifts within a run: the plain step took 18.4 s in one run here and 11.2 s in the next).
Time: every model evaluation of a sampling run is timed (the guider's predict_noise), so a figure is per
sampling step (CFG: one conditional and one unconditional prediction), without the run's set-up; STG with every
image flagged is given at its steady state (the steps after its first guided step, which also scores every
image before its first gradient pass; that step is in the note); training: per iteration, against a plain step
per image. Memory: the peak of the whole run over what was resident before it (the weights, ComfyUI, Python):
on a CPU the high-water mark of the resident set (reset through /proc/self/clear_refs after freed heap memory is
handed back with malloc_trim), on CUDA ``torch.cuda.max_memory_allocated`` over the allocation before the run.
Precision: fp32 on a CPU, whose bf16 is emulated here (an SD1.5 UNet forward at 256 px took 20x as long under
bf16 autocast as in fp32), fp32 and fp16 (weights and autocast, as ComfyUI runs a GPU) on CUDA. Under fp16/bf16
every kept activation is at most as large as in fp32, so the fp32 peaks bound the half-precision ones.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from benchmarks.common import BenchContext, random_sd_vae, random_taesd_decoder, table
from devtools import comfy_env, pure

TITLE = "Real size: time per step and peak memory of every method, SD1.5 and SDXL"
DEVICES = ("cpu", "cuda")
GIB = 2 ** 30
CFG = 7.5
# A process of this benchmark stops (exit 3) when its resident set passes this (the CPU machines are shared).
RSS_CAP = float(os.environ.get("RS_BENCH_RSS_CAP_GIB", "20")) * GIB


@dataclass(frozen=True)
class ModelSpec:
    unet: str                   # devtools.tiny_models.UNET_CONFIGS name
    label: str
    size: int                   # px
    context: int                # text embedding width
    pooled: int | None          # pooled text vector (SDXL)
    train_batch: int            # Train Steering Vector's batch
    precisions: tuple[str, ...]
    skip: tuple[str, ...] = ()  # variants not run (their names), with the reason in `why`
    why: str = ""
    note: str = ""
    plain_steps: int = 2        # steps of the plain KSampler row
    vae_flagged_steps: int = 2  # steps of the STG runs with every image flagged and the VAE decoder
    taesd_flagged_steps: int = 2  # ... and the TAESD decoder
    calibrate: bool = True      # the parts of STG's gradient pass alone (calibration of the memory check)
    calibrate_vae: bool = True  # ... the VAE decoder's among them


def specs(device: str) -> dict[str, ModelSpec]:
    """What each model runs on `device`: the reference sizes and batches on CUDA; on this benchmark's CPU
    machines (2 cores, 15 GiB per process) what one hour and the memory allow."""
    if device == "cuda":
        return {"sd15": ModelSpec("sd15_full", "SD1.5", 512, 768, None, 8, ("fp32", "half")),
                "sdxl": ModelSpec("sdxl_full", "SDXL", 1024, 2048, 1280, 8, ("fp32", "half"))}
    return {
        "sd15": ModelSpec("sd15_full", "SD1.5", 512, 768, None, 8, ("fp32",), vae_flagged_steps=1,
                          calibrate_vae=False,
                          note="Train Steering Vector at its reference batch, 8; STG with every image flagged and "
                               "the VAE decoder for one step (its forward and backward at 512 px cost more than "
                               "two UNet steps here), so its time is that of a first guided step (which also "
                               "decodes and scores the image without a graph before its gradient pass)"),
        "sdxl": ModelSpec("sdxl_full", "SDXL", 1024, 2048, 1280, 1, ("fp32",), calibrate_vae=False, calibrate=False,
                          plain_steps=1, taesd_flagged_steps=1,
                          skip=("Apply Embedding Direction", "Apply h-space Vector", "Dual latent, tau_gc 0.5 (f 0.5)",
                                "STG, nothing flagged, VAE", "STG, nothing flagged, TAESD",
                                "STG, every image flagged, VAE, no checkpointing",
                                "STG, every image flagged, VAE, checkpointing",
                                "STG, every image flagged, TAESD, no checkpointing",
                                "Train Steering Vector, codsma_cvector", "Train Steering Vector, respodiff_ram_sam"),
                          why="an hour of this CPU: one SDXL step at 1024 px takes 95-115 s here and one full VAE "
                              "decode 90-105 s (so STG without a flag and with the VAE is given from its parts); the "
                              "apply nodes and dual latent steer each UNet call as at SD1.5 size, and SD1.5's rows "
                              "show the other STG and training variants",
                          note="one step per variant (STG with every image flagged: its first guided step, which "
                               "also decodes and scores the image without a graph before its gradient pass); Train "
                               "Steering Vector at batch 1"),
    }


# ---------------------------------------------------------------------------------------------- measuring

def release_memory(device: str) -> None:
    """Free what Python and torch hold but no longer use, and hand freed heap memory back to the system."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status(name: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(name + ":"))


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (nothing to wait for on a CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def resident(device: str) -> int:
    return torch.cuda.memory_allocated() if device == "cuda" else _status("VmRSS")


def measured(fn: Callable[[], object], device: str) -> tuple[float, int, object]:
    """(wall seconds, peak bytes over what was resident before, result) of one call of fn."""
    release_memory(device)
    before = resident(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the resident set's high-water mark (VmHWM) starts again from the current resident set
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status("VmHWM")
    return wall, max(0, peak - before), result


def watch_rss(cap: float) -> None:
    """Stop this process (exit 3) as soon as its resident set passes `cap` bytes."""
    def watch():
        while True:
            if _status("VmRSS") > cap:
                print(f"resident set above {cap / GIB:.1f} GiB: stopped", flush=True)
                os._exit(3)
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()


class EvaluationTimer:
    """Times every model evaluation of a guider (its predict_noise)."""

    def __init__(self, guider, device: str):
        self.seconds: list[float] = []
        inner = guider.predict_noise

        def timed(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            synchronize(device)
            self.seconds.append(time.perf_counter() - start)
            return out

        guider.predict_noise = timed


# ---------------------------------------------------------------------------------------------- models

@dataclass
class Models:
    spec: ModelSpec
    device: str
    dtype: torch.dtype
    model: object
    vae: object
    taesd: torch.nn.Module
    positive: list
    negative: list
    safe: list

    def latent(self, batch: int = 1) -> dict:
        return {"samples": torch.zeros(batch, 4, self.spec.size // 8, self.spec.size // 8)}


def build(spec: ModelSpec, device: str, dtype: torch.dtype) -> Models:
    """The UNet, VAE, TAESD and prompts, made under inference mode as ComfyUI's executor makes them."""
    from devtools import tiny_models

    g = torch.Generator().manual_seed(0)

    def prompt():
        extra = {} if spec.pooled is None else {"pooled_output": torch.randn(1, spec.pooled, generator=g)}
        return [[torch.randn(1, 77, spec.context, generator=g), extra]]

    with torch.inference_mode():
        model = tiny_models.build_unet_model(spec.unet, device=device, dtype=dtype)
        vae = random_sd_vae(device, dtype)
        positive, negative, safe = prompt(), prompt(), prompt()
    taesd = random_taesd_decoder(device, dtype)
    return Models(spec, device, dtype, model, vae, taesd, positive, negative, safe)


# ---------------------------------------------------------------------------------------------- variants

@dataclass
class Outcome:
    seconds: list[float] = field(default_factory=list)    # per model evaluation (sampling) or [wall] (training)
    note: str = ""
    steady_from: int = 0                                   # the evaluations that give the per-step figure


# One plain step, run right before each variant (not a row of the table).
NEIGHBOUR = "plain KSampler, the step before a variant"


@dataclass
class Variant:
    name: str
    run: Callable[[], Outcome]
    unit: str = "step"          # "step" (sampling) or "iteration" (training)
    batch: int = 1


def variants(m: Models, half: bool) -> list[Variant]:
    import comfy.samplers

    from devtools import pack

    stg = pack.module("steering.stg")
    guiders = pack.module("steering.guiders")
    decoders = pack.module("steering.decoders")
    guidance = pack.module("steering.guidance")
    nudenet = pack.module("steering.safety.nudenet")
    dual = pack.module("steering.dual_latent")
    ed = pack.module("steering.embedding_direction")
    hspace = pack.module("steering.hspace")
    loop = pack.module("training.loop")
    spec = m.spec
    arch = "sdxl" if spec.pooled else "sd1"
    autocast = "fp16" if half else "none"

    def sample(guider_fn, steps: int, note=None, steady_from: int = 0):
        def go() -> Outcome:
            guider = guider_fn()
            timer = EvaluationTimer(guider, m.device)
            with torch.inference_mode():
                guidance.sample_with_guider(guider, m.latent(), 0, steps, "euler", "normal")
            return Outcome(timer.seconds, note(guider) if note else "", steady_from)
        return go

    def cfg_guider(model=None, positive=None):
        guider = comfy.samplers.CFGGuider(model or m.model)
        guider.set_conds(positive or m.positive, m.negative)
        guider.set_cfg(CFG)
        return guider

    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        direction = torch.randn(77, spec.context, generator=g) * 0.1
        steered = ed.apply_embedding_direction(m.positive, [direction], arch, 1.0, 0.0, 1.0)
        offsets = torch.randn(1, 1280, spec.size // 64, spec.size // 64, generator=g)
        hspace_model = hspace.patch_model_with_offsets(m.model, offsets, 1.0, 0.0, 1.0)
    flag_all = nudenet.NudeNetScore(nudenet.LABELS, detection_threshold=0.0, threshold=-1.0)
    flag_none = nudenet.NudeNetScore(nudenet.LABELS, detection_threshold=0.0, threshold=1e6)
    vae = decoders.VAEDecoder(m.vae)
    taesd = decoders.TAESDDecoder(m.taesd)

    def stg_note(guider) -> str:
        passes = sum(len(r.gradient_images) for r in guider.records)
        return f"{sum(r.guided for r in guider.records)} guided steps, {passes} image gradient passes"

    def stg_run(score, decoder, screen=None, checkpointing=False, steps=1):
        settings = stg.STGSettings(rho=0.5, start_percent=0.0, end_percent=1.0, autocast=autocast,
                                   gradient_checkpointing=checkpointing)
        flagged = score is flag_all
        return sample(lambda: guiders.make_stg_guider(m.model, m.positive, m.negative, CFG, decoder, score, settings, screen),
                      steps, stg_note, steady_from=1 if flagged else 0)

    out = [
        Variant("plain KSampler", sample(cfg_guider, spec.plain_steps)),
        Variant("Apply Embedding Direction", sample(lambda: cfg_guider(positive=steered), 1)),
        Variant("Apply h-space Vector", sample(lambda: cfg_guider(model=hspace_model), 1)),
        Variant("Dual latent, tau_gc 0.5 (f 0.5)", sample(lambda: dual.dual_latent_guider(
            m.model, m.positive, m.safe, m.negative, CFG, dual.DualLatentSettings(0.75, 0.25, 0.5)), 2)),
        Variant("STG, nothing flagged, VAE", stg_run(flag_none, vae)),
        Variant("STG, nothing flagged, VAE, TAESD screen", stg_run(flag_none, vae, screen=taesd)),
        Variant("STG, nothing flagged, TAESD", stg_run(flag_none, taesd)),
        Variant("STG, every image flagged, VAE, no checkpointing", stg_run(flag_all, vae,
                                                                           steps=spec.vae_flagged_steps)),
        Variant("STG, every image flagged, VAE, checkpointing", stg_run(flag_all, vae, checkpointing=True,
                                                                        steps=spec.vae_flagged_steps)),
        Variant("STG, every image flagged, TAESD, no checkpointing", stg_run(flag_all, taesd,
                                                                             steps=spec.taesd_flagged_steps)),
        Variant("STG, every image flagged, TAESD, checkpointing", stg_run(flag_all, taesd, checkpointing=True,
                                                                          steps=spec.taesd_flagged_steps)),
    ]
    b = spec.train_batch
    conds = {"neutral": m.positive, "other": m.safe, "uncond": m.negative}
    for method in ("embedding_direction", "codsma_cvector", "respodiff_ram_sam"):
        cfg = loop.TrainConfig(method=method, iterations=1, batch_size=b, resolution=spec.size, rollout_steps=2,
                               gradient_checkpointing=True, checkpoint_every=1000, seed=1)

        def train(cfg=cfg) -> Outcome:
            start = time.perf_counter()
            with torch.inference_mode():
                loop.train(m.model, conds, cfg)
            return Outcome([time.perf_counter() - start], "gradient checkpointing on (the node's default)")
        out.append(Variant(f"Train Steering Vector, {method}", train, unit="iteration", batch=b))
    out.append(Variant(NEIGHBOUR, sample(cfg_guider, 1)))
    return [v for v in out if v.name not in spec.skip]


def calibration(m: Models) -> list[dict]:
    """Peak memory of the parts of STG's gradient pass alone, at one image, for steering.gradient_memory: the UNet's
    conditional forward + backward to the text embedding, and each decoder's forward + backward to its latent,
    without and with gradient checkpointing."""
    import comfy.model_management

    from devtools import pack

    checkpointing = pack.module("steering.checkpointing")
    autograd_views = pack.module("steering.autograd_views")
    base = m.model.model
    size = m.spec.size // 8
    rows = []
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([m.model])
    x = torch.randn(1, 4, size, size, device=m.device)
    sigma = torch.full((1,), 5.0, device=m.device)
    context = m.positive[0][0].to(m.device).clone()
    extra = {}
    if m.spec.pooled:
        extra["y"] = torch.randn(1, 2816, device=m.device)
    parts = {"UNet": (base.diffusion_model, lambda c: base.apply_model(x, sigma, c_crossattn=c, **extra)),
             "VAE decoder": (m.vae.first_stage_model, lambda z: m.vae.first_stage_model.decode(z)),
             "TAESD decoder": (m.taesd, lambda z: m.taesd(z))}
    if not m.spec.calibrate_vae:
        del parts["VAE decoder"]
    for name, (module, forward) in parts.items():
        for ckpt in (False, True):
            if m.device != "cuda" and m.spec.skip and not ckpt:
                continue  # the memory cap of CPU machines (see the spec's skip)

            def go(module=module, forward=forward, ckpt=ckpt):
                with autograd_views.autograd_views(module), checkpointing.gradient_checkpointing(module,
                                                                                               enabled=ckpt):
                    if name == "UNet":
                        leaf = context.detach().clone()
                    else:
                        leaf = torch.randn(1, 4, size, size, device=m.device, dtype=m.dtype)
                    leaf.requires_grad_(True)
                    out = forward(leaf)
                    torch.autograd.grad(out.float().square().mean(), leaf)
            wall, peak, _ = measured(go, m.device)
            rows.append({"part": name, "checkpointing": ckpt, "peak": peak, "seconds": wall,
                         "latent_pixels": size * size, "dtype_bytes": torch.empty((), dtype=m.dtype).element_size(),
                         "usage_factor": float(base.memory_usage_factor)})
            print(f"  calibration {m.spec.label} {name} checkpointing {ckpt}: +{peak / GIB:.2f} GiB, {wall:.1f} s",
                  flush=True)
    return rows


def parameter_counts(m: Models) -> dict[str, int]:
    """Parameters of the UNet, the VAE and TAESD (their weights on a GPU: 2 bytes each in fp16)."""
    modules = {"UNet": m.model.model.diffusion_model, "VAE": m.vae.first_stage_model, "TAESD": m.taesd}
    return {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}


def parts(m: Models) -> dict[str, float]:
    """Seconds of one image's decode by each decoder and of one NudeNet score, without a graph (what STG adds to
    a plain step for an image it does not guide: the decode and the score), each the best of two (of one where the
    first took over 10 s: a part that long has no first-call overhead worth a second run)."""
    from devtools import pack

    decoders = pack.module("steering.decoders")
    nudenet = pack.module("steering.safety.nudenet")
    score = nudenet.NudeNetScore(nudenet.LABELS, detection_threshold=0.0, threshold=1e6)
    size = m.spec.size // 8
    x0 = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(2)).to(m.device)
    base = m.model.model
    found = {}
    with torch.inference_mode():
        image = decoders.TAESDDecoder(m.taesd)(x0, base)
        for name, fn in (("VAE decode", lambda: decoders.VAEDecoder(m.vae)(x0, base)),
                         ("TAESD decode", lambda: decoders.TAESDDecoder(m.taesd)(x0, base)),
                         ("NudeNet score", lambda: score.scores(image))):
            times = []
            while len(times) < 2 and not (times and times[0] > 10.0):
                start = time.perf_counter()
                fn()
                synchronize(m.device)
                times.append(time.perf_counter() - start)
            found[name] = min(times)
            print(f"  part {m.spec.label} {name}: {found[name]:.2f} s", flush=True)
    return found


# ---------------------------------------------------------------------------------------------- one model

def run_model(key: str, device: str, only: list[str] | None, out_path: str | None, size: int = 0) -> dict:
    """Every variant of one model in each of its precisions; written to `out_path` after each variant. `size`: another
    image size (a quick check of the benchmark itself)."""
    import dataclasses

    import comfy.model_management
    import comfy.samplers

    from devtools import pack

    memory = pack.module("steering.gradient_memory")
    training_memory_error = pack.module("training.loop").TrainingMemoryError
    spec = specs(device)[key]
    if size:
        spec = dataclasses.replace(spec, size=size)
    results: dict = {"model": key, "label": spec.label, "size": spec.size, "train_batch": spec.train_batch,
                     "skip": list(spec.skip), "why": spec.why, "note": spec.note, "precisions": {}}

    def save():
        if out_path:
            pure.module("steering.files").write_atomically(out_path, json.dumps(results).encode())

    for precision in spec.precisions:
        dtype = torch.float32 if precision == "fp32" else torch.float16
        start = time.perf_counter()
        m = build(spec, device, dtype)
        block = results["precisions"][precision] = {"build_s": time.perf_counter() - start, "rows": [],
                                                    "resident": resident(device)}
        chosen = variants(m, precision != "fp32")
        with torch.inference_mode():
            comfy.model_management.load_models_gpu([m.model, m.vae.patcher])
        torch.manual_seed(0)
        sample_with_guider = pack.module("steering.guidance").sample_with_guider
        warm = comfy.samplers.CFGGuider(m.model)
        warm.set_conds(m.positive, m.negative)
        warm.set_cfg(CFG)
        with torch.inference_mode():
            sample_with_guider(warm, m.latent(), 0, 1, "euler", "normal")  # warm-up step: kernels, allocator
        block["parts"] = parts(m)
        block["parameters"] = parameter_counts(m)
        save()
        if spec.calibrate and (not only or any("calibration" in o for o in only)):
            block["calibration"] = calibration(m)   # before the variants: a run the memory cap stops keeps it
            save()
        neighbour = next(v for v in chosen if v.name == NEIGHBOUR)
        for v in chosen:
            if v is neighbour or (only and v.name != "plain KSampler"
                                  and not any(o.lower() in v.name.lower() for o in only)):
                continue
            # a plain step again right before each variant: a shared machine's speed drifts within a run, so each
            # ratio is against the plain step next to it
            near = None if v.name == "plain KSampler" else statistics.mean(neighbour.run().seconds)
            try:
                wall, peak, outcome = measured(v.run, device)
            except (memory.STGMemoryError, training_memory_error, torch.OutOfMemoryError) as e:
                # a memory check refused the run, or the device ran out: that is the result
                block["rows"].append({"variant": v.name, "unit": v.unit, "batch": v.batch, "refused": str(e)})
                save()
                print(f"  {spec.label} {precision} {v.name}: refused: {e}", flush=True)
                continue
            steady = outcome.seconds[outcome.steady_from:] or outcome.seconds
            row = {"variant": v.name, "unit": v.unit, "batch": v.batch, "wall": wall, "peak": peak,
                   "per_unit": statistics.mean(steady), "first": outcome.seconds[0], "evaluations": outcome.seconds,
                   "note": outcome.note, "plain_near": near}
            block["rows"].append(row)
            save()
            print(f"  {spec.label} {precision} {v.name}: {row['per_unit']:.2f} s/{v.unit}, +{peak / GIB:.2f} GiB "
                  f"{outcome.note}", flush=True)
        del m, chosen
        comfy.model_management.unload_all_models()
        release_memory(device)
    return results


def child(argv=None) -> int:
    parser = argparse.ArgumentParser(description="one model of the real-size benchmark")
    parser.add_argument("--model", choices=("sd15", "sdxl"))
    parser.add_argument("--table", action="store_true",
                        help="write the section of RESULTS.md again from the kept results of the last run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--only", nargs="*", help="variants whose name contains one of these (and the plain sampler); "
                                                  "'calibration' for the calibration rows")
    parser.add_argument("--json", help="write the results here (after every variant)")
    parser.add_argument("--keep", action="store_true",
                        help="run --model as the whole benchmark runs it and keep its results for --table (the "
                             "other model's kept results stay)")
    parser.add_argument("--size", type=int, default=0, help="another image size, to check the benchmark quickly")
    args = parser.parse_args(argv)
    if args.table:
        from benchmarks import run as bench_run

        ctx = BenchContext(args.device, False, 1)
        key, text = bench_run.section("real_size", sys.modules[__name__], ctx, render(ctx))
        bench_run.write_section(key, text)
        print(text)
        return 0
    if args.model is None:
        parser.error("--model is required (or --table)")
    if args.keep:
        run_and_keep(args.model, args.device)
        return 0
    from benchmarks.common import setup_comfy

    setup_comfy(args.device)
    from comfy.cli_args import args as comfy_args

    comfy_args.use_pytorch_cross_attention = True  # PyTorch's attention, as ComfyUI attends on NVIDIA GPUs
    import comfy.model_management

    if not comfy.model_management.pytorch_attention_enabled():
        raise RuntimeError("ComfyUI's model management was imported before PyTorch attention could be chosen")
    if args.device == "cpu":
        watch_rss(RSS_CAP)
    found = run_model(args.model, args.device, args.only, args.json, args.size)
    if not args.json:
        print(json.dumps(found, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------- the table

def plain_step(block: dict, row: dict | None = None) -> float:
    """Seconds of a plain step: the ones measured right before `row` where there are, else the plain row's."""
    if row is not None and row.get("plain_near"):
        return row["plain_near"]
    return next(r["per_unit"] for r in block["rows"] if r["variant"] == "plain KSampler")


def rows_of(found: dict) -> list[list]:
    out = []
    for precision, block in found["precisions"].items():
        for r in block["rows"]:
            if "refused" in r:
                out.append([f"{found['label']} {found['size']} px", precision, r["variant"], "-", "-", "-",
                            f"not run: {r['refused']}"])
                continue
            ratio = r["per_unit"] / (plain_step(block, r) * r["batch"])
            note = r["note"]
            if r["variant"].startswith("STG, every image flagged"):
                note += f"; first guided step {r['first']:.1f} s"
            if r["unit"] == "iteration":
                note = f"batch {r['batch']}; " + note
            out.append([f"{found['label']} {found['size']} px", precision, r["variant"],
                        f"{r['per_unit']:.1f} s/{r['unit']}", f"{ratio:.2f}x", f"{r['peak'] / GIB:.2f}", note])
    return out


def calibration_rows(found: dict) -> list[list]:
    out = []
    for precision, block in found["precisions"].items():
        for c in block.get("calibration", []):
            out.append([found["label"], f"{found['size']} px", c["part"], "on" if c["checkpointing"] else "off",
                        f"{c['peak'] / GIB:.2f}", f"{c['seconds']:.1f}"])
    return out


# The targets (ratios against the plain sampler in the same run; peaks in GiB).
RATIO_TARGETS = [
    ("Apply Embedding Direction", 1.02), ("Apply h-space Vector", 1.02),
    ("Dual latent, tau_gc 0.5 (f 0.5)", 1.0 + 0.6 * 0.5),
    ("STG, nothing flagged, VAE", 1.3), ("STG, nothing flagged, VAE, TAESD screen", 1.3),
    ("STG, nothing flagged, TAESD", 1.1),
    ("STG, every image flagged, VAE, no checkpointing", 2.5), ("STG, every image flagged, VAE, checkpointing", 2.5),
    ("STG, every image flagged, TAESD, no checkpointing", 2.5), ("STG, every image flagged, TAESD, checkpointing", 2.5),
]
# STG's settings for 8 GB cards (the node's help): TAESD decoder, gradient checkpointing.
STG_8GB = "STG, every image flagged, TAESD, checkpointing"
TRAIN_TARGETS = {"embedding_direction": 4.0, "codsma_cvector": 12.0, "respodiff_ram_sam": 12.0}
TRAIN_REFERENCE_BATCH = 8


def _row(block: dict, variant: str) -> dict | None:
    return next((r for r in block["rows"] if r["variant"] == variant and "refused" not in r), None)


def _verdict(value: float, limit: float, unit: str) -> str:
    if value <= limit:
        return "met"
    by = value - limit
    return f"missed by {by:.2f}{unit} ({value / limit:.2f}x the target)" if by >= 0.01 else f"missed by {by:.3f}{unit}"


def _unflagged_cost(plain: float, decoder: str, decode: float, score: float) -> str:
    """What STG adds to a plain step for an image it does not guide, spelled out."""
    return (f"the plain step ({plain:.1f} s) + one {decoder} decode ({decode:.1f} s) + one NudeNet score "
            f"({score:.1f} s) per image")


def target_rows(found: dict) -> list[list]:
    """[target, measured, verdict, where it goes] for one model's fp32 block: the issue's ratio targets, STG's peak
    on an 8 GB card and training's at its reference batch, each with what the time or memory goes to."""
    block = found["precisions"].get("fp32")
    if not block or not block["rows"]:
        return []
    label = f"{found['label']} {found['size']} px"
    parts = block.get("parts", {})
    params = block.get("parameters", {})
    out = []
    sd15 = found.get("model", "sd15") == "sd15"   # the flagged and training targets are SD1.5's
    for variant, limit in RATIO_TARGETS:
        r = _row(block, variant)
        scored_by = "TAESD" if "TAESD" in variant else "VAE"   # the decoder (or screen) an unflagged image is scored with
        decode, score = parts.get(f"{scored_by} decode"), parts.get("NudeNet score")
        if (r is None and "nothing flagged" in variant and variant in found.get("skip", ()) and decode is not None
                and score is not None):
            # not run for time: what it adds to a plain step for an image it does not guide is its parts
            plain = plain_step(block)
            estimate = (plain + decode + score) / plain
            out.append([label, f"{variant}: <= {limit:.2f}x", f"~{estimate:.2f}x (from its parts; not run)",
                        "estimated: " + _verdict(estimate, limit, "x"),
                        _unflagged_cost(plain, scored_by, decode, score) + ", each timed alone"])
            continue
        if r is None or ("every image flagged" in variant and not sd15):
            continue
        plain = plain_step(block, r)
        ratio = r["per_unit"] / plain
        if "nothing flagged" in variant:
            decode, score = decode or 0.0, score or 0.0
            goes = _unflagged_cost(plain, scored_by, decode, score) + f": {plain + decode + score:.1f} s"
        elif "every image flagged" in variant:
            goes = (f"the gradient pass: the conditional UNet forward with its graph and its backward, the decoder's "
                    f"forward and backward, on top of the plain step ({plain:.1f} s)")
        else:
            goes = "the steering's own work per model call" if ratio > limit else ""
        out.append([label, f"{variant}: <= {limit:.2f}x", f"{ratio:.2f}x", _verdict(ratio, limit, "x"), goes])
    r = _row(block, STG_8GB)
    if r is not None and params:
        weights = 2 * (params["UNet"] + params["VAE"] + params["TAESD"])
        total = (r["peak"] + weights) / GIB
        out.append([label, f"{STG_8GB}, batch 1: peak <= 8 GiB (an 8 GB card)", f"{total:.2f} GiB",
                    _verdict(total, 8.0, " GiB"),
                    f"activations {r['peak'] / GIB:.2f} GiB (fp32 here; fp16 keeps at most as much) + fp16 weights "
                    f"of the UNet, VAE and TAESD {weights / GIB:.2f} GiB; the text encoder is off the card while "
                    "sampling when memory is short (ComfyUI's model management)"])
    for method, limit in TRAIN_TARGETS.items():
        r = _row(block, f"Train Steering Vector, {method}")
        if r is None or not params or not sd15:
            continue
        weights = 2 * params["UNet"]
        scale = TRAIN_REFERENCE_BATCH / r["batch"]
        bound = (r["peak"] * scale + weights) / GIB
        how = ("measured" if scale == 1 else
               f"bound: {scale:.0f}x the batch-{r['batch']} peak ({r['peak'] / GIB:.2f} GiB; kept activations grow "
               f"linearly with the batch, so the peak at batch {TRAIN_REFERENCE_BATCH} is at most that)")
        verdict = _verdict(bound, limit, " GiB")
        if bound > limit and scale > 1:
            verdict = f"not shown: the bound is {bound:.2f} GiB (the batch-{TRAIN_REFERENCE_BATCH} run is the GPU's)"
        out.append([label, f"Train Steering Vector, {method}, batch {TRAIN_REFERENCE_BATCH}: peak <= {limit:.0f} GiB",
                    f"{bound:.2f} GiB", verdict, f"{how}; + fp16 UNet weights {weights / GIB:.2f} GiB"])
    return out


def plain_spread(found: dict) -> str | None:
    """How far apart the plain steps of one model's run lie (the plain row's and each variant's neighbour): the
    uncertainty of a ratio taken from one step."""
    steps = []
    for block in found["precisions"].values():
        for r in block["rows"]:
            if r["variant"] == "plain KSampler":
                steps += r["evaluations"]
            elif r.get("plain_near"):
                steps.append(r["plain_near"])
    if len(steps) < 2:
        return None
    lo, hi = min(steps), max(steps)
    return (f"{found['label']}: its {len(steps)} plain steps took {lo:.1f}-{hi:.1f} s, so a ratio of one step is "
            f"uncertain by about +-{100 * (hi - lo) / (hi + lo):.0f} % on this machine")


def kept_path(key: str, device: str) -> str:
    """Where a model's results of the last run are kept (git-ignored), for ``--table``."""
    return os.path.join(comfy_env.REPO, ".cache", "bench_real_size", f"{key}-{device}.json")


def run_and_keep(key: str, device: str) -> None:
    """One model in a process of its own, its results kept (kept_path) with the process's time and exit status."""
    spec = specs(device)[key]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{key}.json")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_real_size", "--model", key, "--device",
                               device, "--json", path])
        found = {"label": spec.label, "precisions": {}}
        if os.path.exists(path):
            with open(path) as f:
                found = json.load(f)
    found.update(elapsed_s=time.perf_counter() - start, exit=done.returncode, date=time.strftime("%Y-%m-%d"))
    os.makedirs(os.path.dirname(kept_path(key, device)), exist_ok=True)
    pure.module("steering.files").write_atomically(kept_path(key, device), json.dumps(found).encode())


def run(ctx: BenchContext) -> str:
    """Each model in a process of its own; its results are kept and the section is rendered from them."""
    for key in specs(ctx.device):
        run_and_keep(key, ctx.device)
    return render(ctx)


def render(ctx: BenchContext) -> str:
    """The section's body from the kept results of the last run on ctx.device; notes go into ctx.notes."""
    rows, calib, notes, targets, elapsed, per_model = [], [], [], [], 0.0, []
    for key, spec in specs(ctx.device).items():
        if not os.path.exists(kept_path(key, ctx.device)):
            notes.append(f"{spec.label}: not run")
            continue
        with open(kept_path(key, ctx.device)) as f:
            found = json.load(f)
        elapsed += found.get("elapsed_s", 0.0)
        per_model.append(f"{spec.label} {found.get('elapsed_s', 0.0) / 60:.0f} min, {found.get('date', '?')}")
        if not found["precisions"]:
            notes.append(f"{spec.label}: no result (exit {found.get('exit')})")
            continue
        if found.get("exit"):
            notes.append(f"{spec.label}: the run stopped early (exit {found['exit']}); the rows before it")
        rows += rows_of(found)
        calib += calibration_rows(found)
        targets += target_rows(found)
        resident_gib = {p: b["resident"] / GIB for p, b in found["precisions"].items()}
        notes.append(f"{spec.label}: {spec.note or 'reference size and batch'}; resident before the runs "
                     + ", ".join(f"{p} {v:.1f} GiB" for p, v in resident_gib.items())
                     + (f"; not run: {', '.join(spec.skip)}: {spec.why}" if spec.skip else ""))
        if spread := plain_spread(found):
            notes.append(spread)
    ctx.notes.extend(notes)
    if ctx.device == "cpu":
        ctx.notes.append(f"each model's process stops at a resident set of {RSS_CAP / GIB:.0f} GiB "
                         "(RS_BENCH_RSS_CAP_GIB; a variant stopped there is missing from the table)")
    ctx.notes.append(f"the whole benchmark took {elapsed / 60:.0f} min ({'; '.join(per_model)}: each model's process "
                     "as the whole benchmark runs it)")
    text = table(["model", "precision", "variant", "time", "vs plain", "peak GiB over resident", "note"], rows)
    if targets:
        text += ("\n\nTargets (fp32 here; ratios of the same run; on a GPU peak = activations + fp16 weights):\n\n"
                 + table(["model", "target", "measured", "verdict", "where it goes"], targets))
    text += ("\n\nOn a GPU: the ratios are of the same work (the same UNet, decoder and score calls per step), so "
             "they carry over as far as the parts keep their proportions there; how a GPU's attention kernels and "
             "fp16 convolutions shift them is not measured here (for comparison, the reference code's STG with "
             "every image flagged and the VAE decoder costs 3.69x on an H100). The apply nodes' and dual latent's "
             "ratios count UNet calls and carry over. The peaks are the activations a run keeps; on a GPU add the weights "
             "(the targets' table does), the CUDA context (~0.5 GiB) and the caching allocator's slack. They cannot "
             "say: absolute times, fp16/bf16 speed, or kernel workspaces (cuDNN, flash attention)."
             + (" This CPU runs fp32 only: its bf16 is emulated (an SD1.5 UNet forward at 256 px took 20x as long "
                "under bf16 autocast as in fp32); under fp16/bf16 every kept activation is at most as large, so "
                "the fp32 peaks bound the half-precision ones." if ctx.device == "cpu" else ""))
    if calib:
        text += ("\n\nCalibration of the memory check (steering/gradient_memory.py): one image, the part's forward "
                 "and backward alone, peak over resident.\n\n"
                 + table(["model", "size", "part", "checkpointing", "peak GiB", "s"], calib))
    return text


def facts(ctx: BenchContext) -> str:
    return f"{ctx.device_name}; random-weight real-size models (ComfyUI's configs), one run per variant"


if __name__ == "__main__":
    sys.exit(child())
