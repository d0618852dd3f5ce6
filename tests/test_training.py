"""Train Steering Vector: the three objectives on the tiny real checkpoint, run through real
prompt executions (under torch.inference_mode, with inference-tensor weights, exactly as
ComfyUI runs nodes), checked against plain-torch maths, cancel / resume, bad inputs."""
from __future__ import annotations

import gc
import math
import os

import pytest
import torch

from devtools.session import PromptError
from devtools.sd import add_txt2img, load_tiny_objects, render, sd_graph
from devtools.training_runs import cancelled_training, run_training, train_inputs

METHODS = ("codsma_cvector", "respodiff_ram_sam", "embedding_direction")
# The tiny random-weight model's prompts barely differ, so the target is close: smaller steps
# than the papers' rates (which are the node's defaults) show a clean descent in 4 iterations.
LEARNING_RATES = {"codsma_cvector": 0.02, "respodiff_ram_sam": 0.02, "embedding_direction": 0.1}


@pytest.fixture(scope="module")
def trained(comfy, tiny):
    """One short run per objective (h-space: CoDSMa toward 'a woman'; RespoDiff; embedding direction
    with gradient checkpointing), with the UNet weights snapshotted before."""
    model = tiny[0]
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    originals = {k: v for k, v in model.model.diffusion_model.named_parameters()}
    runs = {}
    for method in METHODS:
        runs[method] = run_training(comfy, method=method, save_name=f"fixture_{method}", target_guidance=1.0,
                                    gradient_checkpointing=method == "embedding_direction",
                                    learning_rate=LEARNING_RATES[method], plot=method == "respodiff_ram_sam")
    return {"runs": runs, "before": before, "originals": originals, "model": model}


# ----------------------------------------------------------------------------- learning

@pytest.mark.parametrize("method", METHODS)
def test_each_objective_loss_decreases(trained, method):
    series = trained["runs"][method]["loss"]["series"]
    assert set(series) == ({"ram", "sam"} if method == "respodiff_ram_sam" else {"loss"})
    main = series["ram" if method == "respodiff_ram_sam" else "loss"]
    assert len(main) == 4 and all(v == v and v >= 0 for v in main)
    assert main[-1] < 0.9 * main[0], f"{method}: {main}"


def test_only_the_vector_changes_and_weights_are_restored(trained):
    model = trained["model"]
    for run in trained["runs"].values():
        assert run["model"] is model  # the training prompts used this very model object
    after = model.model.diffusion_model.state_dict()
    assert after.keys() == trained["before"].keys()
    for key, value in trained["before"].items():
        assert torch.equal(after[key], value), f"UNet weight {key} changed"
    for name, p in model.model.diffusion_model.named_parameters():
        assert p is trained["originals"][name], f"{name} was not restored"
        assert p.is_inference() and p.grad is None  # the original inference tensor, never given a gradient
    for layer in model.model.diffusion_model.modules():
        assert "forward" not in layer.__dict__, "gradient checkpointing left a patched forward"
    assert "output_block_patch" not in repr(model.model_options)


def test_vectors_have_the_right_shapes_and_files(comfy, trained):
    vf = comfy.module("steering.vector_file")
    expected = {"codsma_cvector": ("hspace_cvector", {"c": (1280, 4, 4)}),
                "respodiff_ram_sam": ("respodiff_ram_sam", {"ram": (1280, 4, 4), "sam": (1280, 4, 4)}),
                "embedding_direction": ("embedding_direction", {"direction_b": (77, 1), "direction_a": (1, 768)})}
    for method, run in trained["runs"].items():
        vector = run["vector"]
        kind, shapes = expected[method]
        assert vector.method == kind and vector.arch == "sd1"
        assert {k: tuple(v.shape) for k, v in vector.tensors.items()} == shapes
        loaded = vf.load_vector(os.path.join(comfy.vector_dir, run["filename"]))
        for k, v in vector.tensors.items():
            assert torch.equal(loaded.tensors[k], v)
        training = loaded.info["training"]
        assert training["method"] == method and training["iterations"] == 4 and training["resolution"] == 64
        assert loaded.info["neutral_prompt"] == "a person" and loaded.info["target_prompt"] == "a woman"
    # B starts at zero and must have moved; the embedding direction is non-trivial
    assert trained["runs"]["embedding_direction"]["vector"].tensors["direction_b"].abs().max() > 0


def test_loss_is_shown_and_plotted(trained):
    run = trained["runs"]["respodiff_ram_sam"]
    shown = run["ui"]["rs_loss"][0]
    assert shown["series"] == run["loss"]["series"] and shown["iterations"] == 4
    image = run["plot"]  # Plot Steering Loss fed by the node's LOSS output
    assert image.shape == (1, 160, 320, 3)
    assert image.std() > 0.02  # axes and lines were drawn


def test_trained_vectors_change_the_image(comfy, trained):
    hspace_file = trained["runs"]["codsma_cvector"]["filename"]
    direction_file = trained["runs"]["embedding_direction"]["filename"]
    g, ckpt, pos, neg = sd_graph(comfy)
    baseline = render(comfy, g, add_txt2img(g, ckpt.out(0), ckpt.out(2), pos.out(0), neg.out(0), steps=2))

    g, ckpt, pos, neg = sd_graph(comfy)
    vec = g.node("RSLoadVector", vector_name=hspace_file)
    model = g.node("RSApplyHSpaceVector", model=ckpt.out(0), vector=vec.out(0), strength=1.0, start_percent=0.0,
                  end_percent=1.0, branches="cond_only", resize_mode="bilinear")
    steered = render(comfy, g, add_txt2img(g, model.out(0), ckpt.out(2), pos.out(0), neg.out(0), steps=2))
    assert (steered - baseline).abs().mean() > 1e-4

    g, ckpt, pos, neg = sd_graph(comfy)
    vec = g.node("RSLoadVector", vector_name=direction_file)
    cond = g.node("RSApplyEmbeddingDirection", conditioning=pos.out(0), vector=vec.out(0), strength=1.0, start_percent=0.0,
                 end_percent=1.0, chunk_mode="every_chunk")
    steered = render(comfy, g, add_txt2img(g, ckpt.out(0), ckpt.out(2), cond.out(0), neg.out(0), steps=2))
    assert not torch.equal(steered, baseline)


# ----------------------------------------------------------------------------- cancel and resume

def test_cancel_leaves_a_named_checkpoint_and_resume_equals_an_uninterrupted_run(comfy):
    settings = dict(method="codsma_cvector", iterations=2, rollout_steps=2, seed=5, learning_rate=0.02)
    full = run_training(comfy, save_name="resume_full", **settings)

    ckpt = cancelled_training(comfy, 1, "resume_cut", **settings)
    assert not any(f.startswith("resume_cut") for f in os.listdir(comfy.vector_dir)), "a vector file was written"
    assert ckpt.iteration == 1 and len(ckpt.history["loss"]) == 1
    gc.collect()
    alive = [t for t in gc.get_objects() if issubclass(type(t), torch.Tensor) and t.requires_grad
             and tuple(t.shape) == (1280, 4, 4)]
    assert not alive, "the cancelled run's vector (or its optimizer state) is still alive"
    model = load_tiny_objects(comfy)[0]
    assert all(p.is_inference() for p in model.model.diffusion_model.parameters())

    resumed = run_training(comfy, save_name="resume_cut", resume=True, **settings)
    assert resumed["loss"]["series"] == full["loss"]["series"]
    for role, tensor in full["vector"].tensors.items():
        assert torch.equal(resumed["vector"].tensors[role], tensor), role

    with pytest.raises(PromptError, match="different training run"):
        run_training(comfy, save_name="resume_cut", resume=True, **{**settings, "seed": 6})


# ----------------------------------------------------------------------------- prompt sets

def test_prompt_set_of_one_prompt_repeated_equals_the_single_prompt(comfy):
    """A prompt set draws each sample's prompt after the iteration's noise; a set of the same prompt twice is
    therefore, for one iteration, exactly the single-prompt run."""
    settings = dict(method="codsma_cvector", iterations=1, rollout_steps=2, seed=3, learning_rate=0.02)
    single = run_training(comfy, save_name="set_single", **settings)
    repeated = run_training(comfy, save_name="set_repeated", neutral_prompt="a person\na person", **settings)
    assert torch.equal(single["vector"].tensors["c"], repeated["vector"].tensors["c"])
    different = run_training(comfy, save_name="set_different", neutral_prompt="a person\na red car", **settings)
    assert not torch.equal(single["vector"].tensors["c"], different["vector"].tensors["c"])
    assert different["vector"].info["neutral_prompt"] == "a person | a red car"


def test_paired_targets_and_their_validation(comfy):
    run = run_training(comfy, save_name="paired", method="embedding_direction", iterations=2, rollout_steps=2,
                       neutral_prompt="a doctor\na nurse", target_prompt="a female doctor\na male nurse")
    assert run["vector"].info["target_prompt"] == "a female doctor | a male nurse"
    assert run["vector"].info["neutral_prompt"] == "a doctor | a nurse"
    assert run["vector"].embedding_direction().shape == (77, 768) and len(run["loss"]["series"]["loss"]) == 2
    with pytest.raises(PromptError, match="target_prompt has 2 lines for 3 neutral prompts"):
        run_training(comfy, save_name="unpaired", neutral_prompt="a\nb\nc", target_prompt="x\ny")


def test_batched_rollout_with_one_prompt_per_sample(comfy, tiny):
    """Per-sample prompts in one batched run == each sample rolled out alone with its own prompt."""
    rollout = comfy.module("training.rollout")
    unet = comfy.module("training.unet")
    model, clip, _ = tiny
    with torch.inference_mode():
        conds = [clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in ("a person", "a red car", "")]
        with torch.inference_mode(False), unet.gradient_ready(model.model.diffusion_model), \
                unet.sampling_run(model):
            caller = unet.UNetCaller(model, torch.device("cpu"), torch.float32, autocast=False)
            prompt_set = caller.prepare_prompts(conds[:2], (3, 4, 8, 8), "neutral")
            uncond = caller.prepare_prompt(conds[2], (3, 4, 8, 8), "uncond")
            rows = prompt_set.take(torch.tensor([1, 0, 1]))
            sigmas = rollout.schedule(caller.sampling, 3)
            noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
            stop = torch.tensor([3, 1, 2])
            batched = rollout.batched_rollout(caller, noise, sigmas, stop, rows, uncond, 3.0)
            alone = [rollout.batched_rollout(caller, noise[i:i + 1], sigmas, stop[i:i + 1],
                                             caller.prepare_prompt(conds[j], (1, 4, 8, 8), "p"), uncond, 3.0)
                     for i, j in enumerate((1, 0, 1))]
            with pytest.raises(ValueError, match="2 prompt rows for a batch of 3 samples"):
                caller.eps(noise, sigmas[:1].expand(3), [prompt_set])
    assert prompt_set.rows == 2 and rows.rows == 3
    assert torch.allclose(batched, torch.cat(alone), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched[0], batched[2])  # same prompt, other noise and stop step


def test_respodiff_sam_learns_at_its_own_rate(comfy):
    """SAM's learning rate is sam_lr_scale x RAM's (Adam moves each element by about lr per step). With RAM-only
    rollouts RAM never sees SAM (its rollout and loss use RAM alone), so RAM is the same whatever SAM's rate."""
    settings = dict(method="respodiff_ram_sam", iterations=3, rollout_steps=2, seed=4, learning_rate=0.05,
                    respodiff_rollout="ram_only")
    slow = run_training(comfy, save_name="sam_slow", sam_lr_scale=0.01, **settings)["vector"].tensors
    fast = run_training(comfy, save_name="sam_fast", sam_lr_scale=1.0, **settings)["vector"].tensors
    # the reference's nn.Linear(10 -> 1280*h*w) default init, RAM drawn first: U(-1/sqrt(10), 1/sqrt(10))
    g = torch.Generator().manual_seed(4)
    init = {r: (torch.rand(1280, 4, 4, generator=g) * 2 - 1) / 10 ** 0.5 for r in ("ram", "sam")}
    assert torch.equal(slow["ram"], fast["ram"])
    moved_slow = float((slow["sam"] - init["sam"]).abs().max())
    moved_fast = float((fast["sam"] - init["sam"]).abs().max())
    assert 0 < moved_slow <= 3 * 0.05 * 0.01 * 1.01
    assert moved_fast > 0.05 and moved_fast > 20 * moved_slow


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_give_clear_errors(comfy):
    with pytest.raises(PromptError, match="neutral_prompt is empty"):
        run_training(comfy, neutral_prompt="  ")
    with pytest.raises(PromptError, match="target_prompt is empty"):
        run_training(comfy, target_prompt="")
    with pytest.raises(PromptError, match="iterations"):
        run_training(comfy, iterations=0)
    with pytest.raises(PromptError, match=r"batch_size 64 at 4096 px needs about .* GiB"):
        run_training(comfy, batch_size=64, resolution=4096, save_name="too_big")
    assert not any(f.startswith("too_big") for f in os.listdir(comfy.vector_dir))


def test_mismatched_model_and_clip(comfy, tiny):
    from devtools import tiny_models

    node = comfy.node_class("RSTrainSteeringVector")
    sdxl = tiny_models.build_unet_model("sdxl_tiny", device="cpu")
    with torch.inference_mode(), pytest.raises(Exception, match="CLIP gives sd1 conditioning .* model is sdxl"):
        node.execute(model=sdxl, clip=tiny[1], **train_inputs(save_name="mismatch"))


# ----------------------------------------------------------------------------- maths

def plain_eps(unet, sampling, z, k, context, offset=None):
    """Independent eps of an EPS model: the raw UNet at timestep k, input scaled by 1/sqrt(sigma^2+1)."""
    sigma = sampling.sigmas[k]
    options = {}
    if offset is not None:
        def add(h, hsp, transformer_options):
            return (h + offset if transformer_options["block"] == ("output", 0) else h), hsp
        options = {"patches": {"output_block_patch": [add]}}
    x_in = z / torch.sqrt(sigma ** 2 + 1)
    t = torch.full((z.shape[0],), float(k))
    return unet(x_in, t, context=context.expand(z.shape[0], -1, -1), transformer_options=options).float()


def test_objectives_match_plain_torch_maths(comfy, tiny, plain_unet):
    obj = comfy.module("training.objectives")
    loop = comfy.module("training.loop")
    unet = comfy.module("training.unet")
    model, clip, _ = tiny
    sampling = model.get_model_object("model_sampling")
    k = 600
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 8, 8, generator=g) * 2.0
    offsets = {r: 0.5 * torch.randn(1280, 4, 4, generator=g) for r in ("c", "ram", "sam")}
    b, a = 0.05 * torch.randn(77, 2, generator=g), torch.randn(2, 768, generator=g)
    texts = {"neutral": "a person", "other": "a woman", "uncond": ""}
    with torch.inference_mode():  # as the executor runs nodes
        conds = {k_: clip.encode_from_tokens_scheduled(clip.tokenize(t)) for k_, t in texts.items()}
        with torch.inference_mode(False), torch.enable_grad(), unet.gradient_ready(model.model.diffusion_model), \
                unet.sampling_run(model):
            caller = unet.UNetCaller(model, torch.device("cpu"), torch.float32, autocast=False)
            prompts = obj.Prompts(*(caller.prepare_prompt(conds[n], tuple(z.shape), n) for n in texts))
            sigma = torch.full((2,), float(sampling.sigmas[k]))
            ours = {}
            cases = {"codsma_cvector": ("toward_target", 2.0, {"c": offsets["c"]}),
                     "respodiff_ram_sam": ("away_from_concept", 3.0, {"ram": offsets["ram"], "sam": offsets["sam"]}),
                     "embedding_direction": ("away_from_concept", 7.5, {"direction_b": b, "direction_a": a})}
            for method, (direction, guidance, tensors) in cases.items():
                params = {r: t.clone().requires_grad_(True) for r, t in tensors.items()}
                cfg = loop.TrainConfig(method=method, direction=direction, target_guidance=guidance,
                                       lambda_sem=0.7).resolved()
                phases = obj.get_objective(method).phases(caller, z.clone(), sigma, prompts, params, cfg)
                for phase in phases:
                    loss = phase.loss()
                    grads = torch.autograd.grad(loss, [params[r] for r in phase.params])
                    ours[(method, phase.name)] = (loss.detach(), dict(zip(phase.params, grads)))
        context = {n: conds[n][0][0].clone() for n in texts}

    # the same formulas in plain torch on the independently loaded UNet
    def eps(ctx, offset=None):
        return plain_eps(plain_unet, sampling, z, k, ctx, offset)

    with torch.no_grad():
        e_n, e_o, e_u = eps(context["neutral"]), eps(context["other"]), eps(context["uncond"])
    expected = {}
    c = offsets["c"].clone().requires_grad_(True)
    target = e_u + 2.0 * (e_o - e_u)
    loss = ((eps(context["neutral"], c) - target) ** 2).mean()
    expected[("codsma_cvector", "loss")] = (loss, {"c": torch.autograd.grad(loss, c)[0]})
    ram, sam = offsets["ram"].clone().requires_grad_(True), offsets["sam"].clone().requires_grad_(True)
    target = e_o + 3.0 * (e_n - e_o)  # away from the concept, negative prompting around the neutral prompt
    loss = ((eps(context["neutral"], ram) - target) ** 2).mean()
    expected[("respodiff_ram_sam", "ram")] = (loss, {"ram": torch.autograd.grad(loss, ram)[0]})
    loss = 0.7 * ((eps(context["neutral"], offsets["ram"] + sam) - e_n) ** 2).mean()
    expected[("respodiff_ram_sam", "sam")] = (loss, {"sam": torch.autograd.grad(loss, sam)[0]})
    bb, aa = b.clone().requires_grad_(True), a.clone().requires_grad_(True)
    target = e_o + 7.5 * (e_u - e_o)  # reference: away from the unsafe concept toward the empty prompt
    loss = 10.0 * ((eps(context["neutral"] + bb @ aa) - target) ** 2).mean()
    gb, ga = torch.autograd.grad(loss, [bb, aa])
    expected[("embedding_direction", "loss")] = (loss, {"direction_b": gb, "direction_a": ga})

    assert set(ours) == set(expected)
    for key, (loss, grads) in expected.items():
        our_loss, our_grads = ours[key]
        assert torch.allclose(our_loss, loss.detach(), rtol=1e-4, atol=1e-7), (key, our_loss, loss)
        for role, grad in grads.items():
            assert grad.abs().max() > 0, (key, role)
            assert torch.allclose(our_grads[role], grad, rtol=1e-3, atol=1e-4 * grad.abs().max()), (key, role)


def test_batched_rollout_equals_one_run_per_sample(comfy, tiny):
    rollout = comfy.module("training.rollout")
    unet = comfy.module("training.unet")
    model, clip, _ = tiny
    with torch.inference_mode():
        conds = [clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in ("a person", "")]
        with torch.inference_mode(False), unet.gradient_ready(model.model.diffusion_model), \
                unet.sampling_run(model):
            caller = unet.UNetCaller(model, torch.device("cpu"), torch.float32, autocast=False)
            cond, uncond = (caller.prepare_prompt(c, (3, 4, 8, 8), "p") for c in conds)
            sigmas = rollout.schedule(caller.sampling, 3)
            noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
            stop = torch.tensor([2, 0, 1])
            offset = torch.randn(1280, 4, 4, generator=torch.Generator().manual_seed(2))
            batched = rollout.batched_rollout(caller, noise, sigmas, stop, cond, uncond, 3.0, offset=offset)
            single = rollout.sequential_rollout(caller, noise, sigmas, stop, cond, uncond, 3.0, offset=offset)
    start = rollout.start_latent(caller.sampling, float(sigmas[0]), noise)
    assert torch.equal(batched[1], start[1])  # stopped at step 0: pure (scaled) noise
    assert torch.allclose(batched, single, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched[0], start[0])


def test_sdxl_architecture_trains(comfy):
    """SDXL (2048-wide text, ADM vector y) through the same loop, on a directly built SDXL UNet."""
    from devtools import tiny_models

    loop = comfy.module("training.loop")
    model = tiny_models.build_unet_model("sdxl_tiny", device="cpu")
    g = torch.Generator().manual_seed(0)

    def cond():
        return [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]

    conditionings = {"neutral": cond(), "other": cond(), "uncond": cond()}
    for method, shapes in (("codsma_cvector", {"c": (1280, 4, 4)}),
                           ("embedding_direction", {"direction_b": (77, 1), "direction_a": (1, 2048)})):
        cfg = loop.TrainConfig(method=method, iterations=1, batch_size=1, resolution=64, rollout_steps=2, arch="sdxl")
        with torch.inference_mode():
            result = loop.train(model, conditionings, cfg)
        assert {k: tuple(v.shape) for k, v in result.params.items()} == shapes
        assert len(result.history["loss"]) == 1 and math.isfinite(result.history["loss"][0])


# ----------------------------------------------------------------------------- the sampling path

def train_direct(comfy, tiny, model, **settings):
    loop = comfy.module("training.loop")
    clip = tiny[1]
    with torch.inference_mode():
        conds = {k: clip.encode_from_tokens_scheduled(clip.tokenize(t))
                 for k, t in (("neutral", "a person"), ("other", "a woman"), ("uncond", ""))}
        cfg = loop.TrainConfig(**{**dict(method="codsma_cvector", iterations=2, batch_size=2, resolution=64,
                                         rollout_steps=2, seed=2, learning_rate=0.02, arch="sd1"), **settings})
        return loop.train(model, conds, cfg)


def test_training_honours_the_models_wrappers_and_patches(comfy, tiny):
    """Training calls the model as sampling does: a model_function_wrapper and a transformer patch set on the
    MODEL are run for every UNet call; an identity wrapper leaves the vector bit for bit as it was."""
    model = tiny[0]
    calls, attn_calls = [], []

    def identity(apply_model, args):
        calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    def attn2_output(out, extra_options):
        attn_calls.append(extra_options["block"])
        return out

    patched = model.clone()
    patched.set_model_unet_function_wrapper(identity)
    patched.set_model_attn2_output_patch(attn2_output)
    plain = train_direct(comfy, tiny, model.clone(), direction="away_from_concept", target_guidance=2.0)
    wrapped = train_direct(comfy, tiny, patched, direction="away_from_concept", target_guidance=2.0)
    assert calls and attn_calls
    # the neutral prompt is the conditional chunk (0) of its calls; with CFG the empty prompt is chunk 1
    assert [0, 1] in [sorted(c) for c in calls] and all(0 in c for c in calls)
    assert wrapped.history == plain.history
    assert torch.equal(wrapped.params["c"], plain.params["c"])
    assert "model_function_wrapper" not in model.model_options  # the MODEL given was never changed


def test_a_wrapper_that_halves_eps_quarters_the_loss(comfy, tiny):
    """A wrapper giving denoised' = (x + denoised) / 2 halves every eps (eps = (x - denoised) / sigma). With one
    rollout step z is the start latent (no model call before the loss), so the first loss is a quarter."""
    def halve_eps(apply_model, args):
        return 0.5 * (args["input"] + apply_model(args["input"], args["timestep"], **args["c"]))

    patched = tiny[0].clone()
    patched.set_model_unet_function_wrapper(halve_eps)
    settings = dict(rollout_steps=1, iterations=1, schedule="random_timesteps", target_guidance=1.0)
    plain = train_direct(comfy, tiny, tiny[0].clone(), **settings)
    halved = train_direct(comfy, tiny, patched, **settings)
    first, first_halved = plain.history["loss"][0], halved.history["loss"][0]
    assert first > 0
    assert math.isclose(first_halved, first / 4, rel_tol=1e-4), (first, first_halved)


@pytest.mark.parametrize("method", ["codsma_cvector", "respodiff_ram_sam", "embedding_direction"])
def test_in_training_handling_changes_no_bit(comfy, tiny, monkeypatch, method):
    """The version layer's in-training mode (forced on here, where ComfyUI 0.3.75 has no such flag) is active
    during every UNet call of training, leaves vector and loss bit for bit as with it off, and is gone after."""
    import comfy.model_management as mm

    seen = []

    def record(apply_model, args):
        seen.append(getattr(mm, "in_training", "absent"))
        return apply_model(args["input"], args["timestep"], **args["c"])

    runs = {}
    for forced in (True, False):
        # forced: a ComfyUI with upstream 0.38's training state (comfy/model_management.py ``in_training``);
        # else one without it, as 0.3.75
        with monkeypatch.context() as patch:
            if forced:
                patch.setattr(mm, "in_training", False, raising=False)
            else:
                patch.delattr(mm, "in_training", raising=False)
            patched = tiny[0].clone()
            patched.set_model_unet_function_wrapper(record)
            seen.clear()
            runs[forced] = train_direct(comfy, tiny, patched, method=method)
            assert seen and set(seen) == ({True} if forced else {"absent"}), set(seen)
    assert runs[True].history == runs[False].history
    assert runs[True].params.keys() == runs[False].params.keys()
    assert all(torch.equal(runs[True].params[k], runs[False].params[k]) for k in runs[True].params)
    assert getattr(mm, "in_training", "absent") == "absent" or not mm.in_training
