"""Gradient checkpointing for the pack's gradient passes (STG, Train Steering Vector).

Within :func:`gradient_checkpointing`, each checkpointable layer of the given modules keeps only its input
for backward and recomputes its activations during the backward pass (``torch.utils.checkpoint``,
non-reentrant): far less memory, one more forward of those layers per backward. The values are the same:
the recomputation runs the same kernels on the same inputs.

Checkpointable layers (:func:`checkpointable_layers`):

* a UNet's layers inside its input / middle / output blocks (ResBlocks, spatial transformers, up- and
  downsamplers), or a DiT's transformer blocks (FLUX, SD3's MMDiT);
* a decoder's blocks: the SD-layout VAE decoder's ResnetBlocks, attention blocks and upsamplers
  (comfy/ldm/modules/diffusionmodules/model.py; SD1.x, SDXL, SD3 and FLUX VAEs), and TAESD's Blocks
  (comfy/taesd/taesd.py).

Without grad (every no-grad forward, also inside the block) the layers run as they are.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.utils.checkpoint

# The transformer blocks of ComfyUI's DiTs: FLUX (comfy/ldm/flux/model.py) and SD3's MMDiT
# (comfy/ldm/modules/diffusionmodules/mmdit.py).
DIT_BLOCK_LISTS = ("double_blocks", "single_blocks", "joint_blocks")


def decoder_block_types() -> tuple[type, ...]:
    """The block classes of ComfyUI's VAE decoder and of TAESD."""
    from comfy.ldm.modules.diffusionmodules import model as vae_model
    from comfy.taesd import taesd

    return vae_model.ResnetBlock, vae_model.AttnBlock, vae_model.Upsample, taesd.Block


def checkpointable_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers of `module` that :func:`gradient_checkpointing` wraps: a UNet's layers inside its input/middle/
    output blocks, a DiT's transformer blocks, or a decoder's blocks (see the module docstring)."""
    layers = []
    for group in ("input_blocks", "output_blocks"):
        for block in getattr(module, group, []):
            layers.extend(block)
    middle = getattr(module, "middle_block", None)
    if middle is not None:
        layers.extend(middle)
    for group in DIT_BLOCK_LISTS:
        layers.extend(getattr(module, group, None) or [])
    if not layers:
        kinds = decoder_block_types()
        layers = [m for m in module.modules() if isinstance(m, kinds)]
    return layers


@contextlib.contextmanager
def gradient_checkpointing(*modules: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every checkpointable layer of `modules` recomputes its activations in backward instead
    of storing them (yields how many layers were wrapped); the layers' own forwards are back after it."""
    if not enabled:
        yield 0
        return
    patched = []
    try:
        seen: set[int] = set()
        for module in modules:
            if module is None:
                continue
            for layer in checkpointable_layers(module):
                if id(layer) in seen:
                    continue
                seen.add(id(layer))
                original = layer.forward
                patched.append((layer, layer.__dict__.get("forward")))

                def checkpointed(*args, _forward=original, **kwargs):
                    if not torch.is_grad_enabled():
                        return _forward(*args, **kwargs)
                    return torch.utils.checkpoint.checkpoint(
                        lambda a, k: _forward(*a, **k), args, kwargs, use_reentrant=False)

                layer.forward = checkpointed
        yield len(patched)
    finally:
        for layer, own_forward in patched:
            if own_forward is None:
                layer.__dict__.pop("forward", None)  # back to the class's forward
            else:
                layer.forward = own_forward
