"""Memory of STG's gradient pass: an estimate from the images, their size and the settings, and the check
that refuses, with the numbers and the settings that would fit, a pass the device cannot hold.

A gradient pass keeps, for its backward, the activations of the UNet's conditional forward, of the
decoder's forward and of the score's, for each image in the pass. They grow with the pixels of the
image and with the bytes of the compute dtype (half of fp32's under fp16/bf16 autocast), and gradient
checkpointing (steering.checkpointing) keeps only each layer's input. The estimate is

    images * (UNet + decoder + score)
    UNet    = UNET_KEPT[checkpointing] * memory_usage_factor * latent pixels * compute dtype bytes
    decoder = DECODER_KEPT[kind][checkpointing] * image pixels * decoder dtype bytes
    score   = SCORE_BYTES (NudeNet at 320 / 640 px, CLIP at 224 px: small against the rest)

with ``memory_usage_factor`` ComfyUI's own per-architecture activation factor (comfy/supported_models.py:
SD1.x 1.0, SDXL 0.8) and the constants measured at real size: the peak resident memory over the weights
of one gradient pass of random-weight SD1.5 (512 px) and SDXL models built from ComfyUI's configs, on a
CPU, divided out (benchmarks/bench_real_size.py, "calibration" in benchmarks/RESULTS.md), and rounded up.
The free memory is ComfyUI's own figure (steering.comfy_compat.free_memory).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import torch

GIB = 2 ** 30

# Kept elements per latent pixel of one image, per unit of ComfyUI's memory_usage_factor (times the compute
# dtype's bytes: bytes), without / with gradient checkpointing.
UNET_KEPT = {False: 300_000.0, True: 60_000.0}
# Kept elements per image pixel of one image, per decoder kind (times the decoder dtype's bytes: bytes).
DECODER_KEPT = {"vae": {False: 3_000.0, True: 600.0}, "taesd": {False: 600.0, True: 150.0}}
SCORE_BYTES = 256 * 2 ** 20


class STGMemoryError(RuntimeError):
    """STG's gradient pass cannot fit the device's free memory with these settings."""


@dataclass(frozen=True)
class PassSettings:
    """What the estimate of a gradient pass depends on besides the images."""
    decoder: str            # "vae", "taesd" or another decoder (counted as nothing: e.g. ToyWorld's pixel map)
    checkpointing: bool
    half: bool              # fp16/bf16 autocast

    def describe(self) -> str:
        return (f"decoder {self.decoder}, gradient_checkpointing {'on' if self.checkpointing else 'off'}, "
                f"autocast {'fp16/bf16' if self.half else 'none'}")


def _dtype_bytes(dtype: torch.dtype, half: bool) -> int:
    return 2 if half else torch.empty((), dtype=dtype).element_size()


def pass_bytes(images: int, latent_shape: tuple, downscale: int, usage_factor: float, unet_dtype: torch.dtype,
               decoder_dtype: torch.dtype, settings: PassSettings) -> int:
    """Estimated peak memory (bytes) of one gradient pass over `images` images of latents [.., C, H, W]
    (`downscale` image pixels per latent pixel)."""
    latent_pixels = math.prod(latent_shape[2:])
    image_pixels = latent_pixels * downscale ** 2
    unet = UNET_KEPT[settings.checkpointing] * usage_factor * latent_pixels * _dtype_bytes(unet_dtype, settings.half)
    kept = DECODER_KEPT.get(settings.decoder)
    decoder = 0.0 if kept is None else kept[settings.checkpointing] * image_pixels * _dtype_bytes(decoder_dtype,
                                                                                                   settings.half)
    return int(images * (unet + decoder + SCORE_BYTES))


def _model_facts(base_model, decoder):
    from .comfy_compat import latent_downscale

    unet_dtype = base_model.manual_cast_dtype or base_model.get_dtype()
    decoder_dtype = getattr(decoder, "dtype", None) or torch.float32
    usage = float(getattr(base_model, "memory_usage_factor", 1.0))
    return latent_downscale(base_model), usage, unet_dtype, decoder_dtype


def check_gradient_memory(base_model, decoder, settings, images: int, latent_shape: tuple, free: int,
                          device) -> int:
    """Raise STGMemoryError when a gradient pass over `images` images (latents `latent_shape`) with the STG
    `settings` and `decoder` needs more than `free` bytes; the message names the need, the free memory and
    the settings (decoder, gradient checkpointing, autocast) and batch size that would fit. Returns the
    estimate (bytes)."""
    downscale, usage, unet_dtype, decoder_dtype = _model_facts(base_model, decoder)
    current = PassSettings(getattr(decoder, "kind", "other"), bool(settings.gradient_checkpointing),
                           settings.autocast != "none")

    def need(s: PassSettings, n: int = images) -> int:
        return pass_bytes(n, latent_shape, downscale, usage, unet_dtype, decoder_dtype, s)

    estimate = need(current)
    if estimate <= free:
        return estimate
    fits = []
    decoders = [current.decoder] + ([d for d in DECODER_KEPT if d != current.decoder]
                                    if current.decoder in DECODER_KEPT else [])
    for kind, ckpt, half in itertools.product(decoders, (current.checkpointing, True), (current.half, True)):
        option = replace(current, decoder=kind, checkpointing=ckpt, half=half)
        if option != current and need(option) <= free:
            changes = [f"decoder {kind}" if kind != current.decoder else "",
                       "gradient_checkpointing on" if ckpt != current.checkpointing else "",
                       "autocast fp16 (bf16 on CPUs)" if half != current.half else ""]
            fits.append((sum(bool(c) for c in changes), need(option),
                         " + ".join(c for c in changes if c) + f" ({need(option) / GIB:.1f} GiB)"))
    per_image = need(current, 1)
    most = int(free // per_image) if per_image else 0
    advice = [text for _, _, text in sorted(set(fits))]
    if 0 < most < images:
        advice.append(f"at most {most} image(s) per batch with these settings")
    shape = f"{latent_shape[-1] * downscale}x{latent_shape[-2] * downscale} px"
    raise STGMemoryError(
        f"STG's gradient pass for {images} image(s) at {shape} needs about {estimate / GIB:.1f} GiB on {device} "
        f"({current.describe()}), but {free / GIB:.1f} GiB are free. "
        + (f"Settings that would fit: {'; '.join(advice)}." if advice else
           "No setting of decoder, gradient_checkpointing and autocast fits: lower the resolution, or free memory "
           "(close other models, or start ComfyUI with --lowvram)."))
