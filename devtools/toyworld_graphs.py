"""API-format prompts that draw with ToyWorld (the pack's demo model), for the tests and benchmarks that send
prompts to a real server: ``sampled`` loads ToyWorld and samples a text (nodes ``load``, ``pos``, ``neg``,
``latent``, ``sampler``, ``decode``, each id after `prefix`), ``saved`` adds a Save Image (``save``)."""
from __future__ import annotations


def sampled(text: str, seed: int = 1000, batch: int = 2, steps: int = 4, cfg: float = 4.0, prefix: str = "") -> dict:
    """ToyWorld loaded and `text` sampled `batch` times from `seed` (euler, normal), decoded."""
    p = prefix
    return {
        f"{p}load": {"class_type": "RSLoadToyWorld", "inputs": {}},
        f"{p}pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": [f"{p}load", 1]}},
        f"{p}neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": [f"{p}load", 1]}},
        f"{p}latent": {"class_type": "RSToyWorldEmptyLatent", "inputs": {"batch_size": batch}},
        f"{p}sampler": {"class_type": "KSampler", "inputs": {
            "model": [f"{p}load", 0], "positive": [f"{p}pos", 0], "negative": [f"{p}neg", 0],
            "latent_image": [f"{p}latent", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0}},
        f"{p}decode": {"class_type": "VAEDecode", "inputs": {"samples": [f"{p}sampler", 0], "vae": [f"{p}load", 2]}},
    }


def save_image(images, filename_prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": filename_prefix}}


def saved(text: str, filename_prefix: str, **options) -> dict:
    """``sampled(text, **options)`` and a Save Image of the decoded images (node ``save``)."""
    prompt = sampled(text, **options)
    prompt["save"] = save_image([f"{options.get('prefix', '')}decode", 0], filename_prefix)
    return prompt
