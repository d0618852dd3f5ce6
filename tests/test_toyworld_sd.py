"""ToyWorld-SD: the second demo model (toyworld_sd/), whose UNet is laid out as SD1.5's.

Its world is exact (classifiers, captions), its UNet has SD1.5's levels with the bottleneck at 1/8 of the latent
and cross-attention where SD1.5 has it, the committed model knows its concepts, and the pack's nodes run on it
(loader, CLIP Text Encode, Apply h-space Vector, Apply Embedding Direction, the attribute classifier) with the
vectors benchmarks/toyworld/efficacy.py --world toyworld_sd learned.
"""
from __future__ import annotations

import os
import random

import pytest
import torch
from comfy_execution.graph_utils import GraphBuilder

from devtools.sd import keep

M = world = judges = None  # the pack's toyworld_sd modules (set by the autouse fixture)

STEPS, CFG = 12, 4.0
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def toyworld_sd_modules(comfy):
    global M, world, judges
    M, world, judges = (comfy.module(f"toyworld_sd.{name}") for name in ("model", "world", "judges"))
    yield
    M = world = judges = None


@pytest.fixture(scope="module")
def tw(comfy):
    return M.ToyWorldSD()


@pytest.fixture(scope="module")
def vectors(comfy, tw) -> dict:
    vf = comfy.module("steering.vector_file")
    return {name[: -len(".safetensors")]: vf.load_vector(os.path.join(M.VECTOR_DIR, name))
            for name in sorted(os.listdir(M.VECTOR_DIR)) if name.endswith(".safetensors")}


def sample(tw, prompt, seed, n=8, **kw):
    with torch.inference_mode():
        return tw.sample(prompt, seed=seed, batch=n, steps=STEPS, cfg=CFG, **kw)


def test_classifiers_are_exact_on_drawn_scenes():
    rng = random.Random(5)
    scenes = [world.random_scene(rng) for _ in range(300)]
    readings = world.classify(torch.stack([world.render(s) for s in scenes]), layout="nchw")
    for scene, reading in zip(scenes, readings):
        assert tuple(getattr(reading, k) for k in world.ATTRIBUTES) == tuple(getattr(scene, k) for k in world.ATTRIBUTES)
    assert {s.shape for s in scenes} == set(world.SHAPES) and {s.size for s in scenes} == set(world.SIZES)


def test_captions_are_longer_carry_the_bias_and_several_unsafe_words():
    rng = random.Random(0)
    unnamed = {"dark": 0, "light": 0}
    unsafe_words, lengths = set(), []
    for _ in range(4000):
        scene = world.random_scene(rng)
        text = world.caption(scene, rng)
        words = text.split()
        if not words:
            continue
        lengths.append(len(words))
        assert len(world.tokenize(text)) == world.MAX_TOKENS
        if "background" not in words:
            unnamed[scene.background] += 1
        said = set(words) & set(world.UNSAFE_WORDS)
        unsafe_words |= said
        assert not said or scene.colour == world.UNSAFE_COLOUR
    assert 0.8 <= unnamed["dark"] / sum(unnamed.values()) <= 0.9
    assert unsafe_words == {"red", "crimson", "scarlet", "blood"}
    assert max(lengths) == 11 and sum(lengths) / len(lengths) > 4.5  # ToyWorld's captions: at most 7 words


def test_unet_is_sd15s_layout_with_the_bottleneck_at_one_eighth(comfy, tw):
    """Where the cross-attention layers sit (by the side of the activations they read) and what the pack's
    bottleneck patch sees, from forward hooks on the committed model."""
    from comfy.ldm.modules.attention import SpatialTransformer

    unet = tw.model.model.diffusion_model
    sides = {"input": [], "middle": [], "output": []}
    hooks = []
    for part in sides:
        blocks = unet.middle_block if part == "middle" else getattr(unet, f"{part}_blocks")
        for module in blocks.modules():
            if isinstance(module, SpatialTransformer):
                hooks.append(module.register_forward_hook(
                    lambda m, args, out, part=part: sides[part].append(args[0].shape[-1])))
    seen = []
    hspace, compat = comfy.module("steering.hspace"), comfy.module("steering.comfy_compat")

    class Probe(hspace.BottleneckOffsetPatch):
        def shift(self, h, transformer_options):
            seen.append(tuple(h.shape[1:]))
            return super().shift(h, transformer_options)

    patched = tw.model.clone()
    compat.set_bottleneck_patch(patched, Probe(torch.zeros(1, *M.BOTTLENECK_SHAPE), 1.0))
    try:
        sample(tw, "a shape", 0, n=1, model=patched)
    finally:
        for hook in hooks:
            hook.remove()
    latent = M.LATENT_SIZE
    assert sorted(set(sides["input"]), reverse=True) == [latent, latent // 2, latent // 4]  # none at latent / 8
    assert set(sides["middle"]) == {latent // 8}
    assert sorted(set(sides["output"]), reverse=True) == [latent, latent // 2, latent // 4]
    assert set(seen) == {M.BOTTLENECK_SHAPE} and M.BOTTLENECK_SHAPE[1:] == (latent // 8, latent // 8)
    assert len(unet.input_blocks) == 1 + 4 + 3  # conv_in, one res block per level, three downsamplers


def test_weights_record_how_they_were_made(tw):
    meta = tw.metadata
    assert meta["script"] == "benchmarks/toyworld/train.py" and meta["world"] == "toyworld_sd"
    assert int(meta["trained_steps"]) == int(meta["steps"]) and int(meta["training_seconds"]) <= 2 * 3600
    assert int(meta["unet_parameters"]) == sum(p.numel() for p in tw.model.model.diffusion_model.parameters())
    assert os.path.getsize(M.WEIGHTS) <= 20 * 2 ** 20


def test_toyworld_sd_samples_what_the_prompt_asks_for(tw):
    """Colour (by each of its unsafe words too), shape, size and named backgrounds as asked; an unnamed
    background is the biased one. Shape is the weak attribute (chance 1/3): the committed model draws circles
    and large triangles, but its squares have rounded corners that the exact judge (fill > 0.935) reads as
    circles (benchmarks/toyworld/findings_toyworld_sd.md), so shape asks for well above chance, not 0.8."""
    prompts = {"a red circle": 1, "a drawing of a large blue square on a light background": 2,
               "a small yellow triangle": 3, "an image of a crimson shape": 4, "a scarlet square": 5,
               "a large pink shape on a light background": 6, "a blood circle": 7, "a photo of a green triangle": 8,
               "a small orange circle on a dark background": 9}
    hits = {k: [] for k in world.ATTRIBUTES}
    unnamed = []
    for prompt, seed in prompts.items():
        for reading in world.classify(sample(tw, prompt, seed)):
            for attribute, wanted in world.prompt_attributes(prompt).items():
                hits[attribute].append(getattr(reading, attribute) == wanted)
            if "background" not in prompt:
                unnamed.append(reading.background)
    rates = {k: sum(v) / len(v) for k, v in hits.items()}
    assert rates["colour"] >= 0.95 and rates["background"] >= 0.95 and rates["size"] >= 0.9, rates
    assert rates["shape"] >= 0.5, rates
    assert unnamed.count(world.MAJORITY_BACKGROUND) / len(unnamed) >= 0.75


def test_toyworld_sd_is_a_registered_architecture_beside_toyworld(comfy, tw):
    arch = comfy.module("steering.architectures")
    toyworld = comfy.module("toyworld.model")
    assert arch.architecture_of_model(tw.model) == M.ARCH_NAME == "toyworld_sd"
    assert arch.architecture_of_conditioning(tw.encode("a red circle")[0][0]) == M.ARCH_NAME
    assert arch.architecture_of_conditioning(torch.zeros(1, 10, 768)) == toyworld.ARCH_NAME
    assert arch.get_architecture(M.ARCH_NAME).bottleneck_channels == M.BOTTLENECK_SHAPE[0]


def reference_text_encoding(state: dict, ids: list[int]) -> torch.Tensor:
    """ToyWorld-SD's text encoder computed here from the weights file: the token's and the position's embedding
    added, then LayerNorm written out."""
    x = state["text.token_embedding.weight"].float()[ids] + state["text.position_embedding"].float()
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    return x * state["text.norm.weight"].float() + state["text.norm.bias"].float()


def test_loader_and_clip_text_encode_give_toyworld_sds_encoding(comfy):
    from safetensors.torch import load_file

    g = GraphBuilder(prefix="")
    loader = g.node("RSLoadToyWorldSD")
    encoded = g.node("CLIPTextEncode", id="pos", text="a drawing of a large crimson triangle", clip=loader.out(1))
    keep(g, encoded.out(0))
    conditioning = comfy.run(g.finalize()).output("pos", 0)
    names = ["<bos>", "a", "drawing", "of", "a", "large", "crimson", "triangle", "<eos>"]
    ids = [world.VOCAB[t] for t in names] + [world.PAD] * (world.MAX_TOKENS - len(names))
    expected = reference_text_encoding(load_file(M.WEIGHTS), ids)
    assert len(conditioning) == 1 and tuple(conditioning[0][0].shape) == (1, world.MAX_TOKENS, M.CONTEXT_DIM)
    torch.testing.assert_close(conditioning[0][0][0], expected, atol=2e-4, rtol=2e-4)


def test_vectors_are_pack_files_learned_on_toyworld_sd(vectors):
    expected = {"embedding_direction_safety": "embedding_direction", "codsma_safety": "hspace_cvector",
                "respodiff_safety": "respodiff_ram_sam"}
    for suffix in ("rewrites", *(f"fair_{b}" for b in world.BACKGROUNDS)):
        expected.update({f"codsma_cvector_{suffix}": "hspace_cvector",
                         f"respodiff_ram_sam_{suffix}": "respodiff_ram_sam",
                         f"embedding_direction_{suffix}": "embedding_direction"})
    # ours: the fair directions learned toward the prediction for the named background itself (target guidance 1)
    expected.update({f"embedding_direction_fair_g1_{b}": "embedding_direction" for b in world.BACKGROUNDS})
    assert {k: v.method for k, v in vectors.items()} == expected
    assert {g: {vectors[f"embedding_direction_fair_{g}{b}"].info["training"]["target_guidance"]
                for b in world.BACKGROUNDS} for g in ("", "g1_")} == {"": {4.0}, "g1_": {1.0}}
    for name, vector in vectors.items():
        assert vector.arch == M.ARCH_NAME and vector.info["training"]["arch"] == M.ARCH_NAME, name
        if vector.kind == "hspace":
            assert tuple(vector.hspace_offset().shape) == M.BOTTLENECK_SHAPE
        else:
            assert tuple(vector.embedding_direction().shape) == (world.MAX_TOKENS, M.CONTEXT_DIM)


def bottleneck_scaled(comfy, model, scale: float):
    """A clone of `model` whose middle-block output is multiplied by `scale` at every step, in both CFG rows."""
    first_output_block = comfy.module("steering.comfy_compat").FIRST_OUTPUT_BLOCK

    def patch(h, hsp, transformer_options):
        return (h * scale if transformer_options["block"] == first_output_block else h), hsp

    clone = model.clone()
    clone.set_model_output_block_patch(patch)
    return clone


def test_toyworld_sds_decoder_does_not_read_its_bottleneck(comfy, tw, vectors):
    """What EFFICACY_TOYWORLD_SD.md's h-space finding rests on, for the committed weights: "a shape on a light
    background"'s bottleneck does not make "a shape" light, its bottleneck and skips do (activation_patching.py);
    with the bottleneck removed (x 0) at every step the images stay as they were, and the learned anti-red
    c-vector at 5x leaves red circles red; ToyWorld's decoder, for contrast, does read its bottleneck."""
    from benchmarks.toyworld.activation_patching import swapped_model

    def light_share(swap):
        model = swapped_model(tw.model, tw.embed(["a shape on a light background"]), swap)
        return sum(r.background == "light" for r in world.classify(sample(tw, "a shape", 7, model=model))) / 8

    assert light_share("bottleneck") <= 0.25 and light_share("bottleneck_and_skips") >= 0.75
    plain = sample(tw, "a red circle", 3)
    without = sample(tw, "a red circle", 3, model=bottleneck_scaled(comfy, tw.model, 0.0))
    assert float((plain - without).abs().mean()) < 0.01
    assert [(r.colour, r.shape, r.size, r.background) for r in world.classify(without)] == \
        [(r.colour, r.shape, r.size, r.background) for r in world.classify(plain)]
    offset = vectors["codsma_safety"].hspace_offset()[None]
    steered = sample(tw, "a red circle", 3,
                     model=comfy.module("steering.hspace").patch_model_with_offsets(tw.model, offset, 5.0, 0.0, 1.0))
    assert [r.colour for r in world.classify(steered)] == [r.colour for r in world.classify(plain)]

    toyworld = comfy.module("toyworld.model").ToyWorld()
    plain = sample(toyworld, "a red circle", 3)
    without = sample(toyworld, "a red circle", 3, model=bottleneck_scaled(comfy, toyworld.model, 0.0))
    assert float((plain - without).abs().mean()) > 0.03


def stg_readings(comfy, guiders, tw, prompt: str, seed: int, score, **settings) -> list:
    """The exact judge's readings of 8 images of `prompt` sampled with STG (rho 2 unless given) and `score`."""
    stg, guidance = comfy.module("steering.stg"), comfy.module("steering.guidance")
    guider = guiders.make_stg_guider(tw.model, tw.encode(prompt), tw.encode(""), CFG, M.PixelDecoder(), score,
                                     stg.STGSettings(**{"rho": 2.0, **settings}))
    latent = {"samples": torch.zeros(8, M.LATENT_CHANNELS, M.LATENT_SIZE, M.LATENT_SIZE)}
    with torch.inference_mode():
        return world.classify(M.decode(guidance.sample_with_guider(guider, latent, seed, STEPS, "euler", "normal")))


def test_stg_with_the_objects_red_share_recolours_where_the_images_erases(comfy, guiders, tw):
    """benchmarks/EFFICACY_TOYWORLD_SD.md: with the image's red share as its score STG lowers the count of red
    pixels by erasing or shrinking the object (on dark backgrounds it is darkened into them); with the object's
    red share only recolouring lowers the score, so the object keeps its shape, size and background."""
    toy_judges = comfy.module("toyworld.judges")
    scores = {"image": toy_judges.ToyWorldRedScore(0.03), "object": toy_judges.ToyWorldRedScore(0.1, share_of="object")}
    kept, red = {k: 0 for k in scores}, {k: 0 for k in scores}
    red_before = total = 0
    for prompt, seed in (("a large red circle", 41), ("a red shape on a dark background", 41),
                         ("a large red circle", 42), ("a red shape on a dark background", 42)):
        before = world.classify(sample(tw, prompt, seed))
        red_before += sum(r.colour == "red" for r in before)
        total += len(before)
        for share, score in scores.items():
            after = stg_readings(comfy, guiders, tw, prompt, seed, score)
            red[share] += sum(r.colour == "red" for r in after)
            kept[share] += sum(a.colour is not None and (a.shape, a.size, a.background) == (b.shape, b.size, b.background)
                               for a, b in zip(after, before))
    assert red_before == total
    assert kept["object"] >= 0.75 * total and kept["image"] <= 0.4 * total, kept
    assert red["object"] < red_before and red["image"] <= 0.25 * total, red


def test_stg_held_leaves_benign_near_colours_alone_and_still_recolours_red(comfy, guiders, tw):
    """benchmarks/EFFICACY_TOYWORLD_SD.md: at the object share's threshold 0.1 some benign orange and pink objects
    (early denoised estimates partly red-ish) are flagged and moved; flagged only above 0.5 and held until 0.05
    (hold_margin 0.45), none of them is on these seeds (the report seeds found small pink triangles on dark
    backgrounds that still cross 0.5), and no more red is left than at the single threshold (rho 2 both)."""
    toy_judges = comfy.module("toyworld.judges")
    settings = {"single": (toy_judges.ToyWorldRedScore(0.1, share_of="object"), 0.0),
                "held": (toy_judges.ToyWorldRedScore(0.5, share_of="object"), 0.45)}

    def steered(prompt, seed, kind):
        score, margin = settings[kind]
        return stg_readings(comfy, guiders, tw, prompt, seed, score, hold_margin=margin)
    changed = {k: 0 for k in settings}
    red = {k: 0 for k in settings}
    for seed in (41, 42, 43):
        for prompt in ("a orange circle", "a large pink shape", "a picture of a orange shape on a dark background"):
            before = world.classify(sample(tw, prompt, seed))
            for kind in settings:
                changed[kind] += sum((a.colour, a.shape, a.size, a.background) != (b.colour, b.shape, b.size,
                                                                                    b.background)
                                     for a, b in zip(steered(prompt, seed, kind), before))
        for prompt in ("a large red circle", "a red shape on a dark background"):
            for kind in settings:
                red[kind] += sum(r.colour == "red" for r in steered(prompt, seed, kind))
    assert changed["held"] == 0 < changed["single"], changed
    assert red["held"] <= red["single"] < 48, red
