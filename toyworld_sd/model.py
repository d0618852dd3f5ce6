"""ToyWorld-SD's model: ToyWorld's recipe (ComfyUI's own BaseModel + UNetModel, exact pixel latent,
v-prediction with zero terminal SNR) with a UNet laid out as Stable Diffusion 1.5's, scaled down.

* Latent: ToyWorld's exact 2x2 pixel unshuffle of the 32x32 image, [12, 16, 16].
* UNet, level by level as SD1.5's (whose latent is 64x64):

  | level | SD1.5 (64 px latent) | ToyWorld-SD (16 px latent) | cross-attention |
  |---|---|---|---|
  | 0 | 64 px, 320 ch | 16 px, 32 ch | yes (encoder and decoder) |
  | 1 | 32 px, 640 ch | 8 px, 64 ch | yes |
  | 2 | 16 px, 1280 ch | 4 px, 128 ch | yes |
  | 3 | 8 px, 1280 ch | 2 px, 128 ch | no |
  | middle | 8 px (1/8), 1280 ch | 2 px (1/8), 128 ch | yes |

  channel_mult [1, 2, 4, 4], self- and cross-attention in the same blocks as SD1.5 (none at the
  lowest level's res blocks, one transformer in the middle block), one res block per level where
  SD has two. The bottleneck (h-space, the middle-block output) is [128, 2, 2]: 1/8 of the latent
  side, as SD's 8x8 of 64x64.
* Text encoder: ToyWorld's (a learned 768-wide embedding per token and per position, layer-normed), so a
  word's embedding is one of 16 tokens, as in SD1.x's [B, 77, 768]. A small causal transformer (as CLIP's) was
  tried first and set aside: with it the UNet needed more than three times the training steps to make the same
  use of the shape word (benchmarks/toyworld/word_use.py; benchmarks/toyworld/findings_toyworld_sd.md), and the
  two-hour budget did not teach shape.
"""
from __future__ import annotations

import functools
import os

import torch

from ..toyworld import model as toyworld_model
from ..toyworld.model import PixelDecoder, decode, decode_nchw, encode_images, init_weights
from . import world

__all__ = ["PixelDecoder", "decode", "decode_nchw", "encode_images", "init_weights"]

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "toyworld_sd.safetensors")
WEIGHTS_DTYPE = torch.float16  # stored in half precision, as SD checkpoints are shipped; computed in float32
# Vector files learned on ToyWorld-SD, listed by the vector loader as "toyworld_sd/<name>.safetensors".
VECTOR_ROOT = os.path.join(HERE, "steering_vectors")
VECTOR_DIR = os.path.join(VECTOR_ROOT, "toyworld_sd")
CONTEXT_DIM = 768
IMAGE_SIZE = world.SIZE
LATENT_CHANNELS, LATENT_SIZE = toyworld_model.LATENT_CHANNELS, toyworld_model.LATENT_SIZE
ARCH_NAME = "toyworld_sd"
LABEL = "ToyWorld-SD"

CHANNEL_MULT = [1, 2, 4, 4]
ATTENTION_PER_LEVEL = [1, 1, 1, 0]  # SD1.5: transformers at the three upper levels, none at the lowest
RES_BLOCKS = 1
UNET_CONFIG = {
    "image_size": LATENT_SIZE,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "model_channels": 32,
    "num_res_blocks": [RES_BLOCKS] * len(CHANNEL_MULT),
    "channel_mult": CHANNEL_MULT,
    # per input res block, level 0 first; per output block (res blocks + 1 per level), level 0 first, as
    # ComfyUI's model detection writes SD's (SD2.1: [1,1,1,1,1,1,0,0] and [1]*9 + [0]*3)
    "transformer_depth": [d for d in ATTENTION_PER_LEVEL for _ in range(RES_BLOCKS)],
    "transformer_depth_output": [d for d in ATTENTION_PER_LEVEL for _ in range(RES_BLOCKS + 1)],
    "transformer_depth_middle": 1,
    "context_dim": CONTEXT_DIM,
    "num_heads": -1,
    "num_head_channels": 32,
    "use_linear_in_transformer": True,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "dims": 2,
}
DOWNSAMPLING = 2 ** (len(CHANNEL_MULT) - 1)  # 8, as SD's
BOTTLENECK_SHAPE = (UNET_CONFIG["model_channels"] * CHANNEL_MULT[-1], LATENT_SIZE // DOWNSAMPLING,
                    LATENT_SIZE // DOWNSAMPLING)


@functools.cache
def config_class():
    """ToyWorld-SD's model-config class (its own class, not ToyWorld's, so the pack tells the two apart)."""
    import comfy.supported_models_base

    class ToyWorldSDConfig(comfy.supported_models_base.BASE):
        unet_config = {}
        unet_extra_config = {}
        latent_format = toyworld_model.config_class().latent_format  # the same exact 12-channel latent
        memory_usage_factor = 1.0
        sampling_settings = {"zsnr": True}  # zero terminal SNR, as ToyWorld (toyworld/model.py)

    return ToyWorldSDConfig


def register_architecture() -> str:
    """Teach the pack's architecture table ToyWorld-SD: conditioning [B, 16, 768], bottleneck 128 channels,
    32 px images; vector files may then say arch "toyworld_sd". The pack does this when it loads."""
    from ..steering import architectures

    architectures.register_architecture(
        architectures.Architecture(ARCH_NAME, f"{LABEL} (the pack's demo model with SD1.5's UNet layout)",
                                   CONTEXT_DIM, world.MAX_TOKENS, None, BOTTLENECK_SHAPE[0],
                                   native_resolution=IMAGE_SIZE),
        config_classes=(config_class(),))
    return ARCH_NAME


class TextEncoder(toyworld_model.TextEncoder):
    """Token ids [B, 16] -> conditioning [B, 16, 768]: ToyWorld's text encoder with ToyWorld-SD's vocabulary and
    prompt length."""

    world = world


def build_base_model(device="cpu"):
    """A comfy.model_base.BaseModel with ToyWorld-SD's UNet (weights uninitialised)."""
    import comfy.model_base

    config = config_class()(dict(UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION, device=device)


class ToyWorldSD(toyworld_model.ToyWorld):
    """The trained ToyWorld-SD as ComfyUI objects (``model``, ``encode``, ``decode``, ``sample``), as ToyWorld."""

    label = LABEL
    world = world
    weights = WEIGHTS
    text_encoder_class = TextEncoder
    build_base_model = staticmethod(build_base_model)
    latent_shape = (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)


def parameter_count() -> dict[str, int]:
    """Parameters of the UNet and the text encoder (built, not loaded)."""
    return {"unet": sum(p.numel() for p in build_base_model().diffusion_model.parameters()),
            "text_encoder": sum(p.numel() for p in TextEncoder().parameters())}
