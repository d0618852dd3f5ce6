"""Tiny generated models: Stable Diffusion checkpoints and a CLIP, with seeded random weights.

No model weights exist on our machines, so tests and the demo run on checkpoints
generated here. They use ComfyUI's own model classes to get the exact key layout,
so `CheckpointLoaderSimple` detects them like any downloaded file:

* ``sd1``: detected as SD15. UNet with ``model_channels=320``, ``context_dim=768`` and
  ``channel_mult=[1, 4]``, so the bottleneck (h-space) has SD1.5's real width of
  1280 channels, at 1/16 of the image size (8x8 at 128 px). Full-size CLIP-L text
  encoder (its layout is fixed), TAESD-layout VAE.
* ``sdxl_unet``: an SDXL-architecture UNet (ADM ``y`` input of 2816, cross-attention
  width 2048, 1280-channel bottleneck) returned as an in-memory ComfyUI model,
  for tests of SDXL-shaped tensors (SDXL text encoders are too large to generate).
* ``write_tiny_clip``: a CLIP model in the Hugging Face layout, standing in for a user's
  local CLIP folder (models/safety_clip/<name>/config.json + model.safetensors).

Weights are drawn per tensor from a generator seeded with (seed, tensor name), so a
file is byte-identical across runs and machines. Run as a module to write a file::

    python -m devtools.tiny_models OUT.safetensors [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import zlib

import torch

SD1_UNET_CONFIG = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 4],
    "transformer_depth": [1, 0],
    "transformer_depth_output": [1, 1, 0, 0],
    "transformer_depth_middle": -1,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "dims": 2,
    "image_size": 32,
}

SDXL_UNET_CONFIG = {  # SDXL's conditioning: 2048-wide context, pooled + size embedding (adm), linear transformers
    **{k: v for k, v in SD1_UNET_CONFIG.items() if k != "num_heads"},
    "context_dim": 2048,
    "num_head_channels": 64,
    "use_linear_in_transformer": True,
    "adm_in_channels": 2816,
    "num_classes": "sequential",
}

CHECKPOINT_FORMAT_VERSION = "2"


def _seeded_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A deterministic random tensor for one parameter, independent of creation order."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias" or leaf == "vae_shift":
        return torch.zeros(shape)
    if leaf == "vae_scale":
        return torch.ones(shape)
    if len(shape) == 1:  # norm weights
        return torch.ones(shape)
    if "embedding" in name:
        return torch.randn(shape, generator=generator) * 0.02
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def _meta_state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _unet_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    return _meta_state_shapes(unet)


def _clip_l_shapes() -> dict[str, tuple[int, ...]]:
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip

    config_path = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")
    with open(config_path) as f:
        config = json.load(f)
    model = comfy.clip_model.CLIPTextModel(config, torch.float32, "meta", comfy.ops.disable_weight_init)
    return {k: v for k, v in _meta_state_shapes(model).items() if not k.endswith("position_ids")}


def _taesd_shapes() -> dict[str, tuple[int, ...]]:
    import comfy.taesd.taesd

    with torch.device("meta"):
        model = comfy.taesd.taesd.TAESD(latent_channels=4)
    return _meta_state_shapes(model)


def sd1_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The full checkpoint state dict in the original SD key layout."""
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, part in (
        ("model.diffusion_model.", _unet_shapes(SD1_UNET_CONFIG)),
        ("cond_stage_model.transformer.", _clip_l_shapes()),
        ("first_stage_model.", _taesd_shapes()),
    ):
        shapes.update({prefix + k: v for k, v in part.items()})
    return {name: _seeded_tensor(name, shape, seed).to(dtype) for name, shape in sorted(shapes.items())}


def write_sd1_checkpoint(path: str, seed: int = 0) -> str:
    """Write the tiny SD1 checkpoint atomically (a temporary folder beside it, then a rename); returns the path.
    The pack is not loaded here: ComfyUI must load it later from the test's custom_nodes folder."""
    from safetensors.torch import save_file

    from devtools import pure

    with pure.module("steering.files").atomic_file(path, suffix=".safetensors") as tmp:
        save_file(sd1_state_dict(seed), tmp, metadata={"generator": "responsible-steering tiny_checkpoint",
                                                        "format": CHECKPOINT_FORMAT_VERSION, "seed": str(seed)})
    return path


def ensure_sd1_checkpoint(directory: str, seed: int = 0) -> str:
    """Return the path of the cached tiny SD1 checkpoint, generating it if missing."""
    name = f"tiny-sd1-v{CHECKPOINT_FORMAT_VERSION}-seed{seed}.safetensors"
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        write_sd1_checkpoint(path, seed)
    return path


SD15_FULL_UNET_CONFIG = {
    **SD1_UNET_CONFIG,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}

SDXL_FULL_UNET_CONFIG = {
    **SDXL_UNET_CONFIG,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
}

UNET_CONFIGS = {
    "sd1_tiny": ("SD15", SD1_UNET_CONFIG),
    "sdxl_tiny": ("SDXL", SDXL_UNET_CONFIG),
    "sd15_full": ("SD15", SD15_FULL_UNET_CONFIG),  # real SD1.5 size (860M parameters)
    "sdxl_full": ("SDXL", SDXL_FULL_UNET_CONFIG),  # real SDXL size (2.6B parameters)
}


def comfy_table_config(name: str) -> dict:
    """ComfyUI's own UNet config of a real-size entry of UNET_CONFIGS ("sd15_full", "sdxl_full"): the entry of
    comfy/model_detection.py's table of known UNets that ComfyUI picks for a diffusers checkpoint with this
    layout (found from the shapes of the keys it reads, as it finds a downloaded file's), in the form its model
    classes take (``convert_config``). Raises ValueError when ComfyUI knows no such UNet."""
    import comfy.model_detection
    import comfy.utils

    config = UNET_CONFIGS[name][1]
    comfy_shapes = _unet_shapes(config)
    diffusers = {key: torch.empty(comfy_shapes[ours], device="meta")
                 for key, ours in comfy.utils.unet_to_diffusers(config).items() if ours in comfy_shapes}
    found = comfy.model_detection.unet_config_from_diffusers_unet(diffusers)
    if found is None:
        raise ValueError(f"ComfyUI's table of UNets has no entry with the layout of {name}")
    found.pop("dtype", None)
    return found


def build_unet_model(name: str = "sdxl_tiny", seed: int = 0, device=None, dtype: torch.dtype = torch.float32):
    """An in-memory ComfyUI model (ModelPatcher) of one of UNET_CONFIGS with seeded random weights; the real-size
    ones ("sd15_full", "sdxl_full") with ComfyUI's own config of that UNet (:func:`comfy_table_config`).

    Weights are generated on `device` (default: ComfyUI's torch device) and stored in `dtype`."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    class_name, config = UNET_CONFIGS[name]
    if name.endswith("_full"):
        config = comfy_table_config(name)
    model_config = getattr(comfy.supported_models, class_name)(dict(config))
    model_config.set_inference_dtype(dtype, None)
    load_device = comfy.model_management.get_torch_device() if device is None else torch.device(device)
    model = model_config.get_model({}, device="meta")  # only the UNet is built on meta
    state = {}
    for key, shape in _meta_state_shapes(model.diffusion_model).items():
        state[key] = _seeded_tensor("model.diffusion_model." + key, shape, seed).to(load_device, dtype)
    model.diffusion_model.load_state_dict(state, strict=True, assign=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=torch.device("cpu"))


def build_sdxl_unet_model(seed: int = 0):
    """The tiny SDXL-architecture model used by tests of SDXL-shaped tensors."""
    return build_unet_model("sdxl_tiny", seed=seed, device="cpu")


def write_tiny_clip(folder: str, seed: int = 0) -> str:
    """Write a seeded random CLIPModel (vocab of CLIP's BPE, width 32, one layer) into `folder` atomically.

    Real CLIP weights are never downloaded. The tokenizer is not written: the pack then uses
    the CLIP BPE tokenizer that ComfyUI ships."""
    from transformers import CLIPConfig, CLIPModel

    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, projection_dim=16)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    with torch.inference_mode(False):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tiny-clip-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        os.replace(tmp, folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="path of the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_sd1_checkpoint(args.out, args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
