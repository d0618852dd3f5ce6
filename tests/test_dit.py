"""STG, dual latent, embedding directions and training on SD3 and FLUX, through real prompt executions.

The models are tiny FLUX.1 (dev, with its distilled guidance embedding; schnell) and SD3 models built in
memory from ComfyUI's own classes (devtools/tiny_dit.py: random weights, small width and depth, the real
conditioning shapes - FLUX [1, 256, 4096] + pooled 768, SD3 [1, 154, 4096] + pooled 2048 - and the real
16-channel latent format), loaded by a test-only loader node. FLUX runs as its users run it: CFG 1 with
FluxGuidance; SD3 with CFG 4.

Expected values come from ComfyUI's own samplers and model calls (KSampler, calc_cond_batch), from
finite differences, and from the tensors of the test's own vectors."""
from __future__ import annotations

import os

import pytest
import torch

from comfy_execution.graph_utils import GraphBuilder
from devtools import tiny_dit, workflows
from devtools.sd import embedding_derivatives, keep, probe_predictions

SIZE, STEPS = 64, 4
CFG = {"flux": 1.0, "flux_schnell": 1.0, "sd3": 4.0}
LUMA = torch.tensor([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def dit(comfy):
    """The tiny DiT loader node registered and the architectures' TAESD decoders (the tiny VAE's decoders) in
    vae_approx, for this module; both removed after."""
    written = [tiny_dit.write_vae_approx(name, comfy.dirs["models/vae_approx"]) for name in ("flux", "sd3")]
    with tiny_dit.registered_node():
        yield comfy
    for path in written:
        os.remove(path)


def dit_graph(name: str, positive: str = "a photo of a cat", negative: str = "", safe: str | None = None):
    """Loader and prompts as a FLUX / SD3 user wires them (FLUX: FluxGuidance 3.5 on every prompt of dev)."""
    g = GraphBuilder(prefix="")
    ld = g.node(tiny_dit.NODE_ID, id="ld", model=name, seed=0)

    def encode(text, node_id):
        node = g.node("CLIPTextEncode", id=node_id, text=text, clip=ld.out(1))
        if name == "flux":
            node = g.node("FluxGuidance", id=node_id + "_g", conditioning=node.out(0), guidance=3.5)
        return node

    prompts = {"pos": encode(positive, "pos"), "neg": encode(negative, "neg")}
    if safe is not None:
        prompts["safe"] = encode(safe, "safe")
    return g, ld, prompts


def sampler_inputs(name: str, prompts, latent, **overrides):
    values = dict(positive=prompts["pos"].out(0), negative=prompts["neg"].out(0), latent_image=latent.out(0), seed=3,
                  steps=STEPS, cfg=CFG[name], sampler_name="euler", scheduler="simple", denoise=1.0)
    values.update(overrides)
    return values


def stg_inputs(**overrides):
    values = dict(rho=0.5, start_percent=0.0, end_percent=1.0, update_ratio=1.0, prior_weight=0.0, rebase=False,
                  guide_pooled=False, decoder="vae", autocast="none")
    values.update(overrides)
    return values


def brightness(images: torch.Tensor) -> torch.Tensor:
    return (images * LUMA).sum(-1).mean((1, 2))


def objects(comfy, name: str, positive: str = "a photo of a cat", negative: str = ""):
    """(model, vae, positive, negative) exactly as the executor makes them."""
    g, ld, prompts = dit_graph(name, positive, negative)
    for node in (ld, prompts["pos"], prompts["neg"]):
        keep(g, node.out(0))
    result = comfy.run(g.finalize())
    return (result.output("ld", 0), result.output("ld", 2), result.output(prompts["pos"].id),
            result.output(prompts["neg"].id))


# ----------------------------------------------------------------------------- STG

@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_stg_rho_zero_is_the_plain_sampler_and_stg_lowers_the_score(dit, name):
    g, ld, prompts = dit_graph(name)
    latent = g.node("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=2)
    score = g.node("RSColourStatisticScore", statistic="brightness", threshold=-1.0)
    common = sampler_inputs(name, prompts, latent)
    samplers = {"plain": g.node("KSampler", model=ld.out(0), **common),
                "off": g.node("RSSTGKSampler", model=ld.out(0), vae=ld.out(2), safety_score=score.out(0), **common,
                              **stg_inputs(rho=0.0)),
                "on": g.node("RSSTGKSampler", model=ld.out(0), vae=ld.out(2), safety_score=score.out(0), **common,
                             **stg_inputs(rho=8.0, start_percent=0.2))}
    decoded = {n: g.node("VAEDecode", samples=s.out(0), vae=ld.out(2)) for n, s in samplers.items()}
    for node in decoded.values():
        g.node("PreviewImage", images=node.out(0))
    keep(g, samplers["on"].out(1))
    result = dit.run(g.finalize())
    latents = {n: result.output(s.id, 0)["samples"] for n, s in samplers.items()}
    assert latents["plain"].shape == (2, 16, SIZE // 8, SIZE // 8)
    assert torch.equal(latents["off"], latents["plain"])
    values = {n: brightness(result.output(d.id)) for n, d in decoded.items()}
    assert (values["on"] < values["plain"] - 1e-3).all(), values
    report = result.output(samplers["on"].id, 1)
    assert report.startswith("STG: 3 of 4 schedule steps guided (4 model evaluations"), report


def at_first_step(guider, probe, latent_shape=(1, 16, SIZE // 8, SIZE // 8)) -> None:
    """Run `guider` from a zero latent over sigmas 1 -> 0 (flow models), in inference mode as the executor does,
    with a sampler that only calls probe(guider, x, t, model_options) at the first sigma."""
    from comfy.samplers import KSAMPLER

    def sampler(model_k, noise, sigmas, extra_args=None, callback=None, disable=None):
        t = sigmas[0] * noise.new_ones([noise.shape[0]])
        probe(model_k.inner_model, noise * 0.8, t * 0.8, extra_args["model_options"])
        return noise

    latent = torch.zeros(latent_shape)
    with torch.inference_mode():
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        guider.sample(noise, latent, KSAMPLER(sampler), torch.tensor([1.0, 0.0]), seed=0)


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_stg_gradient_matches_finite_differences(guiders, dit, stg, decoders, safety, name):
    """d score / d text conditioning through the DiT, the flow-matching denoised estimate and the 16-channel
    VAE equals a central finite difference (CFG 1 for FLUX: the conditional prediction alone)."""
    model, vae, positive, negative = objects(dit, name)
    guider = guiders.make_stg_guider(model, positive, negative, CFG[name], decoders.vae_decoder(vae),
                                     safety.ColourStatisticScore("redness", threshold=-10.0), stg.STGSettings(rho=1.0))
    found = {}

    def probe(g, x, t, options):  # the decoder has ReLUs: a small step stays on one side of their kinks
        found.update(embedding_derivatives(g, x, t, options, step=0.01))

    at_first_step(guider, probe)
    assert found["shape"] == tuple(positive[0][0].shape)
    assert found["grad_norm"] > 0
    assert found["analytic"] == pytest.approx(found["numeric"], rel=0.02), found


def test_stg_guides_only_the_window_steps_and_the_pooled_vector(guiders, dit, stg, decoders, guidance, safety):
    """The guided steps are the schedule steps whose sigma lies in the window (computed here from the model's
    percent_to_sigma); guide_pooled moves FLUX's pooled vector y too; the TAEF1 decoder gives the VAE's image."""
    import comfy.samplers

    model, vae, positive, negative = objects(dit, "flux")
    steps, start, end = 8, 0.3, 0.7
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps).tolist()
    hi, lo = float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(end))
    expected = [i for i, s in enumerate(sigmas[:-1]) if lo <= s <= hi]
    assert 0 < len(expected) < steps
    settings = stg.STGSettings(rho=1.0, start_percent=start, end_percent=end, guide_pooled=True)
    guider = guiders.make_stg_guider(model, positive, negative, 1.0, decoders.vae_decoder(vae),
                                     safety.ColourStatisticScore("brightness", threshold=-10.0), settings)
    with torch.inference_mode():
        guidance.sample_with_guider(guider, {"samples": torch.zeros(1, 16, 8, 8)}, 0, steps, "euler", "simple")
    assert guider.guided_steps() == expected
    state = guider.state
    assert state.pooled[0].shape == (1, 768)
    assert (state.pooled[0] - state.pooled_originals[0]).abs().max() > 0
    assert (state.embeds[0] - state.originals[0]).abs().max() > 0

    paths = dit.module("nodes.paths")
    taef1 = decoders.load_taesd_decoder(paths.taesd_decoder_path("flux"))
    x0 = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        exact = decoders.vae_decoder(vae)(x0, model.model)
        approx = taef1(x0, model.model)
    torch.testing.assert_close(approx, exact, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- dual latent

@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_dual_latent_limits_equal_the_single_prompts(dit, name):
    """tau_gc = 0: the safe prompt alone; w_xi = 0, tau_gc = 1: the original alone (bit for bit, KSampler);
    the default mix differs from both."""
    g, ld, prompts = dit_graph(name, safe="a photo of a dog")
    latent = g.node("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)
    common = sampler_inputs(name, prompts, latent)
    dual = dict(model=ld.out(0), safe_positive=prompts["safe"].out(0), **common)
    nodes = {"original": g.node("KSampler", model=ld.out(0), **common),
             "safe": g.node("KSampler", model=ld.out(0), **{**common, "positive": prompts["safe"].out(0)}),
             "tau0": g.node("RSDualLatentKSampler", w_xi=0.75, w_x=0.25, tau_gc=0.0, **dual),
             "w0": g.node("RSDualLatentKSampler", w_xi=0.0, w_x=1.0, tau_gc=1.0, **dual),
             "mix": g.node("RSDualLatentKSampler", w_xi=0.75, w_x=0.25, tau_gc=0.5, **dual)}
    for node in nodes.values():
        keep(g, node.out(0))
    result = dit.run(g.finalize())
    out = {n: result.output(node.id, 0)["samples"] for n, node in nodes.items()}
    assert torch.equal(out["tau0"], out["safe"])
    assert torch.equal(out["w0"], out["original"])
    assert not torch.equal(out["mix"], out["safe"]) and not torch.equal(out["mix"], out["original"])


def test_flux_at_cfg_1_never_evaluates_an_unconditional_branch(guiders, dit, stg, dl, decoders, safety, guidance, vf):
    """FLUX dev at CFG 1 (its distilled guidance): STG, dual latent (the safe branch is a second conditional
    entry) and an embedding direction evaluate only conditional chunks, as ComfyUI's own sampler does."""
    model, vae, positive, negative = objects(dit, "flux")
    _, _, safe, _ = objects(dit, "flux", positive="a photo of a dog")
    seen: list[list[int]] = []
    watched = model.clone()
    watched.set_model_unet_function_wrapper(
        lambda apply, args: (seen.append(list(args["cond_or_uncond"])), apply(args["input"], args["timestep"],
                                                                              **args["c"]))[1])
    ed = dit.module("steering.embedding_direction")
    direction = torch.randn(256, 4096, generator=torch.Generator().manual_seed(2)) * 0.1
    steered = ed.apply_embedding_direction(positive, [direction], "flux", 1.0, 0.0, 1.0)
    score = safety.ColourStatisticScore("brightness", threshold=-10.0)
    latent = torch.zeros(1, 16, 8, 8)
    stg_guider = guiders.make_stg_guider(watched, positive, negative, 1.0, decoders.vae_decoder(vae), score,
                                         stg.STGSettings(rho=1.0, start_percent=0.0, end_percent=1.0))
    dual_guider = dl.dual_latent_guider(watched, positive, safe, negative, 1.0, dl.DualLatentSettings(tau_gc=1.0))

    def with_guider(guider):
        return lambda: guidance.sample_with_guider(guider, {"samples": latent}, 0, 3, "euler", "simple")

    def steered_ksampler():
        import comfy.sample

        return comfy.sample.sample(watched, comfy.sample.prepare_noise(latent, 0), 3, 1.0, "euler", "simple", steered,
                                   negative, latent, disable_pbar=True, seed=0)

    for method, run in (("stg", with_guider(stg_guider)), ("dual latent", with_guider(dual_guider)),
                        ("embedding direction", steered_ksampler)):
        seen.clear()
        with torch.inference_mode():
            out = run()
        assert seen and all(set(labels) == {0} for labels in seen), (method, seen)
        assert torch.isfinite(out).all()
        if method == "dual latent":  # both prompts in one model call, both labelled conditional
            assert all(labels == [0, 0] for labels in seen), seen
    assert stg_guider.guided_steps() == [0, 1, 2]


# ----------------------------------------------------------------------------- embedding directions

def flux_vector(vf, rows: int, seed: int = 0, pooled: bool = False, arch: str = "flux"):
    g = torch.Generator().manual_seed(seed)
    tensors = {"direction": torch.randn(rows, 4096, generator=g) * 0.05}
    if pooled:
        tensors["pooled"] = torch.randn({"flux": 768, "sd3": 2048}[arch], generator=g)
    return vf.SteeringVector("embedding_direction", arch, tensors, {"name": f"t5-{rows}"})


def test_t5_directions_act_on_the_tokens_present(dit, ed, vf):
    """Row i of a [N, 4096] direction acts on token i: tokens beyond N untouched, rows beyond the prompt
    dropped; the pooled direction moves pooled_output in the window only; the input is not modified."""
    _, _, positive, _ = objects(dit, "flux")
    cond, options = positive[0][0], positive[0][1]
    assert cond.shape == (1, 256, 4096) and options["pooled_output"].shape == (1, 768)
    short = flux_vector(vf, 10, pooled=True)
    out = ed.apply_embedding_direction(positive, [short.embedding_direction()], "flux", 2.0, 0.25, 1.0,
                                       pooled_directions=[short.pooled_direction()])
    assert [(e[1]["start_percent"], e[1]["end_percent"]) for e in out] == [(0.0, 0.25), (0.25, 1.0)]
    outside, inside = out
    assert torch.equal(outside[0], cond) and torch.equal(outside[1]["pooled_output"], options["pooled_output"])
    torch.testing.assert_close(inside[0][0, :10], cond[0, :10] + 2.0 * short.tensors["direction"])
    assert torch.equal(inside[0][0, 10:], cond[0, 10:])
    torch.testing.assert_close(inside[1]["pooled_output"], options["pooled_output"] + 2.0 * short.tensors["pooled"])
    long = flux_vector(vf, 300)
    out = ed.apply_embedding_direction(positive, [long.embedding_direction()], "flux", 1.0, 0.0, 1.0)
    torch.testing.assert_close(out[0][0][0], cond[0] + long.tensors["direction"][:256])
    assert torch.equal(positive[0][0], cond) and "start_percent" not in positive[0][1]


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_embedding_direction_strength_zero_is_bit_exact_and_only_the_conditional_branch_moves(dit, vf, name):
    arch = "flux" if name == "flux" else "sd3"
    vector = flux_vector(vf, 200, seed=4, pooled=True, arch=arch)
    file = vf.save_vector(vector, dit.vector_dir, f"t5_{name}", overwrite=True).rsplit("/", 1)[-1]
    g, ld, prompts = dit_graph(name)
    latent = g.node("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)
    loaded = g.node("RSLoadVector", vector_name=file)
    runs = {}
    for strength in (0.0, 1.0):
        steered = g.node("RSApplyEmbeddingDirection", id=f"steer{strength:g}", conditioning=prompts["pos"].out(0),
                         vector=loaded.out(0), strength=strength, start_percent=0.0, end_percent=1.0,
                         chunk_mode="every_chunk")
        runs[strength] = g.node("KSampler", model=ld.out(0),
                                **sampler_inputs(name, prompts, latent, positive=steered.out(0)))
    runs["plain"] = g.node("KSampler", model=ld.out(0), **sampler_inputs(name, prompts, latent))
    for node in runs.values():
        keep(g, node.out(0))
    keep(g, ld.out(0))
    keep(g, prompts["neg"].out(0))
    result = dit.run(g.finalize())
    out = {k: result.output(n.id, 0)["samples"] for k, n in runs.items()}
    assert torch.equal(out[0.0], out["plain"])
    assert (out[1.0] - out["plain"]).abs().max() > 1e-4

    model = result.output("ld", 0)
    positive, negative = result.output(prompts["pos"].id), result.output(prompts["neg"].id)
    steered = result.output("steer1")
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = probe_predictions(model, positive, negative, x, [0.9, 0.4], cfg=4.0)
    shifted = probe_predictions(model, steered, negative, x, [0.9, 0.4], cfg=4.0)
    for (s, c0, u0), (_, c1, u1) in zip(plain, shifted):
        assert torch.equal(u0, u1), f"the unconditional prediction changed at sigma {s}"
        assert (c0 - c1).abs().max() > 1e-5, f"the conditional prediction did not change at sigma {s}"


def test_a_vector_of_another_architecture_or_method_is_refused_naming_both(dit, ed, vf):
    model, _, positive, _ = objects(dit, "flux")
    sd1 = vf.SteeringVector("embedding_direction", "sd1", {"direction": torch.zeros(77, 768)}, {"name": "sd1-d"})
    with pytest.raises(ValueError, match=r"direction is for sd1 but the conditioning is \[1, 256, 4096\] \(flux\)"):
        ed.apply_embedding_direction(positive, [sd1.embedding_direction()], sd1.arch, 1.0, 0.0, 1.0)
    hspace = dit.module("steering.hspace")
    cvector = vf.SteeringVector("hspace_cvector", "sd1", {"c": torch.zeros(1280, 8, 8)}, {"name": "c"})
    with pytest.raises(ValueError, match=r"h-space vectors \(c-vector, RespoDiff\) act on a UNet bottleneck .* "
                                         r"FLUX\.1 does not have"):
        hspace.checked_offsets(model, [cvector])
    with pytest.raises(ValueError, match=r"tensor 'pooled' has shape \[768\]; expected \[2048\] for sd3"):
        vf.SteeringVector("embedding_direction", "sd3", {"direction": torch.zeros(3, 4096),
                                                         "pooled": torch.zeros(768)})


# ----------------------------------------------------------------------------- training

ITERATIONS = 96  # the tiny model's prompts differ little: it takes some steps to move its predictions


def train_graph(name: str, **overrides):
    inputs = dict(method="embedding_direction", direction="toward_target", neutral_prompt="a person",
                  target_prompt="a woman", iterations=ITERATIONS, batch_size=4, learning_rate=0.01, lambda_sem=0.5, rank=1,
                  seed=0, resolution=64, rollout_steps=4, scheduler="method_default", target_guidance=1.0,
                  gradient_checkpointing=False, checkpoint_every=10, resume=False, save_name=f"dit_{name}")
    inputs.update(overrides)
    g = GraphBuilder(prefix="")
    ld = g.node(tiny_dit.NODE_ID, id="ld", model=name, seed=0)
    g.node("RSTrainSteeringVector", id="train", model=ld.out(0), clip=ld.out(1), **inputs)
    return g


def test_training_an_embedding_direction_on_flux_lowers_its_loss_and_applies(dit, ed):
    """Trained in the graph on FLUX (toward 'a woman' from 'a person'), the direction brings the model's
    conditional prediction for 'a person' closer to the one for 'a woman' at fixed latents and sigmas
    (measured here with ComfyUI's own model calls): the objective's loss, lower after training. Training and
    applying agree on the token layout; gradient checkpointing of the DiT blocks changes no loss value."""
    result = dit.run(train_graph("flux").finalize())
    vector, series = result.output("train", 0), result.output("train", 1)["series"]["loss"]
    assert len(series) == ITERATIONS and all(v == v for v in series)
    assert vector.arch == "flux"
    assert {k: tuple(v.shape) for k, v in vector.tensors.items()} == {"direction_b": (256, 1),
                                                                       "direction_a": (1, 4096)}
    model, _, neutral, empty = objects(dit, "flux", positive="a person")
    _, _, target, _ = objects(dit, "flux", positive="a woman")
    d = vector.embedding_direction()
    steered = ed.apply_embedding_direction(neutral, [d], "flux", 1.0, 0.0, 1.0)
    torch.testing.assert_close(steered[0][0], neutral[0][0] + d)  # one row per T5 token, as trained
    x = torch.randn(8, 16, 8, 8, generator=torch.Generator().manual_seed(9))
    sigmas = [0.9, 0.7, 0.5, 0.3]
    reference = probe_predictions(model, target, empty, x, sigmas)

    def loss(conditioning) -> float:  # in eps (here: flow velocity) units, as the objective: (x - x0) / sigma
        predictions = probe_predictions(model, conditioning, empty, x, sigmas)
        return sum(float(((c - r[1]) / s).pow(2).mean()) for (s, c, _), r in zip(predictions, reference))

    before, after = loss(neutral), loss(steered)
    assert after < 0.9 * before, (before, after)

    checkpointing = dit.module("steering.checkpointing")
    assert len(checkpointing.checkpointable_layers(model.model.diffusion_model)) == 2  # one double and one single block
    short = {flag: dit.run(train_graph("flux", iterations=8, gradient_checkpointing=flag,
                                       save_name=f"dit_flux_{flag}").finalize()).output("train", 1)["series"]["loss"]
             for flag in (False, True)}
    torch.testing.assert_close(torch.tensor(short[True]), torch.tensor(short[False]), rtol=1e-4, atol=1e-7)


def test_training_refuses_what_a_dit_cannot_learn(dit):
    from devtools.session import PromptError

    with pytest.raises(PromptError, match=r"codsma_cvector objective's vectors act on a UNet bottleneck .* "
                                          r"Stable Diffusion 3 does not have"):
        dit.run(train_graph("sd3", method="codsma_cvector").finalize())
    with pytest.raises(PromptError, match=r"different token counts \[154, \d+\]"):
        dit.run(train_graph("sd3", neutral_prompt="a person\n" + "a person " * 40, iterations=1).finalize())


# ----------------------------------------------------------------------------- the example workflows

DIT_WORKFLOWS = workflows.dit_workflow_paths()


def test_there_are_flux_and_sd3_example_workflows():
    names = {os.path.basename(p) for p in DIT_WORKFLOWS}
    assert {"flux_stg_nudity.json", "flux_dual_latent.json", "flux_train_direction.json",
            "sd35_stg_guider.json"} <= names


@pytest.mark.parametrize("path", DIT_WORKFLOWS, ids=[os.path.basename(p) for p in DIT_WORKFLOWS])
def test_example_workflow_runs_on_the_tiny_model_of_its_architecture(dit, path):
    """The workflow as a FLUX / SD3 user opens it (their file names, the real settings), with its loaders swapped
    for the tiny model of its architecture and the quick settings: every node runs and the images are saved."""
    workflow = workflows.load_workflow(path)
    architecture = workflow["extra"]["responsible_steering"]["dit"]
    real = workflows.ui_to_api(workflow, dit.input_spec)
    loaders = {n["class_type"] for n in real.values()} & set(tiny_dit.LOADER_SLOTS)
    assert loaders == ({"UNETLoader", "DualCLIPLoader", "VAELoader"} if architecture == "flux"
                       else {"CheckpointLoaderSimple", "TripleCLIPLoader"})
    result = dit.run(workflows.dit_profile(real, architecture))
    saved = [image for node in result.ui.values() for image in node.get("images", [])]
    assert saved and all(os.path.isfile(os.path.join(dit.output_dir, i["subfolder"], i["filename"])) for i in saved)


def test_t5_directions_of_different_lengths_combine_with_their_pooled_parts(vf):
    """Rows a shorter direction lacks count as zero (they leave their tokens as they are); pooled parts add up."""
    short, long = flux_vector(vf, 10, seed=1, pooled=True), flux_vector(vf, 20, seed=2)
    combined = vf.combine_vectors([(short, 2.0), (long, -1.0)])
    expected = -long.tensors["direction"].clone()
    expected[:10] += 2.0 * short.tensors["direction"]
    torch.testing.assert_close(combined.embedding_direction(), expected)
    torch.testing.assert_close(combined.pooled_direction(), 2.0 * short.tensors["pooled"])
