"""How much a demo model uses one attribute's word: its denoising loss with the right word against a wrong one.

    .venv/bin/python -m benchmarks.toyworld.word_use --world toyworld_sd [--attribute shape] WEIGHTS [WEIGHTS ...]

Scenes of the world are drawn (seeded), captioned with every attribute named, and noised at four noise levels
(the same noise for every model). For each level the model's v-prediction loss is computed with the scene's
caption and with the caption whose word for `attribute` names the next value instead (a circle's caption says
"square"). The relative gap (wrong - right) / right says how much the prediction depends on that word: 0 when the
model ignores it. A model can colour its objects but not shape them when the shape gap stays near 0 at middle
noise, where a sample's outline is drawn (ToyWorld, which draws its shapes: +51 % at t = 500).
"""
from __future__ import annotations

import argparse
import random

import torch

from benchmarks.toyworld import pack_toyworld
from benchmarks.toyworld.efficacy import PROFILES
from benchmarks.toyworld.train import v_prediction_pair
from devtools import comfy_env

TIMESTEPS = (250, 500, 700, 850)  # of ComfyUI's 1000 discrete steps; larger is noisier
VALUES = {"shape": "SHAPES", "colour": "COLOURS", "size": "SIZES", "background": "BACKGROUNDS"}


def caption(scene, attribute: str, value: str) -> str:
    """The scene's caption with every attribute named, `attribute` saying `value`."""
    said = {k: getattr(scene, k, None) for k in VALUES}
    said[attribute] = value
    size = f"{said['size']} " if said["size"] else ""
    return f"a {size}{said['colour']} {said['shape']} on a {said['background']} background"


def word_use(package: str, weights: list[str], attribute: str = "shape", n: int = 96, seed: int = 123,
             noise_seed: int = 0) -> dict:
    """{weights path: {timestep: relative loss gap}} for `n` seeded scenes."""
    M, world = pack_toyworld("model", package), pack_toyworld("world", package)
    if not hasattr(world, VALUES[attribute]):
        raise SystemExit(f"{package}'s scenes have no {attribute}; they have {list(world.ATTRIBUTES)}")
    rng = random.Random(seed)
    scenes = [world.random_scene(rng) for _ in range(n)]
    x0 = M.encode_images(torch.stack([world.render(s) for s in scenes]) * 2 - 1)
    values = list(getattr(world, VALUES[attribute]))
    right = torch.tensor([world.tokenize(caption(s, attribute, getattr(s, attribute))) for s in scenes])
    wrong = torch.tensor([world.tokenize(caption(s, attribute, values[(values.index(getattr(s, attribute)) + 1)
                                                                        % len(values)])) for s in scenes])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(noise_seed))
    gaps = {}
    for path in weights:
        model = PROFILES[package].load(path)
        base = model.model.model
        unet, sigmas = base.diffusion_model, base.model_sampling.sigmas
        gaps[path] = {}
        with torch.no_grad():
            context_right, context_wrong = model.text_encoder(right), model.text_encoder(wrong)
            for t in TIMESTEPS:
                x_in, target = v_prediction_pair(x0, noise, sigmas[t])
                steps = torch.full((n,), float(t))
                loss_right = float((unet(x_in, steps, context=context_right) - target).square().mean())
                loss_wrong = float((unet(x_in, steps, context=context_wrong) - target).square().mean())
                gaps[path][t] = (loss_wrong - loss_right) / loss_right
    return gaps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=sorted(PROFILES), default="toyworld_sd")
    parser.add_argument("--attribute", choices=sorted(VALUES), default="shape")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("weights", nargs="+")
    args = parser.parse_args(argv)
    comfy_env.setup()
    torch.set_num_threads(args.threads)
    for path, gaps in word_use(args.world, args.weights, args.attribute).items():
        print(path, " ".join(f"t{t}: {100 * g:+.1f}%" for t, g in gaps.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
