"""Tiny FLUX.1 and SD3 models built in memory from ComfyUI's own classes, for tests and CPU benchmarks.

FLUX and SD3 cannot be generated as files the stock loaders read: ComfyUI's model detection fixes
FLUX's width (24 heads of 128), and their T5-XXL text encoder has a fixed 4.7 B-parameter layout. So:

* MODEL: ``comfy.supported_models.Flux`` / ``FluxSchnell`` / ``SD3`` with a small ``unet_config``
  (``comfy.ldm.flux.model.Flux`` with one double and one single block of width 64;
  ``comfy.ldm.modules.diffusionmodules.mmdit.MMDiT`` of depth 2, width 128), seeded random weights
  (devtools.tiny_models' per-tensor seeding), wrapped in a ModelPatcher. The model sampling, the
  latent format (16 channels, the real scale and shift), the extra conditioning (``guidance`` for
  FLUX dev, the pooled vector ``y``) and the conditioning classes are the real ones.
* CLIP: a real ``comfy.sd.CLIP`` built from a ``ClipTarget`` with ComfyUI's own tokenizers
  (``FluxTokenizer``: CLIP-L + T5 with at least 256 tokens; ``SD3Tokenizer``: CLIP-L, CLIP-G and T5
  with at least 77) and a tiny text model that turns every token into a seeded embedding of the real
  width and assembles them as ComfyUI's ``FluxClipModel`` / ``SD3ClipModel`` do: FLUX ``[1, T5, 4096]``
  with CLIP-L's pooled 768; SD3 ``[1, 77 + T5, 4096]`` (CLIP-L ++ CLIP-G padded to 4096, then T5) with
  pooled 768 ++ 1280. Prompt weights are not applied (the tiny text model is not a language model).
* VAE: a real ``comfy.sd.VAE`` of the TAESD layout with 16 latent channels (what ComfyUI builds for
  a ``taesd_decoder.*`` state dict), its ``vae_shift``/``vae_scale`` set to the latent format's shift and
  scale, so it decodes the raw latents the samplers return. Its decoder alone is also the
  architecture's ``vae_approx`` file (taef1 / taesd3), which decodes model-space latents: the two
  decoders of STG give the same image.

:class:`TinyDiTLoader` is a ComfyUI node (old-style API, registered by the tests only) that returns the
three; :func:`substitute_loaders` swaps a workflow's stock loaders (UNETLoader, DualCLIPLoader,
TripleCLIPLoader, CheckpointLoaderSimple, VAELoader) for it, so an example workflow named for a
user's real FLUX or SD3 files runs on the tiny model with every other node as it is.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import zlib

import torch

from devtools import pure
from devtools.tiny_models import _meta_state_shapes, _seeded_tensor

FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
    "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}
SD3_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None, "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
    "num_patches": 1024, "pos_embed_max_size": 32, "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
}
# name -> (comfy.supported_models class, unet_config, tokenizer, text-encoder layout, vae_approx file stem)
MODELS = {
    "flux": ("Flux", FLUX_CONFIG, "flux", "taef1_decoder"),
    "flux_schnell": ("FluxSchnell", {**FLUX_CONFIG, "guidance_embed": False}, "flux", "taef1_decoder"),
    "sd3": ("SD3", SD3_CONFIG, "sd3", "taesd3_decoder"),
}
TEXT_WIDTH = 4096
FEATURES = 8  # width of the tiny text model's token features before they are projected to the real widths


class TinyDiTError(ValueError):
    """An unknown tiny model, or a workflow whose loaders cannot be substituted."""


def _model_entry(name: str):
    if name not in MODELS:
        raise TinyDiTError(f"unknown tiny DiT model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name]


@functools.lru_cache(maxsize=4)
def build_model(name: str = "flux", seed: int = 0):
    """The tiny MODEL (ModelPatcher) `name` of MODELS, float32 on ComfyUI's torch device, seeded weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    class_name, config, _, _ = _model_entry(name)
    model_config = getattr(comfy.supported_models, class_name)(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    device = comfy.model_management.get_torch_device()
    with torch.inference_mode(False):
        model = model_config.get_model({}, device="meta")
        state = {key: _seeded_tensor(f"{name}.{key}", shape, seed).to(device)
                 for key, shape in _meta_state_shapes(model.diffusion_model).items()}
        model.diffusion_model.load_state_dict(state, strict=True, assign=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


# ---------------------------------------------------------------------------- text encoders

def _table(key: str, rows: int, cols: int, seed: int, std: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(f"tiny-dit-text:{seed}:{key}".encode()))
    return torch.randn(rows, cols, generator=generator) * std


class TinyTextModel(torch.nn.Module):
    """ComfyUI's cond_stage_model protocol, with ComfyUI's FLUX / SD3 output layout (see the module doc)."""

    disable_offload = True
    layout = "flux"
    vocab = {"l": 49408, "g": 49408, "t5xxl": 32128}
    widths = {"l": 768, "g": 1280, "t5xxl": TEXT_WIDTH}

    def __init__(self, device=None, dtype=None, model_options=None, seed: int = 0):
        super().__init__()
        # unit-variance token features projected with std 1/sqrt(FEATURES): outputs of unit variance, the scale
        # of real text-encoder outputs (the models' input layers expect it)
        for key, rows in self.vocab.items():
            width, std = self.widths[key], 1 / math.sqrt(FEATURES)
            self.register_buffer(f"embed_{key}", _table(f"embed_{key}", rows, FEATURES, seed, 1.0))
            self.register_buffer(f"project_{key}", _table(f"project_{key}", FEATURES, width, seed, std))
            self.register_buffer(f"pool_{key}", _table(f"pool_{key}", FEATURES, width, seed, std))
        self.dtypes = {torch.float32}
        self.execution_device = None

    def reset_clip_options(self) -> None:
        self.execution_device = None

    def set_clip_options(self, options: dict) -> None:
        self.execution_device = options.get("execution_device", self.execution_device)

    def _encode(self, key: str, chunks: list) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, tokens, width] (the chunks concatenated, as ComfyUI's encoders do) and the pooled [1, width]."""
        ids = torch.tensor([pair[0] for chunk in chunks for pair in chunk], dtype=torch.long)
        features = getattr(self, f"embed_{key}")[ids]
        device = self.execution_device or features.device
        out = (features @ getattr(self, f"project_{key}")).unsqueeze(0)
        pooled = (features.mean(0, keepdim=True) @ getattr(self, f"pool_{key}"))
        return out.to(device), pooled.to(device)

    def encode_token_weights(self, token_weight_pairs: dict):
        t5, _ = self._encode("t5xxl", token_weight_pairs["t5xxl"])
        l_out, l_pooled = self._encode("l", token_weight_pairs["l"])
        if self.layout == "flux":
            return t5, l_pooled
        g_out, g_pooled = self._encode("g", token_weight_pairs["g"])
        tokens = min(l_out.shape[1], g_out.shape[1])
        lg = torch.nn.functional.pad(torch.cat([l_out[:, :tokens], g_out[:, :tokens]], -1),
                                     (0, TEXT_WIDTH - 768 - 1280))
        return torch.cat([lg, t5], 1), torch.cat([l_pooled, g_pooled], -1), {}

    def load_sd(self, sd: dict):
        return self.load_state_dict(sd, strict=False)


class TinySD3TextModel(TinyTextModel):
    layout = "sd3"


@functools.lru_cache(maxsize=4)
def build_clip(name: str = "flux", seed: int = 0):
    """A real comfy.sd.CLIP with the tokenizers of `name`'s architecture and the tiny text model."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd3_clip

    layout = _model_entry(name)[2]
    tokenizer = comfy.text_encoders.flux.FluxTokenizer if layout == "flux" else comfy.text_encoders.sd3_clip.SD3Tokenizer
    model = TinyTextModel if layout == "flux" else TinySD3TextModel
    target = comfy.supported_models_base.ClipTarget(tokenizer, functools.partial(model, seed=seed))
    with torch.inference_mode(False):
        return comfy.sd.CLIP(target)


# ---------------------------------------------------------------------------- VAE

def vae_state_dict(name: str = "flux", seed: int = 0) -> dict[str, torch.Tensor]:
    """The TAESD-layout VAE (16 latent channels) with the latent format's shift and scale."""
    import comfy.supported_models
    import comfy.taesd.taesd

    class_name = _model_entry(name)[0]
    latent_format = getattr(comfy.supported_models, class_name).latent_format()
    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
    state = {key: _seeded_tensor(f"{name}.vae.{key}", shape, seed) for key, shape in _meta_state_shapes(taesd).items()}
    state["vae_shift"] = torch.tensor(latent_format.shift_factor)
    state["vae_scale"] = torch.tensor(latent_format.scale_factor)
    return state


@functools.lru_cache(maxsize=4)
def build_vae(name: str = "flux", seed: int = 0):
    import comfy.sd

    with torch.inference_mode(False):
        return comfy.sd.VAE(sd=vae_state_dict(name, seed))


def write_vae_approx(name: str, directory: str, seed: int = 0) -> str:
    """Write the VAE's decoder as `name`'s models/vae_approx file (taef1_decoder / taesd3_decoder), atomically;
    returns its path."""
    from safetensors.torch import save_file

    stem = _model_entry(name)[3]
    prefix = "taesd_decoder."
    decoder = {k[len(prefix):]: v.contiguous() for k, v in vae_state_dict(name, seed).items() if k.startswith(prefix)}
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, stem + ".safetensors")
    with pure.module("steering.files").atomic_file(path, suffix=".safetensors") as tmp:
        save_file(decoder, tmp)
    return path


# ---------------------------------------------------------------------------- the loader node and substitution

class TinyDiTLoader:
    """ComfyUI node: the tiny MODEL, CLIP and VAE of one of MODELS (tests and benchmarks only)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (sorted(MODELS), {"tooltip": "The tiny model's architecture."}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                                              "tooltip": "Seed of the random weights."})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, model: str, seed: int):
        return build_model(model, seed), build_clip(model, seed), build_vae(model, seed)


NODE_ID = "RSDevTinyDiTLoader"
# stock loader -> {its output slot: the TinyDiTLoader slot with the same type}
LOADER_SLOTS = {
    "UNETLoader": {0: 0}, "DualCLIPLoader": {0: 1}, "TripleCLIPLoader": {0: 1}, "CLIPLoader": {0: 1},
    "VAELoader": {0: 2}, "CheckpointLoaderSimple": {0: 0, 1: 1, 2: 2},
}


def substitute_loaders(prompt: dict, name: str, seed: int = 0) -> dict:
    """A copy of the API-format `prompt` in which every stock loader is replaced by one TinyDiTLoader of
    `name`: links to a loader's outputs are redirected to the tiny loader's output of the same type."""
    _model_entry(name)
    loaders = {nid for nid, node in prompt.items() if node.get("class_type") in LOADER_SLOTS}
    if not loaders:
        raise TinyDiTError(f"the workflow has no loader to substitute (expected one of {sorted(LOADER_SLOTS)})")
    tiny_id = "tiny_dit"
    out = {tiny_id: {"class_type": NODE_ID, "inputs": {"model": name, "seed": seed}}}
    for nid, node in prompt.items():
        if nid in loaders:
            continue
        inputs = {}
        for key, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in loaders:
                slots = LOADER_SLOTS[prompt[str(value[0])]["class_type"]]
                value = [tiny_id, slots[int(value[1])]]
            inputs[key] = value
        out[nid] = {**node, "inputs": inputs}
    return out


@contextlib.contextmanager
def registered_node():
    """Within the block, TinyDiTLoader is in ComfyUI's node table (this process); removed after."""
    import nodes

    before = nodes.NODE_CLASS_MAPPINGS.get(NODE_ID), nodes.NODE_DISPLAY_NAME_MAPPINGS.get(NODE_ID)
    nodes.NODE_CLASS_MAPPINGS[NODE_ID] = TinyDiTLoader
    nodes.NODE_DISPLAY_NAME_MAPPINGS[NODE_ID] = "Tiny DiT Loader (tests)"
    try:
        yield NODE_ID
    finally:
        for table, value in zip((nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS), before):
            if value is None:
                table.pop(NODE_ID, None)
            else:
                table[NODE_ID] = value
