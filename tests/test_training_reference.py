"""Training as the authors' code runs it, each against a hand-written plain-torch loop on an
independently loaded copy of the tiny UNet:

* embedding direction on-policy (``train_ptuner.py``): one trajectory per prompt, an Adam update at every
  trained step, the latents advanced (LMS, order 4) with the CFG prediction of the shifted embedding
  (detached, before the update), the direction only from the warm-up's end;
* RespoDiff (``train_respodiff_fair.py`` and its pipeline): rollouts with RAM + SAM on the conditional half,
  RAM / SAM starting at nn.Linear's default init;
* the trained step indices on the default settings (reference: steps >= 10 counted from 1, of 50);
* the objective registry drives the node's method list and the loop;
* an on-policy run cancelled inside a trajectory resumes to exactly the uninterrupted result.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from devtools.training_runs import cancelled_training, run_training


def encode(clip, texts):
    with torch.inference_mode():
        return {t: clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in texts}


def context(conds, text):
    return conds[text][0][0].clone()


class PlainEps:
    """eps of an EPS model at sigma, the plain way: the raw UNet at ComfyUI's timestep of sigma, the input
    scaled by 1 / sqrt(sigma^2 + 1); an optional offset added to the middle-block output."""

    def __init__(self, unet, sampling):
        self.unet, self.sampling = unet, sampling

    def __call__(self, z, sigma, ctx, offset=None):
        options = {}
        if offset is not None:
            def add(h, hsp, transformer_options):
                return (h + offset if transformer_options["block"] == ("output", 0) else h), hsp
            options = {"patches": {"output_block_patch": [add]}}
        sigma = torch.as_tensor(float(sigma))
        t = self.sampling.timestep(sigma.reshape(1)).float().expand(z.shape[0])
        x_in = z / torch.sqrt(sigma ** 2 + 1)
        return self.unet(x_in, t, context=ctx.expand(z.shape[0], -1, -1), transformer_options=options).float()


def start_latent(noise, sigmas, sampling):
    s0 = float(sigmas[0])
    if math.isclose(s0, float(sampling.sigma_max), rel_tol=1e-5):
        return noise * math.sqrt(1.0 + s0 ** 2)
    return noise * s0


def train_loop(comfy, model, conds, cfg_kwargs, neutral, other):
    loop = comfy.module("training.loop")
    cfg = loop.TrainConfig(**cfg_kwargs)
    conditionings = {"neutral": [conds[t] for t in neutral], "other": [conds[t] for t in other], "uncond": conds[""]}
    with torch.inference_mode():  # as ComfyUI runs the node
        return loop.train(model, conditionings, cfg)


# ----------------------------------------------------------------------------- embedding direction on-policy

def lms_coefficients(sigmas, j: int, order: int) -> list[float]:
    """diffusers' LMSDiscreteScheduler: c_i = integral from sigma_j to sigma_{j+1} of the Lagrange basis polynomial
    of sigma_{j-i} over sigma_j .. sigma_{j-order+1} (Gauss-Legendre, exact for these cubics)."""
    s = [float(v) for v in sigmas]
    nodes, weights = np.polynomial.legendre.leggauss(8)
    lo, hi = s[j], s[j + 1]
    tau = (hi - lo) / 2 * nodes + (hi + lo) / 2
    out = []
    for i in range(order):
        basis = np.ones_like(tau)
        for k in range(order):
            if k != i:
                basis *= (tau - s[j - k]) / (s[j - i] - s[j - k])
        out.append(float(((hi - lo) / 2 * weights * basis).sum()))
    return out


class LMS:
    """The reference's sampler, order 4: x <- x + sum_i c_i eps_{j-i}, on every step (the last one too)."""

    def __init__(self, sigmas):
        self.sigmas, self.history = sigmas, []

    def step(self, x, j, eps):
        self.history = (self.history + [eps])[-4:]
        order = min(j + 1, 4)
        coeffs = lms_coefficients(self.sigmas, j, order)
        return x + sum(c * self.history[-1 - i] for i, c in enumerate(coeffs))


def hand_written_on_policy(eps, sampling, sigmas, conds, neutral, concept, *, seed, batch, trajectories, lo, hi,
                           on_policy=True, lr=0.06, g=7.5, scale=10.0):
    """train_ptuner.py's loop, batched over prompts: the prompt set in order, a trajectory per prompt."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.zeros(77, 1, requires_grad=True)
    a = torch.randn(1, 768, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([b, a], lr=lr)
    ctx_u, ctx_o = context(conds, ""), context(conds, concept)
    losses = []
    for traj in range(trajectories):
        noise = torch.randn(batch, 4, 8, 8, generator=gen)
        picks = [(traj * batch + i) % len(neutral) for i in range(batch)]
        ctx = torch.cat([context(conds, neutral[p]) for p in picks])
        x = start_latent(noise, sigmas, sampling)
        lms = LMS(sigmas)
        for j in range(hi):
            s = float(sigmas[j])
            with torch.no_grad():
                e_u = eps(x, s, ctx_u)
            if j < lo:  # warm-up: the prompt as it is
                with torch.no_grad():
                    e = e_u + g * (eps(x, s, ctx) - e_u)
            else:
                with torch.no_grad():
                    e_o = eps(x, s, ctx_o)
                    target = e_o + g * (e_u - e_o)  # away from the concept toward the empty prompt
                e_shifted = eps(x, s, ctx + b @ a)
                loss = scale * F.mse_loss(e_shifted, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                with torch.no_grad():
                    cond = e_shifted.detach() if on_policy else eps(x, s, ctx)
                    e = e_u + g * (cond - e_u)
            x = lms.step(x, j, e)
    return b.detach(), a.detach(), losses


def test_on_policy_embedding_direction_equals_the_reference_loop(comfy, tiny, plain_unet):
    from comfy.samplers import calculate_sigmas

    model, clip, _ = tiny
    neutral = ["a person", "a red car", "a dog"]
    conds = encode(clip, neutral + ["violence", ""])
    sampling = model.get_model_object("model_sampling")
    steps = 6
    sigmas = calculate_sigmas(sampling, "normal", steps).float()
    lo, hi = round(0.18 * steps), steps  # the method's default window: 1..5 of 6
    trajectories = 2
    result = train_loop(comfy, model, conds, dict(
        method="embedding_direction", direction="away_from_concept", iterations=trajectories * (hi - lo),
        batch_size=2, seed=7, resolution=64, rollout_steps=steps), neutral, ["violence"])
    assert (result.config.schedule, result.config.scheduler, result.config.rollout_sampler) == (
        "on_policy", "normal", "lms")

    eps = PlainEps(plain_unet, sampling)
    b, a, losses = hand_written_on_policy(eps, sampling, sigmas, conds, neutral, "violence", seed=7, batch=2,
                                          trajectories=trajectories, lo=lo, hi=hi)
    ours_b, ours_a = result.params["direction_b"], result.params["direction_a"]
    assert len(result.history["loss"]) == len(losses) == 10
    assert torch.allclose(torch.tensor(result.history["loss"]), torch.tensor(losses), rtol=1e-3)
    assert torch.allclose(ours_b, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))
    assert torch.allclose(ours_a, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()))

    # the same loop advancing with the un-shifted prediction (the old off-policy rollout) ends elsewhere
    b_off, a_off, _ = hand_written_on_policy(eps, sampling, sigmas, conds, neutral, "violence", seed=7, batch=2,
                                             trajectories=trajectories, lo=lo, hi=hi, on_policy=False)
    off = (b_off @ a_off - b @ a).abs().max()
    assert off > 100 * (ours_b @ ours_a - b @ a).abs().max() and off > 1e-5


def test_default_trained_steps_are_the_references(comfy, tiny):
    """Reference: 50 LMS steps on linspace(999, 0, 50), counted from 1, updates at steps >= 10; here the
    'normal' schedule (the same timesteps) and updates (the only UNet calls with gradients) at 0-based 9..49,
    the direction absent before."""
    from comfy.samplers import calculate_sigmas

    model, clip, _ = tiny
    conds = encode(clip, ["a person", "violence", ""])
    sampling = model.get_model_object("model_sampling")
    sigmas = calculate_sigmas(sampling, "normal", 50).float()
    timesteps = sampling.timestep(sigmas[:-1]).float()
    assert torch.equal(timesteps, torch.linspace(999, 0, 50).round())  # the reference's grid

    calls = []

    def record(h, hsp, transformer_options):
        if transformer_options.get("block") == ("output", 0):
            calls.append((float(transformer_options["sigmas"][0]), torch.is_grad_enabled()))
        return h, hsp

    patched = model.clone()
    patched.set_model_output_block_patch(record)
    reference_steps = [ff - 1 for ff in range(1, 51) if ff >= 10]
    result = train_loop(comfy, patched, conds, dict(method="embedding_direction", direction="away_from_concept",
                                                    iterations=len(reference_steps), batch_size=1, resolution=64),
                        ["a person"], ["violence"])

    def index(sigma):
        return int((sigmas[:-1] - sigma).abs().argmin())

    trained = [index(s) for s, grad in calls if grad]
    assert trained == reference_steps == list(range(9, 50))
    assert len(result.history["loss"]) == 41
    warm_up = sorted({index(s) for s, grad in calls if not grad and index(s) < 9})
    assert warm_up == list(range(9))
    assert "output_block_patch" not in repr(model.model_options)  # the clone was patched, not the model


# ----------------------------------------------------------------------------- RespoDiff

def hand_written_respodiff(eps, sampling, sigmas, conds, *, seed, batch, stop, shape, ram_in_rollout_only,
                           lr=0.1, sam_lr=0.001, lam=0.5, g_roll=3.0, g_target=4.0):
    """train_respodiff_fair.py's iteration: rollout (CFG 3, the pipeline's controlnet_cond_guidance: RAM + SAM on
    the conditional half), RAM step on MSE(eps(h + RAM), eps_u + 4 (eps_target - eps_u)), then SAM step on
    lambda MSE(eps(h + RAM + SAM), eps(h)). RAM / SAM start at nn.Linear(10, n)'s default init."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(10)  # kaiming_uniform_(a=sqrt(5)) with fan_in = 10 concepts
    ram = ((torch.rand(*shape, generator=gen) * 2 - 1) * bound).requires_grad_(True)
    sam = ((torch.rand(*shape, generator=gen) * 2 - 1) * bound).requires_grad_(True)
    torch.randint(stop, stop + 1, (batch,), generator=gen)  # the loop's draw of the stop steps
    noise = torch.randn(batch, 4, 8, 8, generator=gen)
    ctx_n, ctx_o, ctx_u = context(conds, "a person"), context(conds, "a woman"), context(conds, "")
    x = start_latent(noise, sigmas, sampling)
    with torch.no_grad():
        for j in range(stop):
            s, s_next = float(sigmas[j]), float(sigmas[j + 1])
            offset = ram if ram_in_rollout_only else ram + sam
            e_c, e_u = eps(x, s, ctx_n, offset), eps(x, s, ctx_u)
            x = x + (s_next - s) * (e_u + g_roll * (e_c - e_u))
        s = float(sigmas[stop])
        e_o, e_u, e_n = eps(x, s, ctx_o), eps(x, s, ctx_u), eps(x, s, ctx_n)
        target = e_u + g_target * (e_o - e_u)
    opt_ram, opt_sam = torch.optim.Adam([ram], lr=lr), torch.optim.Adam([sam], lr=sam_lr)
    loss_ram = F.mse_loss(eps(x, s, ctx_n, ram), target)
    opt_ram.zero_grad()
    loss_ram.backward()
    opt_ram.step()
    loss_sam = lam * F.mse_loss(eps(x, s, ctx_n, ram.detach() + sam), e_n)
    opt_sam.zero_grad()
    loss_sam.backward()
    opt_sam.step()
    return ram.detach(), sam.detach(), float(loss_ram.detach()), float(loss_sam.detach())


@pytest.mark.parametrize("rollout", ["ram_sam", "ram_only"])
def test_respodiff_rollout_and_init_are_the_references(comfy, tiny, plain_unet, rollout):
    from comfy.samplers import calculate_sigmas

    model, clip, _ = tiny
    conds = encode(clip, ["a person", "a woman", ""])
    sampling = model.get_model_object("model_sampling")
    steps = 4
    sigmas = calculate_sigmas(sampling, "ddim_uniform", steps).float()
    # window [2, 3): every sample stops after 2 rollout steps
    settings = dict(method="respodiff_ram_sam", direction="toward_target", iterations=1, batch_size=2, seed=11,
                    resolution=64, rollout_steps=steps, t_start=0.5, t_end=0.75)
    if rollout == "ram_only":
        settings["respodiff_rollout"] = "ram_only"
    result = train_loop(comfy, model, conds, settings, ["a person"], ["a woman"])
    assert result.config.schedule == "random_timesteps" and result.config.init == "nn_linear_default"
    shape = tuple(result.params["ram"].shape)

    eps = PlainEps(plain_unet, sampling)
    expected = {}
    for variant in ("ram_sam", "ram_only"):
        expected[variant] = hand_written_respodiff(eps, sampling, sigmas, conds, seed=11, batch=2, stop=2, shape=shape,
                                                   ram_in_rollout_only=variant == "ram_only")
    ram, sam, loss_ram, loss_sam = expected[rollout]
    assert math.isclose(result.history["ram"][0], loss_ram, rel_tol=1e-3)
    assert math.isclose(result.history["sam"][0], loss_sam, rel_tol=1e-3)
    # Adam's first step moves every element by lr * g / (|g| + eps), +-lr = 0.1 unless |g| is near eps: float noise
    # (it differs between CPUs: up to 0.003 seen on an AMD EPYC) shows only in those few elements; a wrong step (a
    # sign, a missing term) moves elements by up to 2 lr
    diff = (result.params["ram"] - ram).abs()
    assert float(diff.max()) < 0.01 and int((diff > 0.002).sum()) <= diff.numel() // 1000, float(diff.max())
    assert torch.allclose(result.params["sam"], sam, rtol=1e-4, atol=0.02 * 0.001)
    # the two rollouts give measurably different RAM updates, so the comparison above can tell them apart
    other = expected["ram_only" if rollout == "ram_sam" else "ram_sam"]
    assert (other[0] - ram).abs().max() > 50 * (result.params["ram"] - ram).abs().max()
    # nn.Linear's default init: std 1/sqrt(30) ~ 0.18 (the untouched part of SAM barely moved at lr 1e-3)
    assert abs(float(sam.std()) - 1 / math.sqrt(30)) < 0.01


# ----------------------------------------------------------------------------- the registry

def method_options(node) -> list[str]:
    schema = node.define_schema()
    return next(i.options for i in schema.inputs if i.id == "method")


def test_the_registry_drives_the_node_and_the_loop(comfy, tiny):
    obj = comfy.module("training.objectives")
    node = comfy.node_class("RSTrainSteeringVector")
    before = method_options(node)
    assert before == list(obj.OBJECTIVES) == ["embedding_direction", "codsma_cvector", "respodiff_ram_sam"]

    class HalfCVector(obj.CodsmaCVector):
        """A new objective: the c-vector's loss on half the offset (nothing else written)."""

        name = "test_half_cvector"
        description = "test only"

        def phases(self, caller, z, sigma, prompts, params, cfg):
            eps = obj.reference_eps(caller, z, sigma, prompts, ["other"])

            def loss():
                out = caller.eps(z, sigma, [prompts.neutral], offset=0.5 * params["c"])[0]
                return F.mse_loss(out, eps["other"])

            return [obj.Phase("loss", ("c",), loss)]

    obj.register_objective(HalfCVector())
    try:
        assert method_options(node) == before + ["test_half_cvector"]
        model, clip, _ = tiny
        conds = encode(clip, ["a person", "a woman", ""])
        result = train_loop(comfy, model, conds, dict(method="test_half_cvector", iterations=2, batch_size=1,
                                                      resolution=64, rollout_steps=2), ["a person"], ["a woman"])
        assert set(result.params) == {"c"} and len(result.history["loss"]) == 2
        assert result.config.schedule == "random_timesteps"  # its parent's defaults
    finally:
        obj.unregister_objective("test_half_cvector")
    assert method_options(node) == before
    loop = comfy.module("training.loop")
    with pytest.raises(ValueError, match=r"method 'nope'; expected one of \['embedding_direction'"):
        loop.TrainConfig(method="nope").resolved()
    with pytest.raises(ValueError, match="init 'normal' is not offered for embedding_direction"):
        loop.TrainConfig(method="embedding_direction", init="normal").resolved().validate()
    with pytest.raises(ValueError, match="schedule 'sometimes'; expected one of"):
        loop.TrainConfig(method="codsma_cvector", schedule="sometimes").resolved().validate()


# ----------------------------------------------------------------------------- resume inside a trajectory

def test_on_policy_cancel_inside_a_trajectory_resumes_exactly(comfy):
    # 4 steps: window 1..3 (3 updates per trajectory); cancelled after update 2, inside the first trajectory
    settings = dict(method="embedding_direction", direction="away_from_concept", iterations=5, rollout_steps=4,
                    seed=2, learning_rate=0.1, target_prompt="violence")
    full = run_training(comfy, save_name="onpolicy_full", **settings)
    state = cancelled_training(comfy, 2, "onpolicy_cut", **settings)
    assert state.iteration == 2 and tuple(state.trajectory["x"].shape) == (2, 4, 8, 8)
    resumed = run_training(comfy, save_name="onpolicy_cut", resume=True, **settings)
    assert resumed["loss"]["series"] == full["loss"]["series"]
    for role, tensor in full["vector"].tensors.items():
        assert torch.equal(resumed["vector"].tensors[role], tensor), role
    assert full["vector"].info["training"]["schedule"] == "on_policy"


def test_lms_rollout_batched_equals_the_hand_written_sampler(comfy, tiny, plain_unet):
    """Samples stopping at different steps in one batched LMS run == each sample's own hand-written LMS run."""
    from comfy.samplers import calculate_sigmas

    rollout = comfy.module("training.rollout")
    unet = comfy.module("training.unet")
    model, clip, _ = tiny
    conds = encode(clip, ["a person", ""])
    sampling = model.get_model_object("model_sampling")
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    stop = torch.tensor([5, 1, 3])
    with torch.inference_mode(), torch.inference_mode(False), unet.gradient_ready(model.model.diffusion_model), \
                unet.sampling_run(model):
        caller = unet.UNetCaller(model, torch.device("cpu"), torch.float32, autocast=False)
        cond, uncond = (caller.prepare_prompt(conds[t], (3, 4, 8, 8), t) for t in ("a person", ""))
        sigmas = rollout.schedule(caller.sampling, 5, "normal")
        ours = rollout.batched_rollout(caller, noise, sigmas, stop, cond, uncond, 3.0,
                                       stepper=rollout.Stepper(sigmas, "lms"))
    assert torch.equal(sigmas, calculate_sigmas(sampling, "normal", 5).float())
    eps = PlainEps(plain_unet, sampling)
    ctx_c, ctx_u = context(conds, "a person"), context(conds, "")
    expected, euler = [], []
    with torch.no_grad():
        for i in range(3):
            x = start_latent(noise[i:i + 1], sigmas, sampling)
            x_euler, lms = x.clone(), LMS(sigmas)
            for j in range(int(stop[i])):
                s = float(sigmas[j])
                e_c, e_u = eps(x, s, ctx_c), eps(x, s, ctx_u)
                x = lms.step(x, j, e_u + 3.0 * (e_c - e_u))
                e_c, e_u = eps(x_euler, s, ctx_c), eps(x_euler, s, ctx_u)
                x_euler = x_euler + (float(sigmas[j + 1]) - s) * (e_u + 3.0 * (e_c - e_u))
            expected.append(x)
            euler.append(x_euler)
    expected, euler = torch.cat(expected), torch.cat(euler)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours[0], euler[0], rtol=1e-3, atol=1e-3)  # 5 steps: LMS is not Euler
