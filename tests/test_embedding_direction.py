"""Apply Embedding Direction (arXiv 2505.15427): conditioning maths, sigma window, only the
conditional branch, long prompts, SDXL shapes, fair sampling, through real graphs."""
from __future__ import annotations

import pytest
import torch

from devtools.session import PromptError
from devtools.sd import (FAIR_BATCH, FAIR_STEPS, add_txt2img, direction_vector, encode, fair_reports, keep,
                         probe_predictions, render, report_of, sd_graph, seed_using_all, trajectory,
                         vector_of_each_image)


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
    """Which direction each image got is read off the images (each equals the same image rendered with one
    direction only), not recomputed: the node's report must say the same, a uniform draw that uses both
    directions reproduces, and balanced mode gives each of the 2 directions 2 of the 4 images."""
    names = [f"d-attr-{k}" for k in range(2)]
    files = [saved(comfy, vf, direction_vector(vf, 20 + k, scale=0.5, name=name), name) for k, name in enumerate(names)]
    reports = fair_reports(comfy, files, range(8))
    assert len(set(reports)) > 1, "every seed gave the same assignment"
    assert fair_reports(comfy, files, range(8)) == reports, "the same seed must give the same assignment"
    seed = seed_using_all(reports, names)

    g, ckpt, pos, neg = sd_graph(comfy)
    vectors = [g.node("RSLoadVector", vector_name=f) for f in files]

    def txt2img(conditioning):
        return add_txt2img(g, ckpt.out(0), ckpt.out(2), conditioning, neg.out(0), batch=FAIR_BATCH, steps=FAIR_STEPS)

    single = [txt2img(g.node("RSApplyEmbeddingDirection", conditioning=pos.out(0), vector=v.out(0), strength=1.0,
                             start_percent=0.0, end_percent=1.0, chunk_mode="every_chunk").out(0)) for v in vectors]
    vset = g.node("RSVectorSet", vector_1=vectors[0].out(0), vector_2=vectors[1].out(0))
    fair, images = {}, {}
    for mode in ("uniform", "balanced"):
        fair[mode] = g.node("RSApplyEmbeddingDirectionFair", conditioning=pos.out(0), vectors=vset.out(0),
                            batch_size=FAIR_BATCH, seed=seed, assignment=mode, strength=1.0, start_percent=0.0,
                            end_percent=1.0, chunk_mode="every_chunk")
        keep(g, fair[mode].out(1))
        images[mode] = txt2img(fair[mode].out(0))
    result = comfy.run(g.finalize())
    single = [result.output(image.id) for image in single]

    uniform = vector_of_each_image(result.output(images["uniform"].id), single)
    assert result.output(fair["uniform"].id, 1) == report_of(names, uniform) == reports[seed]
    balanced = vector_of_each_image(result.output(images["balanced"].id), single)
    assert result.output(fair["balanced"].id, 1) == report_of(names, balanced)
    assert sorted(balanced.count(k) for k in range(2)) == [2, 2]


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
