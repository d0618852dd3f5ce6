"""Shared benchmark plumbing: ComfyUI set-up, model builders, interleaved timing, reporting.

Timings are ratios measured side by side in one process: every round runs each
variant once, in rotating order, and ratios are medians of per-round ratios (robust
to drift and to load from other processes).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from devtools import comfy_env


@dataclass
class BenchContext:
    device: str            # "cpu" or "cuda"
    full_size: bool        # SD1.5-size random-weight models instead of the tiny checkpoint
    rounds: int
    notes: list[str] = field(default_factory=list)

    @property
    def device_name(self) -> str:
        import torch

        if self.device == "cuda":
            return torch.cuda.get_device_name(0)
        return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"

    def synchronize(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (psutil when installed, else /proc/<pid>/status)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    return psutil.Process(pid).memory_info().rss


def slope(values: list[float]) -> float:
    """Least-squares slope of `values` against their index (0.0 for fewer than two)."""
    n = len(values)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(values) / n
    num = sum((i - mx) * (v - my) for i, v in enumerate(values))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, linear between the nearest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def random_sd_vae(device, dtype):
    """A full-size SD VAE (83.6 M parameters) with seeded random weights, as ComfyUI's VAE object."""
    import comfy.sd
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoencoderKL(ddconfig=ddconfig, embed_dim=4).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in shapes.items():
        if len(shape) > 1:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            sd[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif key.endswith("weight"):
            sd[key] = torch.ones(shape)
        else:
            sd[key] = torch.zeros(shape)
    vae = comfy.sd.VAE(sd=sd, device=torch.device(device), dtype=dtype)
    return vae


def random_taesd_decoder(device, dtype):
    """ComfyUI's TAESD decoder with seeded random weights (what models/vae_approx/taesd_decoder holds)."""
    import torch
    from comfy.taesd.taesd import Decoder

    decoder = Decoder()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5 if p.ndim > 1 else torch.zeros(p.shape))
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def setup_comfy(device: str) -> None:
    """Import ComfyUI (from `make setup`'s cache) for in-process benchmarks; the pack is then reached
    through devtools.pack, loaded as ComfyUI loads it."""
    comfy_env.setup(cpu=device == "cpu")


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, ctx: BenchContext,
                warmup: int = 1) -> dict[str, list[float]]:
    """Wall times (s) of each variant, run side by side in rotating order."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
            ctx.synchronize()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            ctx.synchronize()
            start = time.perf_counter()
            variants[name]()
            ctx.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median of per-round ratios (each round runs both variants back to back)."""
    return statistics.median(t / b for t, b in zip(times[name], times[base]))


def best_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Ratio of the fastest runs: load from other processes only ever adds time, so on a
    shared machine the minimum is the least disturbed estimate of each variant's cost."""
    return min(times[name]) / min(times[base])


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
