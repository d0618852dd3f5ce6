"""Dual latent reconstruction (arXiv 2411.13982): Dual-Latent KSampler / Guider and the input
detector on the tiny real SD1 checkpoint through real prompt execution, plus an SDXL-architecture
UNet built directly."""
from __future__ import annotations

import pytest
import torch

from devtools.session import PromptError
from devtools.sd import keep, sd_graph

UNSAFE_PROMPT = "a bloody fight with weapons"
SAFE_PROMPT = "a calm garden with flowers"
SIZE, STEPS = 64, 4


def two_prompt_graph(comfy, batch: int = 1, negative: str = "blurry"):
    g, ckpt, pos, neg = sd_graph(comfy, positive=UNSAFE_PROMPT, negative=negative)
    safe = g.node("CLIPTextEncode", id="safe", text=SAFE_PROMPT, clip=ckpt.out(1))
    latent = g.node("EmptyLatentImage", id="latent", width=SIZE, height=SIZE, batch_size=batch)
    return g, ckpt, pos, safe, neg, latent


def add_ksampler(g, node_id, model, positive, negative, latent, sampler="euler", scheduler="normal", seed=3,
                 cfg=5.0, steps=STEPS):
    ref = g.node("KSampler", id=node_id, model=model, positive=positive, negative=negative, latent_image=latent,
                seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler, denoise=1.0)
    keep(g, ref.out(0))
    return ref


def add_dual(g, node_id, model, positive, safe, negative, latent, w_xi=0.75, w_x=0.25, tau_gc=0.5,
             sampler="euler", scheduler="normal", seed=3, cfg=5.0, steps=STEPS):
    ref = g.node("RSDualLatentKSampler", id=node_id, model=model, seed=seed, steps=steps, cfg=cfg,
                sampler_name=sampler, scheduler=scheduler, positive=positive, safe_positive=safe, negative=negative,
                latent_image=latent, denoise=1.0, w_xi=w_xi, w_x=w_x, tau_gc=tau_gc)
    keep(g, ref.out(0))
    return ref


def latents(result, *node_ids):
    return [result.output(n)["samples"].clone() for n in node_ids]


SAMPLERS = [("euler", "normal", 1), ("dpmpp_2m", "karras", 2), ("euler_ancestral", "normal", 2),
            ("heun", "simple", 1), ("dpmpp_2m_sde", "exponential", 1)]


@pytest.mark.parametrize("sampler,scheduler,batch", SAMPLERS)
def test_w_xi_zero_is_the_plain_ksampler_and_tau_zero_the_safe_prompt_alone(comfy, sampler, scheduler, batch):
    """w_xi 0 reproduces the plain KSampler on the prompt bit for bit, tau_gc 0 sampling the safe prompt alone;
    a mix and tau_gc 0.5 lie elsewhere (one graph per sampler)."""
    g, ckpt, pos, safe, neg, latent = two_prompt_graph(comfy, batch)
    add_ksampler(g, "plain", ckpt.out(0), pos.out(0), neg.out(0), latent.out(0), sampler, scheduler)
    add_ksampler(g, "safe_only", ckpt.out(0), safe.out(0), neg.out(0), latent.out(0), sampler, scheduler)
    common = dict(sampler=sampler, scheduler=scheduler)
    add_dual(g, "w_xi_zero", ckpt.out(0), pos.out(0), safe.out(0), neg.out(0), latent.out(0), w_xi=0.0, w_x=0.3,
             tau_gc=1.0, **common)
    add_dual(g, "mixed", ckpt.out(0), pos.out(0), safe.out(0), neg.out(0), latent.out(0), w_xi=0.75, w_x=0.25,
             tau_gc=1.0, **common)
    add_dual(g, "tau_zero", ckpt.out(0), pos.out(0), safe.out(0), neg.out(0), latent.out(0), w_xi=0.75, w_x=0.25,
             tau_gc=0.0, **common)
    add_dual(g, "half", ckpt.out(0), pos.out(0), safe.out(0), neg.out(0), latent.out(0), tau_gc=0.5, **common)
    plain, safe_only, w_xi_zero, mixed, tau_zero, half = latents(
        comfy.run(g.finalize()), "plain", "safe_only", "w_xi_zero", "mixed", "tau_zero", "half")
    assert plain.shape == (batch, 4, SIZE // 8, SIZE // 8)
    assert torch.equal(w_xi_zero, plain)
    assert (mixed - plain).abs().mean() > 1e-3  # the safe branch does change the result
    assert torch.equal(tau_zero, safe_only)
    # tau 0.5 lies strictly between the two prompts
    assert (half - safe_only).abs().mean() > 1e-3 and (half - plain).abs().mean() > 1e-3


def first_steps(g, ckpt, latent, sampler: str, guiders: dict) -> None:
    """One step (the first of the normal schedule, shared noise seed 11) of each guider, kept as an
    output node named after it."""
    noise = g.node("RandomNoise", noise_seed=11)
    picked = g.node("KSamplerSelect", sampler_name=sampler)
    sigmas = g.node("BasicScheduler", model=ckpt.out(0), scheduler="normal", steps=STEPS, denoise=1.0)
    first = g.node("SplitSigmas", sigmas=sigmas.out(0), step=1)
    for name, guider in guiders.items():
        keep(g, g.node("SamplerCustomAdvanced", id=name, noise=noise.out(0), guider=guider.out(0), sampler=picked.out(0),
                      sigmas=first.out(0), latent_image=latent.out(0)).out(0))


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_batched_two_branch_step_equals_two_separate_branch_steps(comfy, sampler):
    """One step of the guider from the shared noise = w_xi * (step of the safe prompt alone) +
    w_x * (step of the original alone): the paper's weighted latent sum. The ancestral sampler
    shows that both branches share the injected noise too."""
    w_xi, w_x = 0.7, 0.3
    g, ckpt, pos, safe, neg, latent = two_prompt_graph(comfy, batch=2)
    guiders = {
        "original": g.node("CFGGuider", model=ckpt.out(0), positive=pos.out(0), negative=neg.out(0), cfg=5.0),
        "safe_only": g.node("CFGGuider", model=ckpt.out(0), positive=safe.out(0), negative=neg.out(0), cfg=5.0),
        "dual": g.node("RSDualLatentGuider", model=ckpt.out(0), positive=pos.out(0), safe_positive=safe.out(0), negative=neg.out(0),
                      cfg=5.0, w_xi=w_xi, w_x=w_x, tau_gc=1.0),
    }
    first_steps(g, ckpt, latent, sampler, guiders)
    original, safe_only, dual = latents(comfy.run(g.finalize()), "original", "safe_only", "dual")
    expected = w_xi * safe_only + w_x * original
    assert (safe_only - original).abs().mean() > 1e-2
    torch.testing.assert_close(dual, expected, atol=2e-4 * float(expected.abs().max()), rtol=1e-4)


def hspace_model_graph(comfy, vf, g, model_ref, seed=21):
    """The model with a strong random h-space vector (cond_only, the whole schedule)."""
    tensors = {"c": 6.0 * torch.randn(1280, 1, 1, generator=torch.Generator().manual_seed(seed))}
    vector = vf.SteeringVector("hspace_cvector", "sd1", tensors, {"name": f"dual-h{seed}"})
    name = vf.save_vector(vector, comfy.vector_dir, f"dual-h{seed}", overwrite=True).rsplit("/", 1)[-1]
    vec = g.node("RSLoadVector", vector_name=name)
    return g.node("RSApplyHSpaceVector", model=model_ref, vector=vec.out(0), strength=1.0, start_percent=0.0,
                 end_percent=1.0, branches="cond_only", resize_mode="bilinear")


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_cond_only_patches_shift_the_safe_branch_while_mixing(comfy, vf, sampler):
    """A cond-only h-space vector under the dual-latent guider: one mixing step equals
    w_xi * (the patched model's step on the safe prompt) + w_x * (its step on the original
    prompt), each computed by ComfyUI's own CFGGuider. Were the safe chunk left unpatched (as
    when it was labelled 2), the result would be the mix with the *unpatched* safe step."""
    w_xi, w_x = 0.7, 0.3
    g, ckpt, pos, safe, neg, latent = two_prompt_graph(comfy, batch=2)
    patched = hspace_model_graph(comfy, vf, g, ckpt.out(0))
    guiders = {
        "original": g.node("CFGGuider", model=patched.out(0), positive=pos.out(0), negative=neg.out(0), cfg=5.0),
        "safe_only": g.node("CFGGuider", model=patched.out(0), positive=safe.out(0), negative=neg.out(0), cfg=5.0),
        "safe_unpatched": g.node("CFGGuider", model=ckpt.out(0), positive=safe.out(0), negative=neg.out(0), cfg=5.0),
        "dual": g.node("RSDualLatentGuider", model=patched.out(0), positive=pos.out(0), safe_positive=safe.out(0),
                      negative=neg.out(0), cfg=5.0, w_xi=w_xi, w_x=w_x, tau_gc=1.0),
    }
    first_steps(g, ckpt, latent, sampler, guiders)
    original, safe_only, safe_unpatched, dual = latents(comfy.run(g.finalize()), "original", "safe_only",
                                                        "safe_unpatched", "dual")
    assert (safe_only - safe_unpatched).abs().mean() > 1e-2  # the vector does shift the safe prompt
    expected = w_xi * safe_only + w_x * original
    torch.testing.assert_close(dual, expected, atol=2e-4 * float(expected.abs().max()), rtol=1e-4)
    skipped = w_xi * safe_unpatched + w_x * original
    assert (dual - skipped).abs().mean() > 1e-3


def test_hspace_vector_under_the_dual_ksampler_equals_the_plain_ksampler_on_the_safe_prompt(comfy, vf):
    """tau_gc = 0 (safe prompt alone): the Dual-Latent KSampler on the patched model equals the
    plain KSampler with the safe prompt on the same patched model, and the vector changes it."""
    g, ckpt, pos, safe, neg, latent = two_prompt_graph(comfy)
    patched = hspace_model_graph(comfy, vf, g, ckpt.out(0))
    add_ksampler(g, "plain_safe", patched.out(0), safe.out(0), neg.out(0), latent.out(0))
    add_dual(g, "dual", patched.out(0), pos.out(0), safe.out(0), neg.out(0), latent.out(0), tau_gc=0.0)
    add_dual(g, "dual_unpatched", ckpt.out(0), pos.out(0), safe.out(0), neg.out(0), latent.out(0), tau_gc=0.0)
    plain_safe, dual, unpatched = latents(comfy.run(g.finalize()), "plain_safe", "dual", "dual_unpatched")
    assert torch.equal(dual, plain_safe)
    assert (dual - unpatched).abs().mean() > 1e-2


def counting_model(model, calls: list):
    """A clone of the model whose UNet calls record (batch size, chunk labels)."""
    counted = model.clone()

    def wrapper(apply_model, args):
        seen = list(args["c"]["transformer_options"]["cond_or_uncond"])
        assert seen == list(args["cond_or_uncond"])  # what the UNet's patches see
        calls.append((int(args["input"].shape[0]), seen))
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted.set_model_unet_function_wrapper(wrapper)
    return counted


def detect(comfy, text: str, unsafe=None, safe=None, k=1):
    defaults = comfy.module("steering.input_detector")
    g, ckpt, pos, neg = sd_graph(comfy, negative="")
    det = g.node("RSDualLatentInputDetector", id="det", clip=ckpt.out(1), text=text, k=k, threshold=0.5,
                safe_suffix=", safe for work",
                unsafe_concepts=unsafe or "\n".join(defaults.DEFAULT_UNSAFE_CONCEPTS),
                safe_concepts=safe or "\n".join(defaults.DEFAULT_SAFE_CONCEPTS))
    keep(g, det.out(0))
    keep(g, det.out(1))
    keep(g, pos.out(0))
    keep(g, neg.out(0))
    g.node("CLIPTextEncode", id="ref", text=text, clip=ckpt.out(1))
    keep(g, ["ref", 0])
    result = comfy.run(g.finalize())
    return {"positive": result.output("det", 0), "safe_positive": result.output("det", 1),
            "is_unsafe": result.output("det", 2), "safe_text": result.output("det", 3),
            "report": result.output("det", 4), "reference": result.output("ref", 0),
            "negative": result.output("neg", 0)}


def test_input_detector_flags_unsafe_concepts_and_passes_safe_prompts_through(comfy):
    unsafe = detect(comfy, "violence")
    assert unsafe["is_unsafe"] is True
    assert "violence" not in unsafe["safe_text"] and unsafe["safe_text"].endswith("safe for work")
    assert "UNSAFE" in unsafe["report"]
    assert torch.equal(unsafe["positive"][0][0], unsafe["reference"][0][0])  # = CLIP Text Encode of the prompt
    assert not torch.equal(unsafe["safe_positive"][0][0], unsafe["positive"][0][0])

    safe = detect(comfy, "a cat")
    assert safe["is_unsafe"] is False and safe["safe_text"] == "a cat"
    assert safe["safe_positive"] is safe["positive"]

    custom = detect(comfy, "a red balloon", unsafe="# comment\na red balloon\n\nmud", safe="a cat\na dog")
    assert custom["is_unsafe"] is True and "balloon" not in custom["safe_text"]


def test_a_prompt_judged_safe_costs_one_branch_only(comfy, tiny, dl):
    """UNet calls: 2 chunks per step (cond + uncond) for a safe prompt, exactly like a plain
    KSampler; 3 chunks (original, uncond, safe) while mixing for an unsafe one, 2 afterwards.
    The safe chunk is labelled conditional (0), so the labels while mixing are 0, 1, 0."""
    import comfy.sample as comfy_sample

    model = tiny[0]
    node = comfy.node_class("RSDualLatentKSampler")
    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    settings = dict(seed=5, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="normal", latent_image=latent,
                    denoise=1.0, w_xi=0.75, w_x=0.25, tau_gc=0.5)

    safe = detect(comfy, "a cat")
    calls = []
    with torch.inference_mode():
        out = node.execute(model=counting_model(model, calls), positive=safe["positive"],
                           safe_positive=safe["safe_positive"], negative=safe["negative"], **settings)[0]["samples"]
        noise = comfy_sample.prepare_noise(latent["samples"], 5)
        plain = comfy_sample.sample(model, noise, STEPS, 5.0, "euler", "normal", safe["positive"], safe["negative"],
                                    latent["samples"], seed=5)
    assert len(calls) == STEPS and all(b == 2 and sorted(c) == [0, 1] for b, c in calls)
    assert torch.equal(out, plain)

    unsafe = detect(comfy, "violence")
    calls = []
    with torch.inference_mode():
        node.execute(model=counting_model(model, calls), positive=unsafe["positive"],
                     safe_positive=unsafe["safe_positive"], negative=unsafe["negative"], **settings)
    # by hand: the normal schedule of 4 steps evaluates at timesteps 999, 666, 333 and 0, and tau_gc 0.5 is
    # timestep 999 * (1 - 0.5) = 499.5 (sigma grows with the timestep): the first two steps mix
    mixing = 2
    assert len(calls) == STEPS
    assert all(b == 3 and sorted(c) == [0, 0, 1] for b, c in calls[:mixing])
    assert all(b == 2 and sorted(c) == [0, 1] for b, c in calls[mixing:])
    import comfy.samplers as comfy_samplers

    sampling = model.get_model_object("model_sampling")
    sigmas = comfy_samplers.calculate_sigmas(sampling, "normal", STEPS)
    assert dl.two_branch_fraction(sampling, sigmas, dl.DualLatentSettings(0.75, 0.25, 0.5)) == mixing / STEPS


def sdxl_conditioning(width=2048, pooled=1280, seed=0, tokens=77):
    g = torch.Generator().manual_seed(seed)
    extra = {} if pooled is None else {"pooled_output": torch.randn(1, pooled, generator=g)}
    return [[torch.randn(1, tokens, width, generator=g), extra]]


@pytest.fixture(scope="module")
def sdxl_model(comfy):
    from devtools import tiny_models

    return tiny_models.build_unet_model("sdxl_tiny", seed=0, device="cpu")


def test_sdxl_conditioning_works_and_mismatches_raise(comfy, dl, sdxl_model):
    import comfy.sample as comfy_sample

    node = comfy.node_class("RSDualLatentKSampler")
    positive, safe, negative = sdxl_conditioning(seed=1), sdxl_conditioning(seed=2, tokens=154), sdxl_conditioning(seed=3)
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    common = dict(model=sdxl_model, seed=1, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal",
                  latent_image=latent, denoise=1.0, positive=positive, negative=negative, w_xi=0.75, w_x=0.25)
    with torch.inference_mode():
        mixed = node.execute(safe_positive=safe, tau_gc=1.0, **common)[0]["samples"]
        safe_first = node.execute(safe_positive=safe, tau_gc=0.0, **common)[0]["samples"]
        noise = comfy_sample.prepare_noise(latent["samples"], 1)
        safe_alone = comfy_sample.sample(sdxl_model, noise, 2, 4.0, "euler", "normal", safe, negative,
                                         latent["samples"], seed=1)
        original = comfy_sample.sample(sdxl_model, noise, 2, 4.0, "euler", "normal", positive, negative,
                                       latent["samples"], seed=1)
    assert mixed.shape == (2, 4, 8, 8) and torch.isfinite(mixed).all()
    assert torch.equal(safe_first, safe_alone)
    assert (mixed - original).abs().mean() > 1e-4 and (mixed - safe_alone).abs().mean() > 1e-4

    with torch.inference_mode():
        with pytest.raises(dl.ArchitectureError, match=r"width 768 vs 2048"):
            node.execute(safe_positive=sdxl_conditioning(width=768, pooled=None), tau_gc=0.5, **common)
        with pytest.raises(dl.ArchitectureError, match="pooled outputs differ"):
            node.execute(safe_positive=sdxl_conditioning(pooled=None), tau_gc=0.5, **common)
        sd1 = [[torch.randn(1, 77, 768), {}]]
        with pytest.raises(dl.ArchitectureError, match="model takes conditioning of width 2048"):
            node.execute(**{**common, "positive": sd1, "negative": sd1}, safe_positive=sd1, tau_gc=0.5)


def test_bad_settings_raise_clear_errors(comfy, dl):
    for kwargs, message in ((dict(w_xi=-0.1), "must be >= 0"), (dict(w_x=-1.0), "must be >= 0"),
                            (dict(w_xi=0.0, w_x=0.0), r"w_xi \+ w_x must be > 0"),
                            (dict(tau_gc=1.5), r"tau_gc .* \[0, 1\]; got 1.5"),
                            (dict(tau_gc=-0.1), r"\[0, 1\]"), (dict(w_xi=float("nan")), "finite")):
        with pytest.raises(ValueError, match=message):
            dl.DualLatentSettings(**kwargs)
    with pytest.raises(ValueError, match="expected a CONDITIONING"):
        dl.check_conditionings([], [[torch.zeros(1, 77, 768), {}]], [[torch.zeros(1, 77, 768), {}]])

    for bad in (dict(w_xi=-0.5), dict(tau_gc=1.5), dict(w_xi=0.0, w_x=0.0)):
        g, ckpt, pos, safe, neg, latent = two_prompt_graph(comfy)
        add_dual(g, "dual", ckpt.out(0), pos.out(0), safe.out(0), neg.out(0), latent.out(0), **{"w_xi": 0.75, "w_x": 0.25, **bad})
        with pytest.raises(PromptError):
            comfy.run(g.finalize())


def test_weights_are_normalised_and_sigma_threshold(comfy, dl, tiny):
    s = dl.DualLatentSettings(3.0, 1.0, 0.5)
    assert s.safe_weight == 0.75 and s.original_weight == 0.25
    sampling = tiny[0].get_model_object("model_sampling")
    assert s.sigma_gc(sampling) == pytest.approx(float(sampling.percent_to_sigma(0.5)))
    sigma_gc = s.sigma_gc(sampling)
    assert s.branches_at(sigma_gc * 1.01, sigma_gc) == dl.BOTH
    assert s.branches_at(sigma_gc * 0.99, sigma_gc) == dl.SAFE
    assert s.branches_at(sigma_gc * 1.01, sigma_gc, has_safe_branch=False) == dl.ORIGINAL
    assert dl.DualLatentSettings(tau_gc=0.0).sigma_gc(sampling) > float(sampling.sigma_max)
    assert dl.DualLatentSettings(tau_gc=1.0).sigma_gc(sampling) == 0.0


# ---------------------------------------------------------------------------- detector maths

class BagOfWords:
    """A deterministic toy text embedding: one axis per known word."""

    def __init__(self, vocabulary):
        self.vocabulary = {w: i for i, w in enumerate(vocabulary)}

    def __call__(self, text):
        v = torch.full((len(self.vocabulary) + 1,), 0.01)
        for word in text.lower().replace(",", " ").split():
            if word in self.vocabulary:
                v[self.vocabulary[word]] += 1.0
        return v


def test_detector_votes_and_removes_the_unsafe_words(detector_module):
    m = detector_module
    embed = m.TextEmbedder(BagOfWords("blood gore knife cat garden sunny street people".split()))
    det = m.InputDetector(embed, ["blood", "gore"], ["a cat in a garden", "a sunny street", "people"], k=1)
    result = det.detect("sunny street with blood and gore", safe_suffix=", safe for work")
    assert result.unsafe is False  # the nearest concept is the street (2 shared words)
    result = det.detect("blood and gore, a cat", safe_suffix=", safe for work")
    assert result.unsafe and sorted(result.flagged_words) == ["blood", "gore"]
    assert result.safe_text == "a cat, safe for work"
    assert "blood" in result.report() and "UNSAFE" in result.report()

    voting = m.InputDetector(embed, ["blood", "gore"], ["a cat in a garden", "a sunny street", "people"], k=3)
    assert 0.0 < voting.detect("blood cat").unsafe_share < 1.0
    assert m.remove_words("A Blood-soaked knife, blood , and cats", ["blood"]) == "A Blood-soaked knife, cats"
    assert m.remove_words("a man with a gun in the park", ["gun"]) == "a man in the park"
    assert m.parse_concepts("# c\n\n a \nA\nb", "x") == ["a", "b"]
    with pytest.raises(ValueError, match="at least one concept"):
        m.parse_concepts("# only a comment\n", "unsafe_concepts")
    with pytest.raises(ValueError, match="k .* >= 1"):
        m.InputDetector(embed, ["blood"], ["cat"], k=0)


# ---------------------------------------------------------------------------- SaDi

def test_sadi_index(comfy):
    metrics = comfy.module("steering.evaluation_metrics")
    assert metrics.sadi_index(0.2, 0.1) == pytest.approx(1 - (0.5 * 0.2 + 0.5 * 0.1))
    assert metrics.sadi_index(0.2, 0.1, alpha1=1.0, alpha2=0.0) == pytest.approx(0.8)
    assert metrics.sadi_index(0.0, 0.0) == 1.0
    assert metrics.sadi_index(1.0, 1.0) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.sadi_index(1.2, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        metrics.sadi_index(0.2, 0.1, alpha1=-1.0)
