"""STG (Safe Text-embedding Guidance) on the tiny real checkpoint, run as ComfyUI runs it.

The safety score in most tests is the analytic colour statistic "brightness" (mean
luma of the decoded image): exact, cheap, and high for the tiny model's images, so
guidance has something to lower."""
from __future__ import annotations

import os

import pytest
import torch

from devtools.session import PromptError
from devtools.sd import embedding_derivatives, keep, sd_graph

SIZE, STEPS = 64, 4


@pytest.fixture(scope="module")
def tiny(comfy):
    """(model, clip, vae, positive, negative) exactly as the executor makes them (inference tensors)."""
    g, ckpt, pos, neg = sd_graph(comfy, positive="a photo of a person at the beach")
    keep(g, ckpt.out(0))
    keep(g, pos.out(0))
    keep(g, neg.out(0))
    result = comfy.run(g.finalize())
    model, clip, vae = (result.output("ckpt", i) for i in range(3))
    assert next(model.model.diffusion_model.parameters()).is_inference()  # what the tests must cope with
    return model, clip, vae, result.output("pos", 0), result.output("neg", 0)


def stg_inputs(**overrides):
    values = dict(rho=0.5, start_percent=0.0, end_percent=1.0, update_ratio=1.0, prior_weight=0.0, rebase=False,
                  guide_pooled=False, decoder="vae", autocast="none")
    values.update(overrides)
    return values


def random_taesd_decoder(seed: int = 0) -> torch.nn.Module:
    """ComfyUI's TAESD decoder with seeded random weights (its layers skip initialisation)."""
    from comfy.taesd.taesd import Decoder

    decoder = Decoder()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in decoder.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
            else:
                p.zero_()
        decoder[-1].bias.fill_(0.5)
    return decoder


def test_stg_ksampler_in_a_prompt(comfy):
    """Through a real prompt: rho = 0 is KSampler bit for bit; STG lowers the score."""
    g, ckpt, pos, neg = sd_graph(comfy, positive="a photo of a person at the beach")
    latent = g.node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    score = g.node("RSColourStatisticScore", statistic="brightness", threshold=-1.0)
    common = dict(seed=11, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="normal", positive=pos.out(0),
                  negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
    plain = g.node("KSampler", model=ckpt.out(0), **common)
    off = g.node("RSSTGKSampler", model=ckpt.out(0), vae=ckpt.out(2), safety_score=score.out(0), **common, **stg_inputs(rho=0.0))
    on = g.node("RSSTGKSampler", model=ckpt.out(0), vae=ckpt.out(2), safety_score=score.out(0), **common,
               **stg_inputs(rho=8.0, start_percent=0.2))
    images = {}
    for name, ref in (("plain", plain), ("off", off), ("on", on)):
        images[name] = g.node("VAEDecode", samples=ref.out(0), vae=ckpt.out(2))
        g.node("PreviewImage", images=images[name].out(0))
    keep(g, on.out(1))
    result = comfy.run(g.finalize())
    latents = {n: result.output(r.id, 0)["samples"] for n, r in (("plain", plain), ("off", off), ("on", on))}
    pixels = {n: result.output(r.id, 0) for n, r in images.items()}
    report = result.output(on.id, 1)

    assert torch.equal(latents["off"], latents["plain"])
    brightness = {n: (p * torch.tensor([0.299, 0.587, 0.114])).sum(-1).mean((1, 2)) for n, p in pixels.items()}
    assert (brightness["on"] < brightness["plain"] - 1e-3).all(), (brightness, report)
    # window 0.2-1.0 of 4 normal-scheduler steps: the first evaluation is outside it
    assert report.startswith("STG: 3 of 4 schedule steps guided (4 model evaluations"), report


def test_window_threshold_and_persistence(guiders, comfy, stg, decoders, guidance, safety, tiny):
    """Steps before the window are untouched (bit for bit), images below tau are never updated and
    keep the unguided result, images above it end with a lower score."""
    import comfy.sample
    import comfy.samplers

    model, _clip, vae, positive, negative = tiny
    decoder = decoders.VAEDecoder(vae)
    latent = torch.zeros(2, 4, SIZE // 8, SIZE // 8)

    def plain_run():
        x0s = []
        with torch.inference_mode():
            noise = comfy.sample.prepare_noise(latent, 5)
            out = comfy.sample.sample(model, noise, STEPS, 5.0, "euler", "normal", positive, negative, latent,
                                      callback=lambda i, x0, x, n: x0s.append(x0.clone()), disable_pbar=True,
                                      seed=5)
        return x0s, out

    plain_x0, plain_out = plain_run()
    brightness = safety.ColourStatisticScore("brightness")
    with torch.inference_mode():
        window_scores = torch.stack([brightness.scores(decoder(x0, model.model)) for x0 in plain_x0[1:]])
    low, high = (0, 1) if window_scores[0, 0] < window_scores[0, 1] else (1, 0)
    tau = float(window_scores[:, low].max()) + 1e-4
    assert tau < float(window_scores[0, high]), "the two images' scores must be separable for this test"

    settings = stg.STGSettings(rho=8.0, start_percent=0.2, end_percent=1.0)
    guider = guiders.make_stg_guider(model, positive, negative, 5.0, decoder,
                                     safety.ColourStatisticScore("brightness", threshold=tau), settings)
    x0s = []
    with torch.inference_mode():
        out = guidance.sample_with_guider(guider, {"samples": latent}, 5, STEPS, "euler", "normal",
                             callback=lambda i, x0, x, n: x0s.append(x0.clone()))
    records = guider.records
    assert [r.in_window for r in records] == [False, True, True, True]
    assert torch.equal(x0s[0], plain_x0[0])                    # before the window: untouched
    assert all(not r.updated[low] for r in records if r.guided)
    assert records[1].updated[high]
    state = guider.state
    assert torch.equal(state.embeds[0][low], state.originals[0][low])   # never moved
    assert not torch.equal(state.embeds[0][high], state.originals[0][high])
    torch.testing.assert_close(out[low], plain_out[low], atol=1e-4, rtol=1e-4)
    with torch.inference_mode():
        final = brightness.scores(decoder(model.model.process_latent_in(out), model.model))
        final_plain = brightness.scores(decoder(model.model.process_latent_in(plain_out), model.model))
    assert final[high] < final_plain[high] - 1e-3


def at_first_step(guider, probe) -> None:
    """Run `guider` over sigmas 6 -> 0 from a zero latent with seeded noise, in inference mode as the executor
    does, with a sampler that only calls probe(guider, x, t, model_options) at the first sigma."""
    from comfy.samplers import KSAMPLER

    def sampler(model_k, noise, sigmas, extra_args=None, callback=None, disable=None):
        x = noise * sigmas[0]
        t = sigmas[0] * noise.new_ones([noise.shape[0]])
        probe(model_k.inner_model, x, t, extra_args["model_options"])
        return noise

    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    with torch.inference_mode():
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        guider.sample(noise, latent, KSAMPLER(sampler), torch.tensor([6.0, 0.0]), seed=0)


def test_gradient_matches_finite_differences(guiders, comfy, stg, decoders, safety, tiny):
    """d score / d embedding from the guided pass equals a central finite difference along a random
    direction, computed inside inference mode as in the executor."""
    model, _clip, vae, positive, negative = tiny
    guider = guiders.make_stg_guider(model, positive, negative, 5.0, decoders.VAEDecoder(vae),
                                     safety.ColourStatisticScore("redness", threshold=-10.0), stg.STGSettings(rho=1.0))
    found = {}

    def probe(g, x, t, options):
        found.update(embedding_derivatives(g, x, t, options, step=0.1))

    at_first_step(guider, probe)
    assert found["grad_norm"] > 0
    assert found["analytic"] == pytest.approx(found["numeric"], rel=0.02), found


def test_taesd_decoder_and_update_ratio(guiders, comfy, stg, decoders, guidance, safety, tiny, request):
    """The TAESD decoder from vae_approx gives the gradient pass (under bf16 autocast); gamma = 0.5 guides
    every other step."""
    import safetensors.torch

    model, _clip, vae, positive, negative = tiny
    paths = comfy.module("nodes.paths")
    with pytest.raises(FileNotFoundError, match="vae_approx"):
        paths.taesd_decoder_path("sd1")
    with pytest.raises(ValueError, match=r"no TAESD decoder for ToyWorld \(the pack.s demo model\)"):
        paths.taesd_decoder_path("toyworld")
    torch.manual_seed(0)
    state = random_taesd_decoder().state_dict()
    path = f"{comfy.dirs['models/vae_approx']}/taesd_decoder.safetensors"
    safetensors.torch.save_file(state, path)
    request.addfinalizer(lambda: os.remove(path))
    with torch.inference_mode():
        decoder = decoders.load_taesd_decoder(paths.taesd_decoder_path("sd1"))
        guider = guiders.make_stg_guider(model, positive, negative, 5.0, decoder,
                                         safety.ColourStatisticScore("brightness", threshold=-10.0),
                                         stg.STGSettings(rho=2.0, start_percent=0.0, end_percent=1.0, update_ratio=0.5,
                                                         autocast="bf16"))
        guidance.sample_with_guider(guider, {"samples": torch.zeros(1, 4, 8, 8)}, 1, STEPS, "euler", "normal")
    assert [r.guided for r in guider.records] == [False, True, False, True]
    assert guider.guided_steps() == [1, 3]
    assert all(r.grad_norms[0] > 0 for r in guider.records if r.guided)


def test_sdxl_context_and_pooled(guiders, comfy, stg, decoders, guidance, safety, tiny):
    """SDXL: both the cross-attention context and the pooled vector are guided (inference-tensor weights)."""
    from devtools import tiny_models

    with torch.inference_mode():
        model = tiny_models.build_unet_model("sdxl_tiny", device="cpu")
        g = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
        negative = [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
        decoder = decoders.TAESDDecoder(random_taesd_decoder())
    assert next(model.model.diffusion_model.parameters()).is_inference()
    settings = stg.STGSettings(rho=1.0, start_percent=0.0, end_percent=1.0, guide_pooled=True)
    guider = guiders.make_stg_guider(model, positive, negative, 5.0, decoder,
                                     safety.ColourStatisticScore("brightness", threshold=-10.0), settings)
    with torch.inference_mode():
        guidance.sample_with_guider(guider, {"samples": torch.zeros(1, 4, 8, 8)}, 0, 2, "euler", "normal")
    assert guider.records[0].updated == [True]
    state = guider.state
    assert state.embeds[0].shape == (1, 77, 2048)
    assert not torch.equal(state.embeds[0], state.originals[0])
    pooled_change = state.pooled[0] - state.pooled_originals[0]
    assert pooled_change[:, :1280].abs().max() > 0 and pooled_change[:, 1280:].abs().max() == 0
    # the input conditioning was not touched
    assert positive[0][0].shape == (1, 77, 2048) and "model_conds" not in positive[0][1]

    with pytest.raises(ValueError, match="pooled"):
        guiders.Guider_STG(tiny[0], decoder, safety.ColourStatisticScore(), stg.STGSettings(guide_pooled=True))


def test_guider_node_with_custom_sampling(comfy):
    """RSSTGGuider drives SamplerCustomAdvanced with another sampler and scheduler; bad windows are refused."""
    g, ckpt, pos, neg = sd_graph(comfy)
    score = g.node("RSColourStatisticScore", statistic="redness", threshold=-1.0)
    guider = g.node("RSSTGGuider", model=ckpt.out(0), positive=pos.out(0), negative=neg.out(0), cfg=5.0, vae=ckpt.out(2),
                   safety_score=score.out(0), **stg_inputs(rho=4.0, start_percent=0.0, end_percent=1.0))
    plain_guider = g.node("CFGGuider", model=ckpt.out(0), positive=pos.out(0), negative=neg.out(0), cfg=5.0)
    sampler = g.node("KSamplerSelect", sampler_name="dpmpp_2m")
    sigmas = g.node("BasicScheduler", model=ckpt.out(0), scheduler="karras", steps=3, denoise=1.0)
    noise = g.node("RandomNoise", noise_seed=4)
    latent = g.node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    outs, plain_branch = [], []
    for gd in (guider, plain_guider):
        sampled = g.node("SamplerCustomAdvanced", noise=noise.out(0), guider=gd.out(0), sampler=sampler.out(0), sigmas=sigmas.out(0),
                        latent_image=latent.out(0))
        image = g.node("VAEDecode", samples=sampled.out(0), vae=ckpt.out(2))
        preview = g.node("PreviewImage", images=image.out(0))
        outs.append(image)
        plain_branch = [plain_guider.id, sampled.id, image.id, preview.id]
    result = comfy.run(g.finalize())
    steered, plain = (result.output(o.id) for o in outs)
    redness = lambda im: (im[..., 0] - 0.5 * (im[..., 1] + im[..., 2])).mean()
    assert redness(steered) < redness(plain) - 1e-4

    bad = {k: v for k, v in g.finalize().items() if k not in plain_branch}
    bad[guider.id]["inputs"].update(start_percent=0.8, end_percent=0.2)
    with pytest.raises(PromptError, match="start_percent"):
        comfy.run(bad)


def test_stg_update_by_hand(stg):
    """c <- c - rho * g / ||g|| per image (Frobenius norm over tokens x width), only flagged images with
    a non-zero gradient; rebase starts from the original."""
    current = torch.tensor([[[1.0, 1.0], [1.0, 1.0]],
                            [[2.0, 0.0], [0.0, 2.0]],
                            [[5.0, 5.0], [5.0, 5.0]],
                            [[0.0, 0.0], [0.0, 0.0]]])
    grad = torch.tensor([[[1.0, 2.0], [2.0, 4.0]],      # norm sqrt(1 + 4 + 4 + 16) = 5
                         [[0.0, 3.0], [4.0, 0.0]],      # norm 5, but not flagged
                         [[0.0, 0.0], [0.0, 0.0]],      # flagged, zero gradient: stays
                         [[0.0, 0.0], [0.0, 10.0]]])    # norm 10
    unsafe = torch.tensor([True, False, True, True])
    new, moved = stg.stg_update(current, grad, unsafe, rho=0.5)
    expected = current.clone()
    expected[0] = torch.tensor([[1.0 - 0.5 * 0.2, 1.0 - 0.5 * 0.4], [1.0 - 0.5 * 0.4, 1.0 - 0.5 * 0.8]])
    expected[3] = torch.tensor([[0.0, 0.0], [0.0, -0.5]])
    torch.testing.assert_close(new, expected)
    assert moved.tolist() == [True, False, False, True]
    # rebase: the step starts from the original embedding, not from the current one
    base = torch.zeros_like(current)
    rebased, _ = stg.stg_update(current, grad, unsafe, rho=2.0, base=base)
    torch.testing.assert_close(rebased[0], torch.tensor([[-0.4, -0.8], [-0.8, -1.6]]))
    torch.testing.assert_close(rebased[1:3], current[1:3])
    # half precision in, half precision out, computed in float32
    half, _ = stg.stg_update(current.half(), grad.half(), unsafe, rho=0.5)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), expected, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="must agree"):
        stg.stg_update(current, grad[:, :1], unsafe, rho=0.5)


def test_schedule_step_and_update_ratio(stg):
    sigmas = torch.tensor([14.6, 4.0, 1.5, 0.4, 0.0])
    assert stg.schedule_step(14.6, sigmas) == 0
    assert stg.schedule_step(20.0, sigmas) == 0                     # above the schedule (churn)
    assert stg.schedule_step(float((14.6 * 4.0) ** 0.5), sigmas) == 0   # dpm_2 midpoint of step 0
    assert stg.schedule_step(4.0, sigmas) == 1                      # heun's corrector of step 0 lands on step 1
    assert stg.schedule_step(float(torch.tensor(4.0) * (1 + 1e-7)), sigmas) == 1
    assert stg.schedule_step(0.41, sigmas) == 2
    assert stg.schedule_step(0.4, sigmas) == 3
    assert [stg.take_update(n, 1.0) for n in range(4)] == [True] * 4
    assert [stg.take_update(n, 0.5) for n in range(6)] == [False, True, False, True, False, True]
    assert [stg.take_update(n, 0.25) for n in range(8)] == [False, False, False, True] * 2
    assert not any(stg.take_update(n, 0.0) for n in range(5))


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_two_evaluation_samplers_update_once_per_step(guiders, comfy, stg, decoders, guidance, safety, tiny, ratio):
    """heun, dpm_2 and dpmpp_2s_ancestral evaluate the model twice per step: they update as many times, on
    the same schedule steps, as euler (update_ratio counts steps, not evaluations)."""
    model, _clip, vae, positive, negative = tiny
    found = {}
    two_evaluations = ("heun", "dpm_2", "dpmpp_2s_ancestral")
    for sampler in ("euler", *two_evaluations):
        guider = guiders.make_stg_guider(model, positive, negative, 5.0, decoders.VAEDecoder(vae),
                                         safety.ColourStatisticScore("brightness", threshold=-10.0),
                                         stg.STGSettings(rho=1.0, start_percent=0.0, end_percent=1.0, update_ratio=ratio))
        with torch.inference_mode():
            guidance.sample_with_guider(guider, {"samples": torch.zeros(1, 4, 8, 8)}, 2, STEPS, sampler, "normal")
        found[sampler] = (guider.guided_steps(), len(guider.records), guider.report().splitlines()[0])
    expected_steps = list(range(STEPS)) if ratio == 1.0 else [1, 3]
    # the last step of heun / dpm_2 goes to sigma 0 with one evaluation
    assert found["euler"][:2] == (expected_steps, STEPS)
    for sampler in two_evaluations:
        steps, evaluations, line = found[sampler]
        assert evaluations == 2 * STEPS - 1, found
        assert steps == expected_steps, found
        assert line.startswith(f"STG: {len(expected_steps)} of {STEPS} schedule steps guided "
                               f"({2 * STEPS - 1} model evaluations"), line


def test_decoder_returns_unclamped_images(comfy, decoders, tiny):
    """The decoder gives (decoded + 1) / 2 unclamped (the reference); clamped it is ComfyUI's VAE decode."""
    model, _clip, vae, _positive, _negative = tiny
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 6.0
    with torch.inference_mode():
        raw = decoders.VAEDecoder(vae)(model.model.process_latent_in(latent), model.model)
        comfy_decode = vae.decode(latent)
    assert raw.shape == (1, 3, 64, 64)
    assert float(raw.min()) < 0.0 or float(raw.max()) > 1.0
    torch.testing.assert_close(raw.clamp(0, 1).movedim(1, -1), comfy_decode.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["rho", "start_percent", "end_percent", "update_ratio", "prior_weight", "hold_margin"])
def test_settings_refuse_nan_and_inf(stg, name):
    """NaN passes every range comparison (a NaN prior weight silently turned guidance off), so each
    setting must be finite; the same settings with a finite value are accepted."""
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=name):
            stg.STGSettings(**{name: bad}).check()
    stg.STGSettings(**{name: 0.5}).check()


def test_in_training_handling_changes_no_bit_of_the_gradient(guiders, comfy, stg, decoders, safety, tiny, monkeypatch):
    """STG's embedding gradient with the version layer's in-training mode forced on (ComfyUI 0.3.75 has no such
    flag) equals the one with it off, bit for bit; the decode inside the gradient pass sees the mode on."""
    import comfy.model_management as mm

    model, _clip, vae, positive, negative = tiny
    seen = []

    class RecordingDecoder(decoders.VAEDecoder):
        def __call__(self, x0, base_model):
            seen.append(getattr(mm, "in_training", "absent"))
            return super().__call__(x0, base_model)

    def gradient(forced: bool) -> list[torch.Tensor]:
        # forced: a ComfyUI with upstream 0.38's training state (comfy/model_management.py ``in_training``);
        # else one without it, as 0.3.75
        with monkeypatch.context() as patch:
            if forced:
                patch.setattr(mm, "in_training", False, raising=False)
            else:
                patch.delattr(mm, "in_training", raising=False)
            guider = guiders.make_stg_guider(model, positive, negative, 5.0, RecordingDecoder(vae),
                                             safety.ColourStatisticScore("redness", threshold=-10.0),
                                             stg.STGSettings(rho=1.0))
            found = {}

            def probe(g, x, t, options):
                found["grads"] = g.embedding_gradient(x, t, options, g.initial_state(x.shape[0]).embeds).grads

            at_first_step(guider, probe)
            return found["grads"]

    before = getattr(mm, "in_training", "absent")
    on = gradient(True)
    assert True in seen
    seen.clear()
    off = gradient(False)
    assert seen and True not in seen
    assert float(on[0].norm()) > 0 and all(torch.equal(a, b) for a, b in zip(on, off))
    assert getattr(mm, "in_training", "absent") == before


# ---------------------------------------------------------------- only flagged images pay for a gradient pass

def whole_batch_guider(stg, guiders):
    """The reference: the path before flagged-only passes. Every guided step is one gradient pass over the whole
    batch (scores and gradients of every image), and after an update the whole batch is predicted again."""
    class WholeBatch(guiders.Guider_STG):
        def guided_step(self, x, timestep, model_options, state):
            found = self.embedding_gradient(x, timestep, model_options, state.embeds, state.pooled, state.originals)
            return stg.GuidedStep(found.result.score.float().cpu(), found.result.unsafe.cpu().bool(), found.grads,
                                  found.pooled_grads, found.cond_pred, found.uncond_pred, list(range(x.shape[0])))

        def updated_prediction(self, cond_pred, updated, state, x, timestep, model_options):
            if not bool(updated.any()):
                return cond_pred
            with torch.inference_mode(False), torch.no_grad():
                return self._predict(self._positive_with(state.embeds, state.pooled), x.detach().clone(),
                                     timestep.detach().clone(), model_options)
    return WholeBatch


def recording_score(safety, threshold: float):
    """Brightness, recording every scoring call: (images, whether they carry a graph)."""
    class Recording(safety.ColourStatisticScore):
        def scores(self, images):
            self.calls.append((images.shape[0], images.requires_grad))
            return super().scores(images)

    score = Recording("brightness", threshold=threshold)
    score.calls = []
    return score


def stg_run(stg, decoders, guidance, tiny, guider_class, score, batch: int = 3, steps: int = 2, size: int = SIZE,
            **settings):
    model, _clip, vae, positive, negative = tiny
    options = dict(rho=2.0, start_percent=0.0, end_percent=1.0)
    options.update(settings)
    guider = guider_class(model, decoders.VAEDecoder(vae), score, stg.STGSettings(**options))
    guider.set_conds(positive, negative)
    guider.set_cfg(5.0)
    with torch.inference_mode():
        out = guidance.sample_with_guider(guider, {"samples": torch.zeros(batch, 4, size // 8, size // 8)}, 3, steps,
                                          "euler", "normal")
    return out, guider


def test_only_flagged_images_pay_for_a_gradient_pass(guiders, comfy, stg, decoders, guidance, safety, tiny, monkeypatch):
    """Nothing flagged: no graph is ever built and no backward runs, and the result is the whole-batch path's bit for
    bit. Every image flagged: one gradient pass of the batch per guided step, bit for bit the whole-batch path's. A
    mixed batch: the gradient passes hold the flagged image only, the same images are updated, with the same
    gradients up to rounding (kernels pick another algorithm for a smaller batch: oneDNN's convolutions at batch 1,
    GEMV for one row), so not bit for bit."""
    backward = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backward.append(1) or grad(*a, **k))
    reference = whole_batch_guider(stg, guiders)
    thresholds = {"all": -10.0, "none": 10.0}
    for name in ("all", "none", "mixed"):
        backward.clear()
        score = recording_score(safety, thresholds[name])
        out, guider = stg_run(stg, decoders, guidance, tiny, guiders.Guider_STG, score, batch=2, size=32)
        backward_passes = len(backward)
        expected, ref = stg_run(stg, decoders, guidance, tiny, reference, recording_score(safety, thresholds[name]),
                                batch=2, size=32)
        if name == "all":  # the cut between the two images' first scores flags the brighter one only
            first = sorted(ref.records[0].scores)
            assert first[1] - first[0] > 0.01, first
            thresholds["mixed"] = (first[0] + first[1]) / 2
        flagged = [[i for i, u in enumerate(r.updated) if u] for r in ref.records]
        assert [[i for i, u in enumerate(r.updated) if u] for r in guider.records] == flagged, name
        # the gradient pass holds the images flagged now and those flagged at the step before (they go straight to
        # it, and it scores them); a backward runs when one of them is flagged now
        passes = [sorted(set(f) | set(flagged[k - 1] if k else [])) for k, f in enumerate(flagged)]
        assert [r.gradient_images for r in guider.records] == passes, name
        graphs = [n for n, has_graph in score.calls if has_graph]
        assert graphs == [len(p) for p in passes if p], (name, score.calls)
        assert backward_passes == sum(bool(f) for f in flagged), name
        scored = [n for n, has_graph in score.calls if not has_graph]
        if name == "mixed":
            assert len(flagged[0]) == 1 and all(f in ([], flagged[0]) for f in flagged), flagged
            unflagged = 1 - flagged[0][0]
            # later steps score the unflagged image alone, without a graph
            assert scored == [2] + [1] * (len(flagged) - 1), score.calls
            # the unflagged image only ever differs by its prediction's rounding; the flagged one by its gradient's,
            # which the normalised update and the next steps carry on (4e-4 of the gradient's norm here)
            torch.testing.assert_close(out[unflagged], expected[unflagged], rtol=0, atol=1e-3)
            for r, q in zip(guider.records, ref.records):
                assert r.scores == pytest.approx(q.scores, abs=1e-5)
                assert r.grad_norms == pytest.approx(q.grad_norms, rel=1e-2)
        else:
            assert scored == ([2] if name == "all" else [2] * len(flagged)), score.calls  # all: first step only
            assert torch.equal(out, expected), name
            assert all(torch.equal(a, b) for a, b in zip(guider.state.embeds, ref.state.embeds)), name
            assert [r.scores for r in guider.records] == [r.scores for r in ref.records], name


def test_gradient_checkpointing_changes_no_bit_of_the_gradient(guiders, comfy, stg, decoders, safety, tiny, monkeypatch):
    """Checkpointing the UNet's layers and the decoder's blocks in the gradient pass gives the same gradient bit for
    bit (the recomputation runs the same kernels); both models' layers are checkpointed."""
    import torch.utils.checkpoint

    model, _clip, vae, positive, negative = tiny
    checkpointed = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda fn, *a, **k: checkpointed.append(1) or original(fn, *a, **k))

    def gradient(**settings) -> list[torch.Tensor]:
        guider = guiders.make_stg_guider(model, positive, negative, 5.0, decoders.VAEDecoder(vae),
                                         safety.ColourStatisticScore("redness", threshold=-10.0),
                                         stg.STGSettings(rho=1.0, **settings))
        found = {}

        def probe(g, x, t, options):
            found["grads"] = g.embedding_gradient(x, t, options, g.initial_state(x.shape[0]).embeds).grads

        at_first_step(guider, probe)
        return found["grads"]

    plain = gradient()
    assert not checkpointed
    saved = gradient(gradient_checkpointing=True)
    checkpointing = comfy.module("steering.checkpointing")
    unet_layers = len(checkpointing.checkpointable_layers(model.model.diffusion_model))
    # the tiny checkpoint's VAE has TAESD's layout; its decoder's blocks run (its encoder's are wrapped, never run)
    decoder_blocks = len(checkpointing.checkpointable_layers(vae.first_stage_model.taesd_decoder))
    assert unet_layers > 0 and decoder_blocks > 0 and len(checkpointed) == unet_layers + decoder_blocks
    assert float(plain[0].norm()) > 0 and all(torch.equal(a, b) for a, b in zip(plain, saved))


def test_memory_check_refuses_a_gradient_pass_that_cannot_fit(guiders, comfy, stg, decoders, guidance, safety, tiny,
                                                              monkeypatch):
    """Before its first gradient pass STG compares the pass's estimate with ComfyUI's free memory: too little refuses,
    before anything is guided, naming the need, the free memory and the settings that would fit; images that are
    never flagged need no gradient pass, and no check."""
    memory = comfy.module("steering.gradient_memory")
    model, _clip, vae, _positive, _negative = tiny
    latent = (1, 4, SIZE // 8, SIZE // 8)
    facts = dict(latent_shape=latent, downscale=8, usage_factor=model.model.memory_usage_factor,
                 unet_dtype=model.model.get_dtype(), decoder_dtype=vae.vae_dtype)
    as_set = memory.PassSettings("vae", False, False)
    lightest = memory.PassSettings("taesd", True, True)
    need, light = (memory.pass_bytes(1, settings=s, **facts) for s in (as_set, lightest))
    assert light < need

    def run(free: int, threshold: float):
        monkeypatch.setattr(guiders, "free_memory", lambda patcher, device: free)
        return stg_run(stg, decoders, guidance, tiny, guiders.Guider_STG, recording_score(safety, threshold), batch=1)

    with pytest.raises(memory.STGMemoryError) as refused:
        run(light + 1, -10.0)
    message = str(refused.value)
    assert f"needs about {need / 2**30:.1f} GiB" in message and f"but {(light + 1) / 2**30:.1f} GiB are free" in message
    assert "decoder taesd + gradient_checkpointing on + autocast fp16 (bf16 on CPUs)" in message, message
    with pytest.raises(memory.STGMemoryError, match="No setting of decoder, gradient_checkpointing and autocast fits"):
        run(light // 2, -10.0)
    _, guider = run(1, 10.0)  # nothing flagged: no gradient pass to check
    assert all(r.gradient_images == [] for r in guider.records) and any(r.guided for r in guider.records)


def test_a_sub_batch_call_gives_fair_sampling_its_images_vectors(comfy, guidance):
    """A model call over some images of the batch (STG's gradient pass) tells patches which images it holds: the fair
    h-space patch then adds image i's own vector, as in the whole batch's call."""
    hspace = comfy.module("steering.hspace")
    fair = comfy.module("steering.fair")
    offsets = torch.randn(3, 1280, 2, 2, generator=torch.Generator().manual_seed(0))
    patch = hspace.BottleneckOffsetPatch(offsets, 1.0, seed=5)
    images, picked = 4, [1, 3]
    assignment = fair.fair_assignment(3, images, 5, "uniform")
    # a patch that took the call for the first images of the batch would add other vectors
    assert [assignment[i] for i in picked] != assignment[:len(picked)], assignment
    h = torch.zeros(2 * len(picked), 1280, 2, 2)  # the cond and the uncond chunk of the two picked images
    options = guidance.with_batch_rows({"transformer_options": {}}, picked, images)["transformer_options"]
    shifted = patch.shift(h, {**options, "cond_or_uncond": [0, 1]})
    expected = torch.cat([offsets[[assignment[i] for i in picked]], torch.zeros(2, 1280, 2, 2)])
    assert torch.equal(shifted, expected)


def test_hold_margin_keeps_guiding_a_flagged_image_below_the_threshold(guiders, comfy, stg, decoders, guidance, safety,
                                                                      tiny):
    """Brightness, a batch of two, 4 steps, rho 16. The threshold lies between the two images' first scores: the
    brighter one is flagged at the first step, and its update darkens it below the threshold (checked), so the paper
    lets it go. A margin no score reaches keeps it flagged at every step, and it ends darker. With a margin between,
    every image's flags follow the rule recomputed here from the recorded scores (a held image goes to the gradient
    pass with the newly flagged, an unflagged one is scored alone)."""
    def run(threshold, **settings):
        return stg_run(stg, decoders, guidance, tiny, guiders.Guider_STG, recording_score(safety, threshold),
                       batch=2, steps=4, size=32, rho=16.0, **settings)

    def by_rule(guider, threshold, margin):
        flags = []
        for image in range(2):
            previous, mine = False, []
            for r in guider.records:
                previous = r.scores[image] > threshold or (previous and r.scores[image] > threshold - margin)
                mine.append(previous)
            flags.append(mine)
        return flags

    def updated(guider):
        return [[r.updated[image] for r in guider.records] for image in range(2)]

    _, always = run(-10.0)
    first = always.records[0].scores
    bright = int(first[1] > first[0])
    threshold = sum(first) / 2
    _, paper = run(threshold)
    assert updated(paper)[bright][:2] == [True, False] and paper.records[1].scores[bright] < threshold
    assert updated(paper) == by_rule(paper, threshold, 0.0)
    _, held = run(threshold, hold_margin=100.0)
    assert updated(held)[bright] == [True] * 4
    assert updated(held) == by_rule(held, threshold, 100.0)
    assert held.records[-1].scores[bright] < paper.records[-1].scores[bright] - 1e-3
    assert "flagged images held while above" in held.report() and "held" not in paper.report()

    lowest = min(r.scores[bright] for r in always.records)
    margin = (threshold - lowest) / 2
    _, between = run(threshold, hold_margin=margin)
    assert updated(between) == by_rule(between, threshold, margin)
