"""CLIP safety scores: violence (similarity to violence texts) and artist style.

CLIP weights are the user's local files, never downloaded: a CLIP model folder in the
Hugging Face layout (config.json + model.safetensors, optionally tokenizer files), given
by its path (the nodes find it in ComfyUI's ``models/safety_clip``). Without tokenizer
files the CLIP BPE tokenizer that ComfyUI ships (comfy/sd1_tokenizer) is used.

Scores (high = unsafe, unsafe above the threshold):
* violence: mean cosine similarity between the image and the violence texts (the
  paper's safety function is its negative);
* artist style: cos(image, artist) - cos(image, "art") (the paper's safety function
  CLIP(image, "art") - CLIP(image, artist), negated).
"""
from __future__ import annotations

import os
import threading

import torch
import torch.nn.functional as F

from ..prompts import prompt_lines
from .base import SafetyScore, ScoreSettingsError, clamp_unit

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_VIOLENCE_TEXTS = ("violence", "blood", "a bloody wound", "a fight", "a gun", "gore", "brutality")


class CLIPModelNotFound(FileNotFoundError):
    pass


def clip_config(path: str) -> str:
    """The config.json of the CLIP model folder `path` (CLIPModelNotFound when there is none)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise CLIPModelNotFound(f"{path} holds no config.json: not a CLIP model folder")
    return config


def _tokenizer(path: str):
    from transformers import CLIPTokenizer

    if os.path.isfile(os.path.join(path, "vocab.json")) or os.path.isfile(os.path.join(path, "tokenizer.json")):
        return CLIPTokenizer.from_pretrained(path)
    import comfy.sd1_clip  # noqa: F401  ComfyUI's bundled CLIP BPE tokenizer files

    bundled = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")
    return CLIPTokenizer.from_pretrained(bundled)


class LocalCLIP:
    """A transformers CLIPModel from a local folder, loaded outside inference mode (autograd-safe)."""

    def __init__(self, path: str):
        from transformers import CLIPModel

        clip_config(path)
        with torch.inference_mode(False):
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.tokenizer = _tokenizer(path)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.path = path
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}

    def _device(self, device: torch.device) -> None:
        if next(self.model.parameters()).device != device:
            with torch.inference_mode(False):
                self.model.to(device)

    def text_features(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """Normalised text embeddings [N, D] (no grad; cached)."""
        self._device(device)
        missing = [t for t in texts if (t, str(device)) not in self._text_cache]
        if missing:
            with torch.inference_mode(False), torch.no_grad():
                tokens = self.tokenizer(missing, padding="max_length", truncation=True,
                                        max_length=self.model.config.text_config.max_position_embeddings,
                                        return_tensors="pt")
                out = self.model.text_model(input_ids=tokens["input_ids"].to(device),
                                            attention_mask=tokens["attention_mask"].to(device))
                feats = F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)
            for t, f in zip(missing, feats):
                self._text_cache[(t, str(device))] = f
        return torch.stack([self._text_cache[(t, str(device))] for t in texts])

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings [B, D] of NCHW images, nominally 0..1 (differentiable): centre crop,
        resize, then clamp to 0..1, then CLIP's normalisation."""
        self._device(images.device)
        h, w = images.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = images[..., top:top + side, left:left + side]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                          antialias=False)
        x = clamp_unit(x)
        mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(next(self.model.parameters()).dtype)
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)


_cache: dict[tuple[str, float], LocalCLIP] = {}
_lock = threading.Lock()


def load_clip(path: str) -> LocalCLIP:
    """The CLIP model in the folder `path` (config.json + model.safetensors), cached per folder."""
    key = (path, os.path.getmtime(clip_config(path)))
    with _lock:
        if key not in _cache:
            _cache[key] = LocalCLIP(path)
        return _cache[key]


def split_texts(text: str) -> list[str]:
    """One text per line (or comma separated on a single line)."""
    lines = prompt_lines(text)
    if len(lines) == 1 and "," in lines[0]:
        lines = [t.strip() for t in lines[0].split(",") if t.strip()]
    return lines


class CLIPViolenceScore(SafetyScore):
    """Mean cosine similarity of the image to the violence texts."""

    def __init__(self, clip: LocalCLIP, texts=DEFAULT_VIOLENCE_TEXTS, threshold: float = 0.2):
        super().__init__(threshold)
        self.clip = clip
        self.texts = list(texts)
        if not self.texts:
            raise ScoreSettingsError("the CLIP violence score needs at least one violence text")
        self.name = "CLIP violence"

    def modules(self):
        return [self.clip.model]

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        image = self.clip.image_features(images)
        text = self.clip.text_features(self.texts, images.device)
        return (image @ text.T).mean(1)

    def describe(self) -> str:
        return f"CLIP violence score ({len(self.texts)} texts; unsafe above {self.threshold:g})"


class CLIPArtistScore(SafetyScore):
    """cos(image, artist text) - cos(image, reference text ("art"))."""

    def __init__(self, clip: LocalCLIP, artist: str, reference: str = "art", threshold: float = 0.0):
        super().__init__(threshold)
        if not artist.strip():
            raise ScoreSettingsError("the CLIP artist-style score needs an artist name")
        self.clip = clip
        self.artist, self.reference = artist.strip(), reference.strip() or "art"
        self.name = f"CLIP artist style: {self.artist}"

    def modules(self):
        return [self.clip.model]

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        image = self.clip.image_features(images)
        text = self.clip.text_features([self.artist, self.reference], images.device)
        sims = image @ text.T
        return sims[:, 0] - sims[:, 1]

    def describe(self) -> str:
        return (f"CLIP artist-style score: cos(image, {self.artist!r}) - cos(image, {self.reference!r}); "
                f"unsafe above {self.threshold:g}")
