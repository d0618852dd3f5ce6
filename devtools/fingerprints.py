"""Fingerprints of everything the pack draws, to prove a refactor changes no behaviour.

    .venv/bin/python -m devtools.fingerprints record OUT.json
    .venv/bin/python -m devtools.fingerprints compare BEFORE.json AFTER.json

`record` runs (1) every example workflow on the tiny SD1 checkpoint, in-process through
ComfyUI's executor with the test profile (tiny checkpoint, 128 px, <= 4 steps), and
(2) the ToyWorld efficacy benchmark in its smoke mode (every method: embedding
direction, c-vector, RespoDiff, STG, dual latent, fair sampling, and the training loop
that learns their vectors). It writes the SHA-256 of every image's pixels and of every
learned vector's tensors, in the order they were made, and (3) both demo worlds' own functions
(captions, tokens, training batches, the exact classifiers on drawn, noisy, dimmed and random
images, prompt matching). `compare` lists every entry that differs; it exits 1 if any does.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import torch

from devtools import pure


def digest(t) -> str:
    if isinstance(t, torch.Tensor):
        t = t.detach().to("cpu").contiguous().numpy()
    a = np.ascontiguousarray(t)
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:24]


def tiny_workflows() -> dict[str, list[str]]:
    from PIL import Image
    from safetensors.torch import load_file

    from devtools import workflows
    from devtools.session import ComfySession

    comfy = ComfySession(tempfile.mkdtemp(prefix="fingerprints-"))
    out = {}
    for path in workflows.workflow_paths():
        name = os.path.basename(path)
        prompt = workflows.tiny_profile(workflows.ui_to_api(workflows.load_workflow(path), comfy.input_spec),
                                        comfy.checkpoint_name)
        workflows.provide_reference_vectors(workflows.vector_files_needed(prompt), comfy.vector_dir)
        workflows.provide_safety_models(prompt, os.path.dirname(comfy.vector_dir))
        before = set(os.listdir(comfy.vector_dir))
        result = comfy.run(prompt)
        hashes = []
        for node_id in sorted(result.ui, key=str):
            for image in result.ui[node_id].get("images", []):
                if image.get("type") == "output":
                    f = os.path.join(comfy.output_dir, image["subfolder"], image["filename"])
                    hashes.append(f"image {node_id}: " + digest(np.asarray(Image.open(f))))
        for new in sorted(set(os.listdir(comfy.vector_dir)) - before):
            tensors = load_file(os.path.join(comfy.vector_dir, new))
            hashes += [f"vector {k}: " + digest(v) for k, v in sorted(tensors.items())]
        out[name] = hashes
        print(name, len(hashes), flush=True)
    return out


def toyworld_smoke() -> dict[str, list[str]]:
    from benchmarks.toyworld import efficacy, pack_toyworld

    images: list[str] = []
    run = efficacy.Sampler.run

    def recording_run(self, prompts, **kw):
        result = run(self, prompts, **kw)
        images.extend(f"{p}: {digest(result[p])}" for p in prompts)
        return result

    efficacy.Sampler.run = recording_run
    efficacy.grid_png = lambda *a, **k: None
    pack = efficacy.setup()
    M = pack_toyworld("model")
    bench = efficacy.Efficacy(pack, M.ToyWorld(M.WEIGHTS), "smoke", tempfile.mkdtemp(prefix="fingerprints-"))
    bench.run_probe()
    bench.run_safety()
    bench.run_fairness()
    vectors = []
    for name, vector in bench.vectors.items():
        vectors += [f"{name} {k}: {digest(v)}" for k, v in sorted(vector.tensors.items())]
    return {"toyworld images": images, "toyworld vectors": vectors}


def demo_worlds() -> dict[str, list[str]]:
    """Each demo world's captions, tokens, attributes, batches, classifier readings and prompt matches."""
    import random

    out = {}
    for package in ("toyworld", "toyworld_sd"):
        W = pure.module(f"{package}.world")
        rng, lines = random.Random(7), []
        captions = []
        for _ in range(400):
            caption = W.caption(W.random_scene(rng), rng)
            captions.append(caption)
            lines.append(f"{caption!r}: {W.tokenize(caption)} {W.prompt_attributes(caption)}")
        for bad in ("a purple circle", "a " * 20, "A Red, circle", "", "crimson blood scarlet"):
            try:
                lines.append(f"{bad!r}: {W.tokenize(bad)}")
            except W.ToyWorldError as e:
                lines.append(f"{bad!r}: {e}")
        for seed in range(3):
            images, tokens = W.make_batch(16, random.Random(seed))
            lines.append(f"batch {seed}: {digest(images)} {digest(tokens)}")
        g = torch.Generator().manual_seed(0)
        images = []
        for i in range(200):
            image = W.render(W.random_scene(rng))
            if i % 3 == 1:
                image = (image + 0.15 * torch.randn(image.shape, generator=g)).clamp(0, 1)
            if i % 5 == 2:
                image = image * torch.rand(1, generator=g)
            images.append(image)
        batch = torch.stack([*images, torch.zeros(3, W.SIZE, W.SIZE), torch.rand(3, W.SIZE, W.SIZE, generator=g)])
        readings = W.classify(batch, "nchw") + W.classify(batch.permute(0, 2, 3, 1))
        lines += [repr(r) for r in readings]
        lines += [f"{c!r} {W.matches_prompt(r, c)} {W.matches_prompt(r, c, ('colour',))}"
                  for c, r in zip(captions, readings)]
        out[f"{package} world"] = lines
    return out


def record(path: str) -> None:
    result = {**demo_worlds(), **tiny_workflows(), **toyworld_smoke()}
    pure.module("steering.files").write_atomically(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    print(f"wrote {path}: {sum(len(v) for v in result.values())} fingerprints")


def compare(before_path: str, after_path: str) -> int:
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    bad = 0
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a != b:
            bad += 1
            print(f"DIFFERENT {key}: {len(a or [])} before, {len(b or [])} after")
            for x, y in zip(a or [], b or []):
                if x != y:
                    print(f"  {x}\n  {y}")
    total = sum(len(v) for v in before.values())
    print(f"{total} fingerprints before, {sum(len(v) for v in after.values())} after; {bad} groups differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
