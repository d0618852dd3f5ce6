"""Apply Embedding Direction (arXiv 2505.15427): conditioning maths, sigma window, only the
conditional branch, long prompts, SDXL shapes, fair sampling, through real graphs."""
from __future__ import annotations

import random

import pytest
import torch

from devtools.session import PromptError
from devtools.sd import add_txt2img, encode, keep, probe_predictions, render, sd_graph, trajectory


@pytest.fixture(scope="module")
def ed(comfy):
    return comfy.module("steering.embedding_direction")


def direction_vector(vf, seed: int, arch: str = "sd1", scale: float = 1.0, name: str | None = None):
    g = torch.Generator().manual_seed(seed)
    width = {"sd1": 768, "sdxl": 2048}[arch]
    b = scale * torch.randn(77, 1, generator=g)
    a = torch.randn(1, width, generator=g)
    return vf.SteeringVector("embedding_direction", arch, {"direction_b": b, "direction_a": a},
                             {"name": name or f"d{seed}"})


def saved(comfy, vf, vector, name):
    return vf.save_vector(vector, comfy.vector_dir, name, overwrite=True).rsplit("/", 1)[-1]


def steered_graph(comfy, vector_file, **options):
    g, ckpt, pos, neg = sd_graph(comfy)
    vec = g.node("RSLoadVector", vector_name=vector_file)
    settings = dict(strength=1.0, start_percent=0.0, end_percent=1.0, chunk_mode="every_chunk")
    settings.update(options)
    steered = g.node("RSApplyEmbeddingDirection", id="steer", conditioning=pos.out(0), vector=vec.out(0), **settings)
    return g, ckpt, pos, neg, steered


def test_window_becomes_native_timestep_ranges(ed):
    cond = torch.randn(1, 77, 768)
    d = torch.randn(77, 768)
    original = [[cond, {"pooled_output": torch.randn(1, 768)}]]
    cond_before = cond.clone()
    out = ed.apply_embedding_direction(original, [d], "sd1", 0.7, 0.3, 1.0)
    assert [(e[1].get("start_percent"), e[1].get("end_percent")) for e in out] == [(0.0, 0.3), (0.3, 1.0)]
    assert out[0][0] is cond
    assert torch.equal(out[1][0], cond + 0.7 * d)
    assert out[1][1]["pooled_output"] is original[0][1]["pooled_output"]
    assert torch.equal(cond, cond_before) and set(original[0][1]) == {"pooled_output"}

    scheduled = [[cond, {"start_percent": 0.2, "end_percent": 0.9}]]
    out = ed.apply_embedding_direction(scheduled, [d], "sd1", 1.0, 0.5, 1.0)
    assert [(e[1]["start_percent"], e[1]["end_percent"], e[0] is cond) for e in out] == \
        [(0.2, 0.5, True), (0.5, 0.9, False)]
    out = ed.apply_embedding_direction(scheduled, [d], "sd1", 1.0, 0.0, 0.4)
    assert [(e[1]["start_percent"], e[1]["end_percent"], e[0] is cond) for e in out] == \
        [(0.2, 0.4, False), (0.4, 0.9, True)]
    out = ed.apply_embedding_direction([[cond, {}]], [d], "sd1", 1.0, 0.2, 0.6)
    assert [(e[1]["start_percent"], e[1]["end_percent"], e[0] is cond) for e in out] == \
        [(0.0, 0.2, True), (0.2, 0.6, False), (0.6, 1.0, True)]


def test_long_prompts_and_chunk_modes(ed):
    d = torch.randn(77, 768)
    cond = torch.zeros(1, 154, 768)
    every = ed.apply_embedding_direction([[cond, {}]], [d], "sd1", 1.0, 0.0, 1.0, "every_chunk")[0][0]
    first = ed.apply_embedding_direction([[cond, {}]], [d], "sd1", 1.0, 0.0, 1.0, "first_chunk")[0][0]
    assert torch.equal(every[0, :77], d) and torch.equal(every[0, 77:], d)
    assert torch.equal(first[0, :77], d) and torch.equal(first[0, 77:], torch.zeros(77, 768))
    with pytest.raises(ValueError, match="100 tokens, not a whole number of 77-token chunks"):
        ed.apply_embedding_direction([[torch.zeros(1, 100, 768), {}]], [d], "sd1", 1.0, 0.0, 1.0)


def test_sdxl_shapes_and_architecture_check(ed):
    cond, pooled = torch.randn(1, 77, 2048), torch.randn(1, 1280)
    d = torch.randn(77, 2048)
    out = ed.apply_embedding_direction([[cond, {"pooled_output": pooled}]], [d], "sdxl", 2.0, 0.0, 1.0)
    assert len(out) == 1 and torch.equal(out[0][0], cond + 2.0 * d)
    assert out[0][1]["pooled_output"] is pooled
    with pytest.raises(ValueError, match=r"direction is for sd1 but the conditioning is \[1, 77, 2048\] \(sdxl\)"):
        ed.apply_embedding_direction([[cond, {"pooled_output": pooled}]], [torch.randn(77, 768)], "sd1", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"start_percent \(0\.8\) must not be after end_percent \(0\.2\)"):
        ed.apply_embedding_direction([[cond, {}]], [d], "sdxl", 1.0, 0.8, 0.2)


def test_strength_zero_is_bit_exact_and_strength_changes_the_image(comfy, vf):
    name = saved(comfy, vf, direction_vector(vf, 1, scale=0.5), "d-basic")
    g, ckpt, pos, neg = sd_graph(comfy)
    baseline = render(comfy, g, add_txt2img(g, ckpt.out(0), ckpt.out(2), pos.out(0), neg.out(0)))
    for strength, same in ((0.0, True), (1.0, False)):
        g, ckpt, pos, neg, steered = steered_graph(comfy, name, strength=strength)
        image = render(comfy, g, add_txt2img(g, ckpt.out(0), ckpt.out(2), steered.out(0), neg.out(0)))
        assert torch.equal(image, baseline) == same
        if not same:
            assert (image - baseline).abs().mean() > 1e-3


def test_input_conditioning_is_not_mutated(comfy, vf):
    name = saved(comfy, vf, direction_vector(vf, 2), "d-mutate")
    g, ckpt, pos, neg, steered = steered_graph(comfy, name)
    keep(g, steered.out(0))
    result = comfy.run(g.finalize())
    original, steered_out = result.output("pos", 0), result.output("steer", 0)
    reference = encode(comfy, "a photo of a person")  # a fresh encode, after the node ran
    assert len(original) == 1 and set(original[0][1]) == set(reference[0][1])
    assert torch.equal(original[0][0], reference[0][0])
    assert not torch.equal(steered_out[0][0], original[0][0])


def test_only_conditional_branch_and_only_inside_window(comfy, vf, tiny):
    model, clip, vae = tiny
    name = saved(comfy, vf, direction_vector(vf, 3), "d-window")
    g, ckpt, pos, neg, steered = steered_graph(comfy, name, start_percent=0.4, end_percent=0.8)
    keep(g, steered.out(0))
    result = comfy.run(g.finalize())
    positive, steered_positive = result.output("pos"), result.output("steer")
    negative = encode(comfy, "")
    sampling = model.get_model_object("model_sampling")
    sigma_start, sigma_end = sampling.percent_to_sigma(0.4), sampling.percent_to_sigma(0.8)
    probes = [sigma_start * 1.5, sigma_start * 0.99, (sigma_start * sigma_end) ** 0.5, sigma_end * 1.01,
              sigma_end * 0.5]
    inside = [False, True, True, True, False]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = probe_predictions(model, positive, negative, x, probes)
    shifted = probe_predictions(model, steered_positive, negative, x, probes)
    for (s, c0, u0), (_, c1, u1), is_inside in zip(plain, shifted, inside):
        assert torch.equal(u0, u1), f"uncond changed at sigma {s}"
        assert torch.equal(c0, c1) != is_inside, f"sigma {s}: inside={is_inside}"


def test_trajectory_untouched_before_the_warm_up(comfy, vf, tiny):
    model, clip, vae = tiny
    name = saved(comfy, vf, direction_vector(vf, 4), "d-late")
    g, ckpt, pos, neg, steered = steered_graph(comfy, name, start_percent=0.5)
    keep(g, steered.out(0))
    result = comfy.run(g.finalize())
    positive, steered_positive = result.output("pos"), result.output("steer")
    negative = encode(comfy, "")
    sigmas, plain, _ = trajectory(model, positive, negative)
    _, shifted, _ = trajectory(model, steered_positive, negative)
    sigma_start = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    before = [i for i, s in enumerate(sigmas[:-1]) if s > sigma_start]
    assert before and len(before) < len(plain)
    for i in range(len(plain)):
        assert torch.equal(plain[i], shifted[i]) == (i in before), f"step {i}"


def test_fair_sampling_gives_each_image_its_direction(comfy, vf):
    names = [saved(comfy, vf, direction_vector(vf, 20 + k, scale=0.5, name=f"d-attr-{k}"), f"d-attr-{k}")
             for k in range(2)]
    def expected(seed):  # the documented rule, computed independently
        rng = random.Random(seed)
        return [rng.randrange(2) for _ in range(4)]

    seed = next(s for s in range(100) if len(set(expected(s))) == 2)
    assignment = expected(seed)
    single = []
    for name in names:
        g, ckpt, pos, neg, steered = steered_graph(comfy, name)
        single.append(render(comfy, g, add_txt2img(g, ckpt.out(0), ckpt.out(2), steered.out(0), neg.out(0), batch=4)))
    g, ckpt, pos, neg = sd_graph(comfy)
    vectors = [g.node("RSLoadVector", vector_name=n) for n in names]
    vset = g.node("RSVectorSet", vector_1=vectors[0].out(0), vector_2=vectors[1].out(0))
    fair = g.node("RSApplyEmbeddingDirectionFair", id="fair", conditioning=pos.out(0), vectors=vset.out(0),
                 batch_size=4, seed=seed, assignment="uniform", strength=1.0, start_percent=0.0,
                 end_percent=1.0, chunk_mode="every_chunk")
    keep(g, fair.out(1))
    image = add_txt2img(g, ckpt.out(0), ckpt.out(2), fair.out(0), neg.out(0), batch=4)
    result = comfy.run(g.finalize())
    images = result.output(image.id)
    assert result.output("fair", 1) == "\n".join(f"image {i}: d-attr-{k}" for i, k in enumerate(assignment))
    for i, k in enumerate(assignment):
        assert torch.allclose(images[i], single[k][i], atol=1e-4), f"image {i} should use direction {k}"
        assert (images[i] - single[1 - k][i]).abs().mean() > 1e-3


def test_wrong_vector_kind_is_a_clear_error(comfy, vf):
    h = vf.SteeringVector("hspace_cvector", "sd1", {"c": torch.randn(1280, 8, 8)}, {"name": "h"})
    g, ckpt, pos, neg, steered = steered_graph(comfy, saved(comfy, vf, h, "h-into-embedding"))
    add_txt2img(g, ckpt.out(0), ckpt.out(2), steered.out(0), neg.out(0))
    with pytest.raises(PromptError, match="not an embedding direction"):
        comfy.run(g.finalize())


def test_sdxl_unet_with_steered_conditioning(comfy, vf):
    from devtools import tiny_models

    model = tiny_models.build_sdxl_unet_model(seed=1)
    node = comfy.node_class("RSApplyEmbeddingDirection")
    g = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    negative = [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    with torch.inference_mode():
        steered = node.execute(positive, direction_vector(vf, 6, "sdxl"), 1.0, 0.5, 1.0, "every_chunk").args[0]
    assert torch.equal(steered[1][1]["pooled_output"], positive[0][1]["pooled_output"])
    sigma_start = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    x = torch.randn(1, 4, 16, 16, generator=g)
    sigmas = [sigma_start * 2.0, sigma_start * 0.5]
    plain = probe_predictions(model, positive, negative, x, sigmas)
    shifted = probe_predictions(model, steered, negative, x, sigmas)
    assert torch.equal(plain[0][1], shifted[0][1]) and torch.equal(plain[1][2], shifted[1][2])
    assert (plain[1][1] - shifted[1][1]).abs().max() > 1e-4
