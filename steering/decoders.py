"""Differentiable decoders: model-space latent -> image batch, for scoring during sampling (STG).

A decoder is any callable ``decoder(x0, base_model) -> NCHW image`` with ``modules()``
(the torch modules it runs, so the caller can make inference-mode weights
autograd-safe) and ``patchers()`` (ComfyUI model patchers to load with the model);
optionally ``kind`` ("vae", "taesd": what steering.gradient_memory estimates its
gradient pass from) and ``dtype`` (its weights' dtype).

Design: the decoders return ``(decoded + 1) / 2`` without clamping, as the STG reference
(``image / 2 + 0.5``). Each safety score resizes the image to its own input size and
clamps to 0..1 after that (the reference's order: resize, then clamp), so a pixel that
overshoots still passes gradient through the resize to its neighbours' values.

Where a TAESD file lives is the node layer's business (nodes/paths.py); here a decoder is
built from a loaded VAE or a weights file path.
"""
from __future__ import annotations

import torch

DECODERS = ("vae", "taesd")
# STG's scoring pass: "off" scores with the decoder itself, "taesd" screens every image with TAESD first and decodes
# only the flagged ones with the decoder
SCREENS = ("off", "taesd")


class VAEDecoder:
    """Decode with the checkpoint's VAE first-stage model directly (VAE.decode is not autograd-friendly)."""

    kind = "vae"

    def __init__(self, vae):
        self.vae = vae

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.vae_dtype

    def modules(self) -> list[torch.nn.Module]:
        return [self.vae.first_stage_model]

    def patchers(self) -> list:
        return [self.vae.patcher]

    def __call__(self, x0: torch.Tensor, base_model) -> torch.Tensor:
        """NCHW image, nominally 0..1 (not clamped: the score clamps after its resize)."""
        latent = base_model.process_latent_out(x0)
        device = self.vae.device
        out = self.vae.first_stage_model.decode(latent.to(device=device, dtype=self.vae.vae_dtype))
        return (out.to(x0.device).float() + 1.0) / 2.0


class TAESDDecoder:
    """TAESD's decoder applied to the model-space latent."""

    kind = "taesd"

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    def modules(self) -> list[torch.nn.Module]:
        return [self.decoder]

    def patchers(self) -> list:
        return []

    def __call__(self, x0: torch.Tensor, base_model) -> torch.Tensor:
        """NCHW image, nominally 0..1 (not clamped: the score clamps after its resize)."""
        param = next(self.decoder.parameters())
        if param.device != x0.device:
            with torch.inference_mode(False):
                self.decoder.to(x0.device)
        # TAESD decoders (taesd, taesdxl, taesd3, taef1) take the model-space latent x0, (raw - shift) * scale,
        # as ComfyUI's latent previews give them.
        return self.decoder(x0.to(param.dtype)).float()


def vae_decoder(vae):
    """The exact differentiable decoder of a VAE: its own, when the VAE provides one
    (``differentiable_decoder()``: models without a learned VAE, such as ToyWorld's pixel shuffle),
    else its first-stage model (:class:`VAEDecoder`)."""
    own = getattr(vae, "differentiable_decoder", None)
    return own() if callable(own) else VAEDecoder(vae)


_taesd_cache: dict[str, torch.nn.Module] = {}


def load_taesd_decoder(path: str) -> TAESDDecoder:
    """The TAESD decoder in the weights file at `path` (loaded once per path); its latent channels (4 for
    SD1.x/SDXL, 16 for SD3/FLUX) are read off its first convolution."""
    import comfy.taesd.taesd
    import comfy.utils

    if path not in _taesd_cache:
        with torch.inference_mode(False):
            state = comfy.utils.load_torch_file(path, safe_load=True)
            first = state.get("1.weight")  # the first convolution: [64, latent channels, 3, 3]
            channels = int(first.shape[1]) if first is not None and first.ndim == 4 else 4
            decoder = comfy.taesd.taesd.Decoder(latent_channels=channels)
            decoder.load_state_dict(state)
            decoder.eval().requires_grad_(False)
        _taesd_cache[path] = decoder
    return TAESDDecoder(_taesd_cache[path])
