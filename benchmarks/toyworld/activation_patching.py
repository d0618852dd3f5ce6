"""Where does ToyWorld decide an attribute? Activation patching along the UNet's paths.

Sample prompt A while, at every step and on the same noisy latent, some of the UNet's
activations come from prompt B instead: the bottleneck (what h-space methods steer), the
bottleneck and every skip connection (the whole encoder path), or everything (prompt B
itself, a control); or the reverse of the bottleneck + skips swap: only the decoder's
cross-attention reads prompt B. The table gives the share of images that take prompt
B's value of the attribute. Run: ``python -m benchmarks.toyworld.activation_patching``.
"""
from __future__ import annotations

import argparse
import sys

import torch

# (attribute, prompt A, prompt B, prompt B's value)
PAIRS = [
    ("background", "a shape", "a shape on a light background", "light"),
    ("background", "a blue circle", "a blue circle on a light background", "light"),
    ("background", "a shape on a dark background", "a shape on a light background", "light"),
    ("background", "a green circle on a dark background", "a green circle on a light background", "light"),
    ("colour", "a red circle", "a blue circle", "blue"),
    ("colour", "a red shape", "a orange shape", "orange"),
]
SWAPS = {"none": "nothing from B", "bottleneck": "B's bottleneck", "bottleneck_and_skips": "B's bottleneck + skips",
         "decoder_context": "B's prompt in the decoder only", "everything": "all from B (control)"}


def swapped_model(model, other_context: torch.Tensor, swap: str):
    """A clone of `model` whose conditional rows take the `swap` activations from `other_context`."""
    from devtools import pack

    if swap not in SWAPS:
        raise ValueError(f"swap {swap!r}; expected one of {SWAPS}")
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
            if block == middle_block_output:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images per prompt pair and swap")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    from benchmarks.common import setup_comfy

    setup_comfy("cpu")
    torch.set_num_threads(1)
    from benchmarks.toyworld import efficacy as E
    from benchmarks.toyworld import pack_toyworld
    from benchmarks.toyworld import pack_toyworld
    M = pack_toyworld("model")
    from benchmarks.toyworld import pack_toyworld
    world = pack_toyworld("world")

    tw = M.ToyWorld()
    print(f"Sampling: euler / normal, {E.STEPS} steps, CFG {E.CFG}, seed {args.seed}, {args.images} images per cell."
          " Cells: share of images that take prompt B's value.\n")
    print("| attribute | prompt A | prompt B | " + " | ".join(SWAPS.values()) + " |")
    print("|---|---|---|" + "---|" * len(SWAPS))
    for attribute, prompt_a, prompt_b, value in PAIRS:
        cells = []
        for swap in SWAPS:
            model = swapped_model(tw.model, tw.embed([prompt_b]), swap)
            with torch.inference_mode():
                images = tw.sample(prompt_a, seed=args.seed, batch=args.images, steps=E.STEPS, cfg=E.CFG, model=model)
            found = world.classify(images)
            cells.append(f"{sum(getattr(r, attribute) == value for r in found) / len(found):.2f}")
        print(f"| {attribute} | {prompt_a} | {prompt_b} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
