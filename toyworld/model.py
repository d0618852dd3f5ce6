"""ToyWorld's model: a tiny pixel-space text-to-image diffusion model built from ComfyUI's
own classes (comfy.model_base.BaseModel + openaimodel.UNetModel, wrapped in a ModelPatcher),
so ComfyUI samples it with its real UNet code, samplers, schedulers and model patches.

* Latent: a fixed, exact, invertible mapping of the 32x32 RGB image in [-1, 1]: 2x2 pixel
  unshuffle, i.e. [12, 16, 16] (scale factor 1). ``decode`` shuffles back and maps to
  ComfyUI IMAGE [B, 32, 32, 3] in [0, 1]. No learned VAE, so nothing hides model errors.
* UNet: 32 -> 64 channels at 16/8 latent px, cross-attention at 8 px and in the middle
  block; the bottleneck (h-space, middle-block output) is [64, 8, 8] and the
  pack's BottleneckOffsetPatch at ("output", 0) applies to it.
* Text encoder: a learned token + position embedding of width 768 over 10 tokens
  (BOS, at most 8 words, EOS, padding): conditioning [B, 10, 768], SD1.x's width, which
  ComfyUI's CONDITIONING carries (embedding directions for it are [10, 768]).
* Noise schedule: ComfyUI's default discrete schedule (SD1.x's scaled-linear betas) with
  v-prediction (``ModelType.V_PREDICTION``, as SD2.x-768): well conditioned at high noise,
  which a model trained for minutes needs (epsilon-prediction left noise in the samples);
  rescaled to zero terminal SNR (ComfyUI's ``zsnr``, Lin et al. 2023). Without it the
  schedule's last step still carries the image's mean brightness, so samples, which start
  from zero-mean noise, cannot reproduce how often each background occurs: the data's 85 %
  dark backgrounds came out as ~60 % whatever the sampler, steps or CFG.
"""
from __future__ import annotations

import functools
import os

import torch

from . import world
from .world import ToyWorldError

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "toyworld.safetensors")
# Vector files learned on ToyWorld: a steering_vectors folder of its own, whose files the vector
# loader lists as "toyworld/<name>.safetensors".
VECTOR_ROOT = os.path.join(HERE, "steering_vectors")
VECTOR_DIR = os.path.join(VECTOR_ROOT, "toyworld")
CONTEXT_DIM = 768
IMAGE_SIZE = world.SIZE
LATENT_CHANNELS, LATENT_SIZE = 12, world.SIZE // 2

UNET_CONFIG = {
    "image_size": LATENT_SIZE,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "model_channels": 32,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1],
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
BOTTLENECK_SHAPE = (UNET_CONFIG["model_channels"] * UNET_CONFIG["channel_mult"][-1], LATENT_SIZE // 2, LATENT_SIZE // 2)


def encode_images(images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, 32, 32] in [-1, 1] -> latents [B, 12, 16, 16] (exact, invertible)."""
    return torch.nn.functional.pixel_unshuffle(images, 2)


def decode_nchw(latent: torch.Tensor) -> torch.Tensor:
    """Latents [B, 12, 16, 16] -> images [B, 3, 32, 32] in [0, 1] (exact, differentiable)."""
    return (torch.nn.functional.pixel_shuffle(latent.float(), 2) / 2 + 0.5).clamp(0, 1)


def decode(latent: torch.Tensor) -> torch.Tensor:
    """Latents [B, 12, 16, 16] -> ComfyUI IMAGE [B, 32, 32, 3] in [0, 1]."""
    return decode_nchw(latent).permute(0, 2, 3, 1).contiguous()


ARCH_NAME = "toyworld"


@functools.cache
def config_class():
    """ToyWorld's model-config class (one class per process, so the pack can recognise it)."""
    import comfy.latent_formats
    import comfy.supported_models_base

    class ToyWorldLatent(comfy.latent_formats.LatentFormat):
        scale_factor = 1.0
        latent_channels = LATENT_CHANNELS
        spacial_downscale_ratio = 2  # 2x2 pixel unshuffle: 32 px images, 16 px latents

    class ToyWorldConfig(comfy.supported_models_base.BASE):
        unet_config = {}
        unet_extra_config = {}
        latent_format = ToyWorldLatent
        memory_usage_factor = 1.0
        sampling_settings = {"zsnr": True}  # zero terminal SNR (see the module docstring)

    return ToyWorldConfig


def register_architecture() -> str:
    """Teach the pack's architecture table ToyWorld: conditioning [B, 10, 768], bottleneck 64 channels,
    32 px images; vector files may then say arch "toyworld". The pack does this when it loads."""
    from ..steering import architectures

    architectures.register_architecture(
        architectures.Architecture(ARCH_NAME, "ToyWorld (the pack's demo model)", CONTEXT_DIM, world.MAX_TOKENS,
                                   None, BOTTLENECK_SHAPE[0], native_resolution=IMAGE_SIZE),
        config_classes=(config_class(),))
    return ARCH_NAME


class PixelDecoder:
    """ToyWorld's exact decode as a differentiable decoder for STG (the pack's decoder interface):
    model-space latent x0 [B, 12, 16, 16] -> NCHW image [B, 3, 32, 32] in [0, 1]."""

    def modules(self):
        return []

    def patchers(self):
        return []

    def __call__(self, x0: torch.Tensor, base_model=None) -> torch.Tensor:
        return decode_nchw(x0)


class TextEncoder(torch.nn.Module):
    """Token ids [B, 10] -> conditioning [B, 10, 768] (learned token + position embeddings, layer-normed). `world`
    gives the vocabulary and the prompt length, so another demo world's encoder is this class with its world."""

    world = world

    def __init__(self):
        super().__init__()
        self.token_embedding = torch.nn.Embedding(len(self.world.VOCAB), CONTEXT_DIM)
        self.position_embedding = torch.nn.Parameter(torch.zeros(self.world.MAX_TOKENS, CONTEXT_DIM))
        self.norm = torch.nn.LayerNorm(CONTEXT_DIM)
        torch.nn.init.normal_(self.token_embedding.weight, std=1.0)
        torch.nn.init.normal_(self.position_embedding, std=0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.token_embedding(tokens) + self.position_embedding)


def init_weights(unet: torch.nn.Module, seed: int) -> None:
    """Seeded standard init (ComfyUI's ops skip init); output convs start at zero."""
    torch.manual_seed(seed)
    for m in unet.modules():
        for base in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(m, base):
                base.reset_parameters(m)
                break
    torch.nn.init.zeros_(unet.out[-1].weight)
    torch.nn.init.zeros_(unet.out[-1].bias)


def build_base_model(device="cpu"):
    """A comfy.model_base.BaseModel with ToyWorld's UNet (weights uninitialised)."""
    import comfy.model_base

    config = config_class()(dict(UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION, device=device)


class ToyWorld:
    """The trained model as ComfyUI objects: ``model`` (MODEL), ``encode`` (CONDITIONING), ``decode``.

    The class attributes name its parts, so that another demo world (toyworld_sd) is this class with other parts."""

    label = "ToyWorld"
    world = world
    weights = WEIGHTS
    text_encoder_class = TextEncoder
    build_base_model = staticmethod(build_base_model)
    latent_shape = (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)

    def __init__(self, path: str | None = None, device: str = "cpu"):
        import comfy.model_patcher
        import comfy.utils

        path = path or self.weights
        if not os.path.isfile(path):
            raise ToyWorldError(f"{self.label} weights not found at {path}; they ship with the pack "
                                f"({os.path.relpath(self.weights, os.path.dirname(HERE))}), or run "
                                "benchmarks/toyworld/train.py")
        state = comfy.utils.load_torch_file(path, safe_load=True)
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            self.metadata = dict(f.metadata() or {})
        base = self.build_base_model()
        unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
        base.diffusion_model.load_state_dict(unet_state, strict=True)
        self.text_encoder = self.text_encoder_class()
        self.text_encoder.load_state_dict(
            {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}, strict=True)
        self.text_encoder.eval().requires_grad_(False)
        dev = torch.device(device)
        self.model = comfy.model_patcher.ModelPatcher(base, load_device=dev, offload_device=torch.device("cpu"))

    def embed(self, prompts: list[str]) -> torch.Tensor:
        tokens = torch.tensor([self.world.tokenize(p) for p in prompts])
        with torch.no_grad():
            return self.text_encoder(tokens)

    def encode(self, prompt: str) -> list:
        """ComfyUI CONDITIONING for one prompt: [[tensor [1, tokens, 768], {}]] (ToyWorld: 10 tokens)."""
        return [[self.embed([prompt]), {}]]

    decode = staticmethod(lambda latent: decode(latent))

    def sample(self, prompt: str, seed: int = 0, batch: int = 16, steps: int = 20, cfg: float = 4.0,
               sampler: str = "euler", scheduler: str = "normal", model=None, positive=None,
               negative=None) -> torch.Tensor:
        """IMAGE batch sampled by ComfyUI (comfy.sample.sample) for one prompt and seed."""
        import comfy.sample

        latent = torch.zeros(batch, *self.latent_shape)
        positive = positive if positive is not None else self.encode(prompt)
        negative = negative if negative is not None else self.encode("")
        noise = comfy.sample.prepare_noise(latent, seed)
        out = comfy.sample.sample(model or self.model, noise, steps, cfg, sampler, scheduler, positive,
                                  negative, latent, disable_pbar=True, seed=seed)
        return self.decode(out.float())
