"""Where does ToyWorld (or ToyWorld-SD) decide an attribute? Activation patching along the UNet's paths.

Sample prompt A while, at every step and on the same noisy latent, some of the UNet's
activations come from prompt B instead: the bottleneck (what h-space methods steer), the
bottleneck and every skip connection (the whole encoder path), or everything (prompt B
itself, a control); or the reverse of the bottleneck + skips swap: only the decoder's
cross-attention reads prompt B. The table gives the share of images that take prompt
B's value of the attribute. Run: ``python -m benchmarks.toyworld.activation_patching [--world toyworld_sd]``.

With ``--offsets``, three more columns ask what a *constant* bottleneck offset (all an h-space
vector is) can do, from the best to the most constrained: B's bottleneck minus A's averaged over
the images of each step (one offset per step, the same for every image), then that difference
averaged over the steps too, added by the pack's own h-space patch at strength 1 (one offset for
every step and image: the best constant vector these trajectories suggest, not a learned one).

With ``--bottleneck-use``, another table (instead of the swaps) asks whether the decoder reads the
bottleneck at all, and how much each decoder level passes up: the same prompts sampled with the
bottleneck scaled (0: removed, 2: doubled), or with a later output block's main input removed, at
every step and in both CFG branches, against plain samples on the same seeds (the share of images
whose reading changes, and the mean absolute pixel change on the [0, 1] scale).
"""
from __future__ import annotations

import argparse
import sys

import torch

# (attribute, prompt A, prompt B, prompt B's value)
TOYWORLD_PAIRS = [
    ("background", "a shape", "a shape on a light background", "light"),
    ("background", "a blue circle", "a blue circle on a light background", "light"),
    ("background", "a shape on a dark background", "a shape on a light background", "light"),
    ("background", "a green circle on a dark background", "a green circle on a light background", "light"),
    ("colour", "a red circle", "a blue circle", "blue"),
    ("colour", "a red shape", "a orange shape", "orange"),
]
PAIRS = {
    "toyworld": TOYWORLD_PAIRS,
    "toyworld_sd": [
        ("background", "a shape", "a shape on a light background", "light"),
        ("background", "a large blue circle", "a large blue circle on a light background", "light"),
        ("background", "a drawing of a small yellow triangle", "a drawing of a small yellow triangle on a light "
                                                               "background", "light"),
        ("colour", "a red circle", "a blue circle", "blue"),
        ("colour", "a large red triangle", "a large orange triangle", "orange"),
        ("colour", "an image of a crimson shape", "an image of a green shape", "green"),
        ("colour", "a shape", "a red shape", "red"),
        ("shape", "a green circle", "a green square", "square"),
        ("size", "a small pink shape", "a large pink shape", "large"),
    ],
}
# prompts of the --bottleneck-use table (seeds 100, 101, ...)
USE_PROMPTS = {
    "toyworld": ["a shape", "a blue circle", "a red square", "a green shape on a light background"],
    "toyworld_sd": ["a shape", "a large blue circle", "a red square", "a small green shape on a light background"],
}
USE_SCALES = (0.0, 2.0)
SWAPS = {"none": "nothing from B", "bottleneck": "B's bottleneck", "bottleneck_and_skips": "B's bottleneck + skips",
         "decoder_context": "B's prompt in the decoder only", "everything": "all from B (control)"}
OFFSET_SWAPS = {"step_mean_offset": "B - A bottleneck, image mean per step",
                "constant_offset": "B - A bottleneck, one constant offset"}


def swapped_model(model, other_context: torch.Tensor, swap: str):
    """A clone of `model` whose conditional rows take the `swap` activations from `other_context`."""
    from devtools import pack

    if swap not in SWAPS and swap != "step_mean_offset":
        raise ValueError(f"swap {swap!r}; expected one of {[*SWAPS, 'step_mean_offset']}")
    middle_block_output = pack.module("steering.comfy_compat").FIRST_OUTPUT_BLOCK
    with_patches = pack.module("training.unet").with_patches
    take_skips = swap in ("bottleneck_and_skips", "decoder_context")

    def wrapper(apply_model, args):
        x, t, c, chunks = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        if swap == "none":
            return apply_model(x, t, **c)
        rows = x.shape[0] // len(chunks)
        context = c["c_crossattn"].clone()
        for j, kind in enumerate(chunks):
            if kind == 0:  # conditional chunk
                context[j * rows:(j + 1) * rows] = other_context.to(context)
        other = {**c, "c_crossattn": context}
        if swap == "everything":
            return apply_model(x, t, **other)
        # decoder_context is bottleneck_and_skips with the prompts' roles exchanged: the encoder path
        # comes from prompt A, and the decoder's cross-attention reads prompt B
        source, target = (c, other) if swap == "decoder_context" else (other, c)
        seen: dict = {}

        def capture(h, hsp, transformer_options):
            seen[transformer_options["block"]] = (h, hsp)
            return h, hsp

        def replace(h, hsp, transformer_options):
            block = transformer_options["block"]
            source_h, source_hsp = seen[block]
            if block == middle_block_output and swap == "step_mean_offset":
                h = h + conditional_mean(source_h - h, chunks)
            elif block == middle_block_output:
                h = source_h
            if take_skips and hsp is not None:
                hsp = source_hsp
            return h, hsp

        def patched(kwargs, patch):
            options = with_patches(kwargs.get("transformer_options", {}), output_block_patch=[patch])
            return {**kwargs, "transformer_options": options}

        apply_model(x, t, **patched(source, capture))
        return apply_model(x, t, **patched(target, replace))

    patched_model = model.clone()
    patched_model.set_model_unet_function_wrapper(wrapper)
    return patched_model


def conditional_mean(delta: torch.Tensor, chunks: list) -> torch.Tensor:
    """`delta` [rows, C, H, W] with each conditional chunk's rows replaced by their mean (one offset for every
    image of the chunk) and the unconditional rows zero."""
    rows = delta.shape[0] // len(chunks)
    out = torch.zeros_like(delta)
    for j, kind in enumerate(chunks):
        if kind == 0:
            out[j * rows:(j + 1) * rows] = delta[j * rows:(j + 1) * rows].mean(dim=0, keepdim=True)
    return out


def mean_bottleneck_offset(tw, prompt_a: str, prompt_b: str, seed: int, images: int, steps: int,
                           cfg: float) -> torch.Tensor:
    """[C, H, W]: prompt B's bottleneck minus prompt A's on A's own trajectory (same latent, same step),
    averaged over the images and the steps of one sampling run of A."""
    from devtools import pack

    middle_block_output = pack.module("steering.comfy_compat").FIRST_OUTPUT_BLOCK
    with_patches = pack.module("training.unet").with_patches
    other_context = tw.embed([prompt_b])
    deltas: list[torch.Tensor] = []

    def wrapper(apply_model, args):
        x, t, c, chunks = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        rows = x.shape[0] // len(chunks)
        context = c["c_crossattn"].clone()
        cond = [j for j, kind in enumerate(chunks) if kind == 0]
        for j in cond:
            context[j * rows:(j + 1) * rows] = other_context.to(context)
        seen: dict = {}

        def capture(name):
            def patch(h, hsp, transformer_options):
                if transformer_options["block"] == middle_block_output:
                    seen[name] = h
                return h, hsp
            return patch

        def patched(kwargs, patch):
            return {**kwargs, "transformer_options": with_patches(kwargs.get("transformer_options", {}),
                                                                   output_block_patch=[patch])}

        apply_model(x, t, **patched({**c, "c_crossattn": context}, capture("b")))
        out = apply_model(x, t, **patched(c, capture("a")))
        deltas.append(torch.stack([(seen["b"] - seen["a"])[j * rows:(j + 1) * rows].mean(0) for j in cond]).mean(0))
        return out

    model = tw.model.clone()
    model.set_model_unet_function_wrapper(wrapper)
    with torch.inference_mode():
        tw.sample(prompt_a, seed=seed, batch=images, steps=steps, cfg=cfg, model=model)
    return torch.stack(deltas).mean(0).clone()


def constant_offset_model(tw, offset: torch.Tensor):
    """ToyWorld's model with `offset` added to the bottleneck's conditional rows at every step, by the pack's
    own h-space patch (steering.hspace, as Apply h-space Vector does) at strength 1."""
    from devtools import pack

    return pack.module("steering.hspace").patch_model_with_offsets(tw.model, offset[None], 1.0, 0.0, 1.0)


def scaled_input_model(model, block: tuple, scale: float, sides: list):
    """A clone of `model` whose output block `block` gets its main input (the bottleneck for the first output
    block, else what the block below passes up) multiplied by `scale` at every step, in every row; the input's
    side is appended to `sides`."""
    def patch(h, hsp, transformer_options):
        if tuple(transformer_options["block"]) == tuple(block):
            sides.append(h.shape[-1])
            h = h * scale
        return h, hsp

    patched_model = model.clone()
    patched_model.set_model_output_block_patch(patch)
    return patched_model


def input_use(tw, world, prompts: list[str], block: tuple, scale: float, images: int, steps: int,
              cfg: float) -> tuple[dict[str, float], float, int]:
    """({attribute: share of images whose reading changes}, mean |pixel change|, the input's side) when output
    block `block`'s main input is scaled by `scale`, against plain samples (prompt i on seed 100 + i)."""
    sides: list[int] = []
    model = scaled_input_model(tw.model, block, scale, sides)
    changed = {k: [] for k in world.ATTRIBUTES}
    pixel_change = []
    for i, prompt in enumerate(prompts):
        with torch.inference_mode():
            plain = tw.sample(prompt, seed=100 + i, batch=images, steps=steps, cfg=cfg)
            scaled = tw.sample(prompt, seed=100 + i, batch=images, steps=steps, cfg=cfg, model=model)
        pixel_change.append(float((plain - scaled).abs().mean()))
        for a, b in zip(world.classify(plain), world.classify(scaled)):
            for k in world.ATTRIBUTES:
                changed[k].append(getattr(a, k) != getattr(b, k))
    return {k: sum(v) / len(v) for k, v in changed.items()}, sum(pixel_change) / len(pixel_change), sides[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images per prompt pair and swap")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--world", choices=sorted(PAIRS), default="toyworld", help="which demo world")
    parser.add_argument("--offsets", action="store_true", help="also the constant-offset columns (see above)")
    parser.add_argument("--bottleneck-use", action="store_true",
                        help="instead, the table of samples with the bottleneck scaled (see above)")
    args = parser.parse_args(argv)
    from benchmarks.common import setup_comfy

    setup_comfy("cpu")
    torch.set_num_threads(1)
    from benchmarks.toyworld import efficacy as E

    profile = E.PROFILES[args.world]
    world = profile.module("world")
    tw = profile.load()
    if args.bottleneck_use:
        from devtools import pack

        first = pack.module("steering.comfy_compat").FIRST_OUTPUT_BLOCK
        blocks = len(tw.model.model.diffusion_model.output_blocks)
        rows = [(first, scale) for scale in USE_SCALES] + [(("output", i), 0.0) for i in range(1, blocks)]
        print(f"{profile.label}: one decoder input scaled at every step, both CFG rows (prompts "
              f"{', '.join(USE_PROMPTS[args.world])}; seeds 100+, {args.images // 2} images each): share of images "
              "whose reading changes, mean |pixel change| (0-1 scale). The first rows scale the bottleneck; the "
              "others remove the main input of a later output block (what the blocks below it pass up; its "
              "skip connection stays).\n")
        print("| input | side | scale | " + " | ".join(world.ATTRIBUTES) + " | mean pixel change |")
        print("|---|---|---|" + "---|" * (len(world.ATTRIBUTES) + 1))
        for block, scale in rows:
            changed, pixels, side = input_use(tw, world, USE_PROMPTS[args.world], block, scale, args.images // 2,
                                              E.STEPS, E.CFG)
            name = "bottleneck" if tuple(block) == tuple(first) else f"output block {block[1]}"
            print(f"| {name} | {side} | x {scale:g} | " + " | ".join(f"{changed[k]:.2f}" for k in world.ATTRIBUTES)
                  + f" | {pixels:.4f} |", flush=True)
        return 0
    columns = {**SWAPS, **(OFFSET_SWAPS if args.offsets else {})}
    print(f"{profile.label}. Sampling: euler / normal, {E.STEPS} steps, CFG {E.CFG}, seed {args.seed}, {args.images} "
          "images per cell. Cells: share of images that take prompt B's value.\n")
    print("| attribute | prompt A | prompt B | " + " | ".join(columns.values()) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    for attribute, prompt_a, prompt_b, value in PAIRS[args.world]:
        cells = []
        for swap in columns:
            if swap == "constant_offset":
                model = constant_offset_model(tw, mean_bottleneck_offset(tw, prompt_a, prompt_b, args.seed, args.images,
                                                                         E.STEPS, E.CFG))
            else:
                model = swapped_model(tw.model, tw.embed([prompt_b]), swap)
            with torch.inference_mode():
                images = tw.sample(prompt_a, seed=args.seed, batch=args.images, steps=E.STEPS, cfg=E.CFG, model=model)
            found = world.classify(images)
            cells.append(f"{sum(getattr(r, attribute) == value for r in found) / len(found):.2f}")
        print(f"| {attribute} | {prompt_a} | {prompt_b} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
