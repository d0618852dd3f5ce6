"""ToyWorld-SD as ComfyUI's own types, built as ToyWorld's (toyworld/comfy_objects.py): MODEL (a ModelPatcher
around ComfyUI's BaseModel + UNetModel), CLIP (a real ``comfy.sd.CLIP`` over ToyWorld-SD's text encoder (per-token
embeddings, knowing its 29 words)) and VAE (the same exact pixel shuffle as ToyWorld's: both draw 32 x 32)."""
from __future__ import annotations

from ..toyworld import comfy_objects as toyworld_objects
from . import model as M
from . import world

TOKEN_KEY = toyworld_objects.TOKEN_KEY


class ToyWorldSDTokenizer(toyworld_objects.ToyWorldTokenizer):
    """Text -> one chunk of ToyWorld-SD's 16 tokens; other words are refused with its vocabulary."""

    world = world


class ToyWorldSDTextModel(toyworld_objects.ToyWorldTextModel):
    """ComfyUI's cond_stage_model protocol over ToyWorld-SD's text encoder."""

    encoder_class = M.TextEncoder


ToyWorldSDVAE = toyworld_objects.ToyWorldVAE


def load(path: str = M.WEIGHTS):
    """(MODEL, CLIP, VAE) of the ToyWorld-SD weights at `path`, loaded once per file version. Callers clone
    before patching, as with any checkpoint."""
    return toyworld_objects.load(path, M.ToyWorldSD, ToyWorldSDTokenizer, ToyWorldSDTextModel)
