"""ToyWorld as ComfyUI's own types, so the stock nodes work with it: MODEL (a ModelPatcher around
ComfyUI's BaseModel + UNetModel, see model.py), CLIP (a real ``comfy.sd.CLIP`` whose text model is
ToyWorld's token + position embedding) and VAE (ToyWorld's exact pixel shuffle).

Design:
* CLIP is ComfyUI's class, built from a ``ClipTarget`` like every checkpoint's text encoder, so
  CLIPTextEncode, ConditioningSetTimestepRange, clone() and hooks behave as for SD. The tokenizer
  knows ToyWorld's 21 words only and refuses others with the vocabulary; prompt weights ``(word:1.2)``
  are not part of ToyWorld's language. The text model has no pooled output (None), like SD1's
  conditioning is read by the UNet: ToyWorld's UNet takes no pooled vector.
* VAE is a thin equivalent of ``comfy.sd.VAE`` (decode, encode and the compression factors VAEDecode,
  VAEEncode and the latent nodes ask for): ToyWorld has no learned VAE, its latent is the image
  unshuffled 2x2. ``differentiable_decoder()`` gives STG the same exact decode.
* The text model sets ``disable_offload``, so newer ComfyUI builds it a plain ModelPatcher (no dynamic
  VRAM for a 16 KB embedding).
"""
from __future__ import annotations

import functools
import os

import torch

from . import model as M
from . import world

TOKEN_KEY = "toyworld"


class ToyWorldTokenizer:
    """Text -> {"toyworld": [[(token id, weight), ...]]}: one chunk of ToyWorld's 10 tokens (`world`: the world
    whose vocabulary it knows)."""

    world = world

    def __init__(self, embedding_directory=None, tokenizer_data=None):
        pass

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs) -> dict:
        ids = self.world.tokenize(text)
        if return_word_ids:  # BOS, EOS and padding belong to no word (0), words count from 1
            special = (self.world.BOS, self.world.EOS, self.world.PAD)
            words = [0] + [i + 1 for i in range(sum(1 for t in ids if t not in special))]
            words += [0] * (len(ids) - len(words))
            return {TOKEN_KEY: [[(t, 1.0, w) for t, w in zip(ids, words)]]}
        return {TOKEN_KEY: [[(t, 1.0) for t in ids]]}

    def untokenize(self, token_weight_pair):
        names = {v: k for k, v in self.world.VOCAB.items()}
        return [(pair, names.get(pair[0], "?")) for pair in token_weight_pair]

    def state_dict(self) -> dict:
        return {}


class ToyWorldTextModel(torch.nn.Module):
    """ComfyUI's cond_stage_model protocol over ToyWorld's TextEncoder (`encoder_class`)."""

    disable_offload = True
    encoder_class = M.TextEncoder

    def __init__(self, device=None, dtype=None, model_options=None):
        super().__init__()
        self.encoder = self.encoder_class()
        self.dtypes = {torch.float32}
        self.execution_device = None

    def reset_clip_options(self) -> None:
        self.execution_device = None

    def set_clip_options(self, options: dict) -> None:
        self.execution_device = options.get("execution_device", self.execution_device)

    def encode_token_weights(self, token_weight_pairs: dict):
        chunks = token_weight_pairs[TOKEN_KEY]
        device = self.execution_device or self.encoder.position_embedding.device
        tokens = torch.tensor([[pair[0] for pair in chunk] for chunk in chunks], device=device)
        cond = self.encoder(tokens)
        return cond.reshape(1, -1, cond.shape[-1]), None

    def load_sd(self, sd: dict):
        return self.encoder.load_state_dict(sd, strict=False)


class ToyWorldVAE:
    """ToyWorld's latent <-> image mapping with the parts of comfy.sd.VAE that nodes call."""

    latent_channels = M.LATENT_CHANNELS
    downscale_ratio = upscale_ratio = world.SIZE // M.LATENT_SIZE

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """LATENT samples [B, 12, 16, 16] -> IMAGE [B, 32, 32, 3] in 0..1."""
        import comfy.model_management

        return M.decode(samples).to(comfy.model_management.intermediate_device())

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, 3] -> latent [B, 12, H/2, W/2] (exact; ToyWorld draws 32 x 32)."""
        images = pixels[..., :3].permute(0, 3, 1, 2).float() * 2 - 1
        return M.encode_images(images)

    def spacial_compression_decode(self) -> int:
        return self.upscale_ratio

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    def temporal_compression_decode(self):
        return None

    def differentiable_decoder(self) -> M.PixelDecoder:
        return M.PixelDecoder()


def make_clip(state: dict, tokenizer: type = ToyWorldTokenizer, text_model: type = ToyWorldTextModel):
    """A comfy.sd.CLIP whose text model holds ToyWorld's text-encoder weights (`state`: its state dict)."""
    import comfy.sd
    import comfy.supported_models_base

    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(tokenizer, text_model))
    clip.cond_stage_model.encoder.load_state_dict(state, strict=True)
    clip.cond_stage_model.encoder.eval().requires_grad_(False)
    return clip


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float, model_class: type, tokenizer: type, text_model: type):
    toy = model_class(path)
    return toy.model, make_clip(toy.text_encoder.state_dict(), tokenizer, text_model), ToyWorldVAE()


def load(path: str = M.WEIGHTS, model_class: type = M.ToyWorld, tokenizer: type = ToyWorldTokenizer,
         text_model: type = ToyWorldTextModel):
    """(MODEL, CLIP, VAE) of the weights at `path` (ToyWorld's, or another demo world's with its `model_class`,
    `tokenizer` and `text_model`), loaded once per file version. Callers clone before patching, as with any
    checkpoint."""
    if not os.path.isfile(path):
        raise world.ToyWorldError(f"{model_class.label} weights not found at {path}; they ship with the pack as "
                                  f"{os.path.relpath(model_class.weights, os.path.dirname(M.HERE))}")
    return _load(os.path.realpath(path), os.path.getmtime(path), model_class, tokenizer, text_model)
