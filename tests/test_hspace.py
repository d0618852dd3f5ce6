"""Apply h-space Vector (CoDSMa / RespoDiff / SDisc) on the tiny real SD1 checkpoint and
on a directly built SDXL-architecture UNet, through real ComfyUI graphs."""
from __future__ import annotations

import pytest
import torch

from devtools.session import PromptError
from devtools.sd import (FAIR_BATCH, FAIR_STEPS, add_txt2img, direction_vector, fair_reports, keep, probe_predictions,
                         render, report_of, sd_graph, seed_using_all, trajectory, vector_of_each_image)


def hspace_vector(vf, seed: int, spatial=(4, 4), scale: float = 4.0, arch: str = "sd1", method="hspace_cvector"):
    g = torch.Generator().manual_seed(seed)
    roles = ("c",) if method == "hspace_cvector" else ("ram", "sam")
    tensors = {r: scale * torch.randn(1280, *spatial, generator=g) for r in roles}
    return vf.SteeringVector(method, arch, tensors, {"name": f"h{seed}"})


def saved(comfy, vf, vector, name: str) -> str:
    return vf.save_vector(vector, comfy.vector_dir, name, overwrite=True).rsplit("/", 1)[-1]


def patched_graph(comfy, vector_file: str, **options):
    g, ckpt, pos, neg = sd_graph(comfy)
    vec = g.node("RSLoadVector", vector_name=vector_file)
    settings = dict(strength=1.0, start_percent=0.0, end_percent=1.0, branches="cond_only", resize_mode="bilinear")
    settings.update(options)
    model = g.node("RSApplyHSpaceVector", id="apply", model=ckpt.out(0), vector=vec.out(0), **settings)
    return g, ckpt, pos, neg, model


def patched_model(comfy, vector_file: str, **options):
    g, ckpt, pos, neg, model = patched_graph(comfy, vector_file, **options)
    keep(g, model.out(0))
    return comfy.run(g.finalize()).output("apply", 0)


def test_changes_image_and_strength_zero_is_bit_exact(comfy, vf):
    name = saved(comfy, vf, hspace_vector(vf, 1), "h-basic")
    g, ckpt, pos, neg = sd_graph(comfy)
    baseline = render(comfy, g, add_txt2img(g, ckpt.out(0), ckpt.out(2), pos.out(0), neg.out(0)))

    for strength, same in ((0.0, True), (1.0, False)):
        g, ckpt, pos, neg, model = patched_graph(comfy, name, strength=strength)
        image = render(comfy, g, add_txt2img(g, model.out(0), ckpt.out(2), pos.out(0), neg.out(0)))
        assert image.shape == baseline.shape == (1, 64, 64, 3)
        if same:
            assert torch.equal(image, baseline)
        else:
            assert (image - baseline).abs().mean() > 1e-3


def test_only_conditional_branch_and_only_inside_window(comfy, vf, tiny):
    model, clip, vae = tiny
    name = saved(comfy, vf, hspace_vector(vf, 2), "h-window")
    sampling = model.get_model_object("model_sampling")
    sigma_start, sigma_end = sampling.percent_to_sigma(0.4), sampling.percent_to_sigma(0.8)
    probes = [sigma_start * 1.5, sigma_start, (sigma_start * sigma_end) ** 0.5, sigma_end, sigma_end * 0.5]
    inside = [False, True, True, True, False]

    from devtools.sd import encode
    positive, negative = encode(comfy, "a photo of a person"), encode(comfy, "")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = probe_predictions(model, positive, negative, x, probes)
    cond_only = probe_predictions(patched_model(comfy, name, start_percent=0.4, end_percent=0.8),
                                  positive, negative, x, probes)
    both = probe_predictions(patched_model(comfy, name, start_percent=0.4, end_percent=0.8,
                                           branches="cond_and_uncond"), positive, negative, x, probes)
    for (s, c0, u0), (_, c1, u1), (_, c2, u2), is_inside in zip(plain, cond_only, both, inside):
        assert torch.equal(u0, u1), f"uncond changed at sigma {s}"
        if is_inside:
            assert not torch.equal(c0, c1) and (c0 - c1).abs().max() > 1e-3, f"cond unchanged at {s}"
            assert not torch.equal(u0, u2), f"cond_and_uncond left uncond at {s}"
        else:
            assert torch.equal(c0, c1) and torch.equal(u0, u2), f"changed outside window at sigma {s}"


def test_trajectory_untouched_before_window(comfy, vf, tiny):
    model, clip, vae = tiny
    from devtools.sd import encode
    positive, negative = encode(comfy, "a photo of a person"), encode(comfy, "")
    name = saved(comfy, vf, hspace_vector(vf, 3), "h-late")
    sigmas, plain, _ = trajectory(model, positive, negative)
    _, steered, _ = trajectory(patched_model(comfy, name, start_percent=0.5), positive, negative)
    sigma_start = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    before = [i for i, s in enumerate(sigmas[:-1]) if s > sigma_start]
    assert before and len(before) < len(plain)
    for i in range(len(plain)):
        assert torch.equal(plain[i], steered[i]) == (i in before), f"step {i} sigma {sigmas[i]}"


def test_input_model_is_not_mutated(comfy, vf, tiny):
    model, clip, vae = tiny
    options_before = repr(model.model_options)
    weight = model.model.diffusion_model.middle_block[0].in_layers[2].weight
    weight_before = weight.clone()
    name = saved(comfy, vf, hspace_vector(vf, 4), "h-mutate")
    patched = patched_model(comfy, name)
    assert patched is not model
    assert "output_block_patch" in repr(patched.model_options)
    assert repr(model.model_options) == options_before
    assert torch.equal(weight, weight_before)


def test_vector_is_resized_to_the_bottleneck(comfy):
    hs, window = comfy.module("steering.hspace"), comfy.module("steering.window")
    c = torch.randn(1, 1280, 8, 8)
    for size, mode in (((4, 4), "bilinear"), ((12, 6), "bilinear"), ((3, 5), "nearest"), ((16, 16), "bicubic")):
        patch = hs.BottleneckOffsetPatch(c, strength=2.0, window=window.SigmaWindow(10.0, 0.0), resize_mode=mode)
        h = torch.zeros(2, 1280, *size)
        options = {"block": ("output", 0), "sigmas": torch.tensor([1.0, 1.0]), "cond_or_uncond": [1, 0]}
        out = patch.shift(h, options)
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        expected = 2.0 * torch.nn.functional.interpolate(c, size=size, mode=mode, **kwargs)[0]
        assert torch.equal(out[0], h[0]), "uncond chunk (first here) must stay"
        assert torch.allclose(out[1], expected, atol=1e-6), (size, mode)


def test_patch_only_acts_on_the_middle_block_output(comfy):
    """On the output-block route (ComfyUI 0.3.75) the patch acts before output block 0 only."""
    hs, compat = comfy.module("steering.hspace"), comfy.module("steering.comfy_compat")
    window = comfy.module("steering.window").SigmaWindow(10.0, 0.0)
    patch = compat.FirstOutputBlockPatch(hs.BottleneckOffsetPatch(torch.ones(1, 1280, 2, 2), 1.0, window))
    h = torch.zeros(1, 1280, 2, 2)
    for block in (("output", 1), ("output", 2), ("middle", 0)):
        out, _ = patch(h, None, {"block": block, "sigmas": torch.tensor([1.0]), "cond_or_uncond": [0]})
        assert out is h
    out, _ = patch(h, None, {"block": ("output", 0), "sigmas": torch.tensor([1.0]), "cond_or_uncond": [0]})
    assert torch.equal(out, torch.ones_like(h))


def test_respodiff_applies_ram_and_sam_together(comfy, vf):
    ram_sam = hspace_vector(vf, 5, method="respodiff_ram_sam", scale=2.0)
    summed = vf.SteeringVector("hspace_cvector", "sd1", {"c": ram_sam.tensors["ram"] + ram_sam.tensors["sam"]},
                               {"name": "sum"})
    images = []
    for vector, name in ((ram_sam, "h-respodiff"), (summed, "h-respodiff-sum")):
        g, ckpt, pos, neg, model = patched_graph(comfy, saved(comfy, vf, vector, name))
        images.append(render(comfy, g, add_txt2img(g, model.out(0), ckpt.out(2), pos.out(0), neg.out(0))))
    assert torch.equal(images[0], images[1])


def test_fair_sampling_assigns_one_vector_per_image(comfy, vf):
    """Which vector each image got is read off the images (each equals the same image rendered with one vector
    only), not recomputed: it must be what the fair embedding node reports for the same seed and mode (the two
    fair nodes agree), for a uniform draw that uses both vectors and for balanced mode (2 images each)."""
    files = [saved(comfy, vf, hspace_vector(vf, 10 + k, scale=6.0), f"h-attr-{k}") for k in range(2)]
    names = [f"h-attr-direction-{k}" for k in range(2)]
    directions = [saved(comfy, vf, direction_vector(vf, 30 + k, name=name), name) for k, name in enumerate(names)]
    reports = fair_reports(comfy, directions, range(8))
    seed = seed_using_all(reports, names)
    (balanced_report,) = fair_reports(comfy, directions, [seed], "balanced")

    g, ckpt, pos, neg = sd_graph(comfy)
    vectors = [g.node("RSLoadVector", vector_name=f) for f in files]
    settings = dict(strength=1.0, start_percent=0.0, end_percent=1.0, branches="cond_only", resize_mode="bilinear")

    def txt2img(model):
        return add_txt2img(g, model, ckpt.out(2), pos.out(0), neg.out(0), batch=FAIR_BATCH, steps=FAIR_STEPS)

    single = [txt2img(g.node("RSApplyHSpaceVector", model=ckpt.out(0), vector=v.out(0), **settings).out(0))
              for v in vectors]
    vset = g.node("RSVectorSet", vector_1=vectors[0].out(0), vector_2=vectors[1].out(0))
    images = {mode: txt2img(g.node("RSApplyHSpaceVectorFair", model=ckpt.out(0), vectors=vset.out(0), seed=seed,
                                   assignment=mode, **settings).out(0)) for mode in ("uniform", "balanced")}
    result = comfy.run(g.finalize())
    single = [result.output(image.id) for image in single]

    uniform = vector_of_each_image(result.output(images["uniform"].id), single)
    assert report_of(names, uniform) == reports[seed]
    balanced = vector_of_each_image(result.output(images["balanced"].id), single)
    assert report_of(names, balanced) == balanced_report
    assert sorted(balanced.count(k) for k in range(2)) == [2, 2]


def test_balanced_assignment_is_even_for_every_prefix(comfy):
    fair = comfy.module("steering.fair")
    for seed in range(20):
        full = fair.fair_assignment(3, 30, seed, "balanced")
        for n in range(1, 31):
            counts = [full[:n].count(k) for k in range(3)]
            assert max(counts) - min(counts) <= 1
        assert fair.fair_assignment(3, 7, seed, "balanced") == full[:7]
        assert fair.fair_assignment(3, 7, seed, "uniform") == fair.fair_assignment(3, 30, seed, "uniform")[:7]


def test_errors_name_what_was_expected(comfy, vf):
    direction = vf.SteeringVector("embedding_direction", "sd1",
                                  {"direction": torch.randn(77, 768)}, {"name": "d"})
    name = saved(comfy, vf, direction, "d-wrong-node")
    g, ckpt, pos, neg, model = patched_graph(comfy, name)
    add_txt2img(g, model.out(0), ckpt.out(2), pos.out(0), neg.out(0))
    with pytest.raises(PromptError, match="not an h-space vector"):
        comfy.run(g.finalize())

    sdxl_vector = saved(comfy, vf, hspace_vector(vf, 6, arch="sdxl"), "h-sdxl-on-sd1")
    g, ckpt, pos, neg, model = patched_graph(comfy, sdxl_vector)
    add_txt2img(g, model.out(0), ckpt.out(2), pos.out(0), neg.out(0))
    with pytest.raises(PromptError, match="learned for sdxl, but the model is sd1"):
        comfy.run(g.finalize())

    g, ckpt, pos, neg, model = patched_graph(comfy, name, start_percent=0.9, end_percent=0.2)
    add_txt2img(g, model.out(0), ckpt.out(2), pos.out(0), neg.out(0))
    with pytest.raises(PromptError, match="must not be after end_percent"):
        comfy.run(g.finalize())


@pytest.fixture(scope="module")
def sdxl_model(comfy):
    from devtools import tiny_models

    return tiny_models.build_sdxl_unet_model()


def sdxl_conditioning(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]


def test_sdxl_unet_bottleneck(comfy, vf, sdxl_model):
    node = comfy.node_class("RSApplyHSpaceVector")
    vector = hspace_vector(vf, 7, spatial=(8, 8), arch="sdxl")
    with torch.inference_mode():
        patched = node.execute(sdxl_model, vector, 1.0, 0.0, 1.0, "cond_only", "bilinear").args[0]
    positive, negative = sdxl_conditioning(1), sdxl_conditioning(2)
    x = torch.randn(1, 4, 24, 16, generator=torch.Generator().manual_seed(3))  # 192x128 px: 12x8 bottleneck
    (_, c0, u0), = probe_predictions(sdxl_model, positive, negative, x, [2.0])
    (_, c1, u1), = probe_predictions(patched, positive, negative, x, [2.0])
    assert torch.equal(u0, u1)
    assert (c0 - c1).abs().max() > 1e-3

    with pytest.raises(Exception, match="learned for sd1, but the model is sdxl"):
        with torch.inference_mode():
            node.execute(sdxl_model, hspace_vector(vf, 8), 1.0, 0.0, 1.0, "cond_only", "bilinear")


def test_a_trained_offset_is_used_as_it_is_now(comfy):
    """Training gives the patch the tensor being learned: no window (every step), no cached copy (the current
    values), and the gradient reaches it through the conditional chunk only."""
    hs = comfy.module("steering.hspace")
    c = torch.zeros(1, 1280, 2, 2, requires_grad=True)
    patch = hs.BottleneckOffsetPatch(c, 1.0)
    h = torch.zeros(4, 1280, 2, 2)
    options = {"block": ("output", 0), "cond_or_uncond": [1, 0]}  # uncond chunk first, as ComfyUI batches
    out = patch.shift(h, options)
    out.sum().backward()
    assert torch.equal(c.grad, torch.full_like(c, 2.0))  # the cond chunk's two images
    with torch.no_grad():
        c.add_(1.0)
    out = patch.shift(h, options)
    assert torch.equal(out[:2], h[:2]) and torch.equal(out[2:], torch.ones(2, 1280, 2, 2))
