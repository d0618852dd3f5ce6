"""A tiny random CLIP model in the Hugging Face layout, for tests and the example-workflow runner.

Real CLIP weights are never downloaded; this stands in for a user's local CLIP folder
(models/safety_clip/<name>/config.json + model.safetensors). The tokenizer is not
written: the pack then uses the CLIP BPE tokenizer that ComfyUI ships.
"""
from __future__ import annotations

import os
import shutil
import tempfile


def write_tiny_clip(folder: str, seed: int = 0) -> str:
    """Write a seeded random CLIPModel (vocab of CLIP's BPE, width 32, one layer) into `folder` atomically."""
    import torch
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
