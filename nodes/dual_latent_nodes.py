"""Nodes of dual latent reconstruction (arXiv 2411.13982) and its input detector."""
from __future__ import annotations

import comfy.samplers
from comfy_api.v0_0_2 import io

from ..steering.dual_latent import DEFAULT_TAU_GC, DEFAULT_W_X, DEFAULT_W_XI, DualLatentSettings, dual_latent_guider
from ..steering.input_detector import (DEFAULT_SAFE_CONCEPTS, DEFAULT_SAFE_SUFFIX, DEFAULT_UNSAFE_CONCEPTS,
                                       MAX_CONCEPTS, MAX_PROMPT_CHARS, MAX_WORD_ENCODINGS, DetectorInputError,
                                       InputDetector, check_prompt_length, clip_embedder, conditioning_feature,
                                       parse_concepts)
from .common import CATEGORY, ksampler_with_guider, schema

DUAL_CATEGORY = f"{CATEGORY}/dual_latent"


def dual_latent_inputs() -> list:
    return [
        io.Float.Input("w_xi", default=DEFAULT_W_XI, min=0.0, max=100.0, step=0.01,
                       tooltip="Weight of the safe branch in the latent mix before tau_gc (the paper tunes "
                               "0.5-0.95). Higher is safer. 0 keeps the original prompt until tau_gc."),
        io.Float.Input("w_x", default=DEFAULT_W_X, min=0.0, max=100.0, step=0.01,
                       tooltip="Weight of the original branch in the mix before tau_gc: keeps the global "
                               "context of the original image. The two weights are normalised to sum 1."),
        io.Float.Input("tau_gc", default=DEFAULT_TAU_GC, min=0.0, max=1.0, step=0.01,
                       tooltip="Global-context threshold: the fraction of the schedule (0 = first step, "
                               "1 = the end) during which the latents are mixed; afterwards only the safe "
                               "branch continues. Converted to the model's sigma, so it means the same noise "
                               "level for every sampler and scheduler. 0 = the safe prompt alone."),
    ]


def check_weights(w_xi: float, w_x: float) -> bool | str:
    if w_xi < 0 or w_x < 0:
        return f"w_xi and w_x must be >= 0; got w_xi={w_xi}, w_x={w_x}"
    if w_xi + w_x <= 0:
        return f"w_xi + w_x must be > 0 (they are normalised to sum 1); got w_xi={w_xi}, w_x={w_x}"
    return True


def prompt_inputs() -> list:
    return [
        io.Conditioning.Input("positive", tooltip="The original (possibly unsafe) prompt."),
        io.Conditioning.Input("safe_positive",
                              tooltip="The safe prompt: a rewrite given by you, or the Dual-Latent Input "
                                      "Detector's output. When it equals positive (a prompt the detector "
                                      "judged safe) the second branch is skipped: no extra cost."),
        io.Conditioning.Input("negative", tooltip="The negative prompt, shared by both branches' CFG."),
    ]


class DualLatentKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSDualLatentKSampler",
            search_aliases=["dual latent", "sampler", "ksampler", "guidance", "safety", "safe", "nsfw", "unsafe",
                            "nudity"],
            display_name="Dual-Latent KSampler",
            category=DUAL_CATEGORY,
            description="KSampler for editing-free safe generation (dual latent reconstruction, arXiv "
                        "2411.13982): the original and the safe prompt denoise the same noise in one batched "
                        "model call; until tau_gc the latent follows w_xi * safe + w_x * original (global "
                        "context of the original), then the safe prompt alone. Any sampler and scheduler; "
                        "SD1.x to SDXL, SD3 and FLUX (at CFG 1 the safe branch is a second conditional "
                        "prompt).",
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise, shared by both branches."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Number of sampling steps."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, applied to each branch with the shared "
                                       "negative prompt."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               tooltip="Any sampler, including multistep and ancestral/SDE ones: the mix is "
                                       "done on the denoised predictions, so the sampler integrates one "
                                       "consistent trajectory."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="The noise schedule."),
                *prompt_inputs(),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (e.g. Empty Latent Image)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising, as in KSampler."),
                *dual_latent_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The safe branch's latent.")],
        )

    @classmethod
    def validate_inputs(cls, w_xi, w_x):
        return check_weights(w_xi, w_x)

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, safe_positive, negative,
                latent_image, denoise, w_xi, w_x, tau_gc) -> io.NodeOutput:
        guider = dual_latent_guider(model, positive, safe_positive, negative, cfg,
                                    DualLatentSettings(w_xi, w_x, tau_gc))
        return io.NodeOutput(ksampler_with_guider(guider, latent_image, seed, steps, sampler_name, scheduler,
                                                  denoise))


class DualLatentGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSDualLatentGuider",
            search_aliases=["dual latent", "guider", "guidance", "safety", "safe", "nsfw", "unsafe", "nudity"],
            display_name="Dual-Latent Guider",
            category=DUAL_CATEGORY,
            description="Guider for SamplerCustomAdvanced doing dual latent reconstruction (arXiv 2411.13982): "
                        "original and safe prompt on the same latent, mixed w_xi : w_x until tau_gc, then the "
                        "safe prompt alone. Works with any sampler and sigmas, and with SD3 and FLUX.",
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising."),
                *prompt_inputs(),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, applied to each branch with the shared "
                                       "negative prompt."),
                *dual_latent_inputs(),
            ],
            outputs=[io.Guider.Output(tooltip="The dual-latent guider, for SamplerCustomAdvanced.")],
        )

    @classmethod
    def validate_inputs(cls, w_xi, w_x):
        return check_weights(w_xi, w_x)

    @classmethod
    def execute(cls, model, positive, safe_positive, negative, cfg, w_xi, w_x, tau_gc) -> io.NodeOutput:
        return io.NodeOutput(dual_latent_guider(model, positive, safe_positive, negative, cfg,
                                                DualLatentSettings(w_xi, w_x, tau_gc)))


class DualLatentInputDetector(io.ComfyNode):
    POLICY_CONCEPT_INPUTS = ("unsafe_concepts", "safe_concepts", "safe_suffix")   # concept lists, not prompts
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSDualLatentInputDetector",
            search_aliases=["prompt", "detector", "dual latent", "unsafe", "nsfw", "safety", "filter", "moderation"],
            display_name="Dual-Latent Input Detector",
            category=DUAL_CATEGORY,
            description="Encodes the prompt and judges it by the nearest neighbours of its CLIP embedding "
                        "among unsafe and safe concept prompts. Unsafe: the safe prompt is the prompt with its "
                        "unsafe words removed plus a suffix. Safe: the prompt is passed through unchanged, so "
                        "the dual-latent sampler runs one branch only.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the checkpoint."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="",
                                tooltip="The prompt to check and encode (replaces CLIP Text Encode for the "
                                        f"positive prompt). At most {MAX_PROMPT_CHARS} characters; finding the "
                                        f"unsafe words of a flagged prompt costs at most {MAX_WORD_ENCODINGS} "
                                        "text encodings (long prompts are checked in chunks of words)."),
                io.String.Input("unsafe_concepts", multiline=True, default="\n".join(DEFAULT_UNSAFE_CONCEPTS),
                                tooltip="Unsafe concept prompts, one per line (# starts a comment), at most "
                                        f"{MAX_CONCEPTS}. Default: the SLD concept list."),
                io.String.Input("safe_concepts", multiline=True, default="\n".join(DEFAULT_SAFE_CONCEPTS),
                                tooltip="Safe concept prompts, one per line, including benign concepts close to "
                                        "unsafe ones (red paint, a kitchen knife) to avoid over-censoring; at "
                                        f"most {MAX_CONCEPTS}."),
                io.Int.Input("k", default=3, min=1, max=100,
                             tooltip="Number of nearest concepts that vote (weighted by cosine similarity)."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=0.99, step=0.01,
                               tooltip="The prompt is unsafe when the unsafe share of the vote exceeds this."),
                io.String.Input("safe_suffix", default=DEFAULT_SAFE_SUFFIX,
                                tooltip="Appended to the safe rewrite of an unsafe prompt."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The prompt, encoded."),
                io.Conditioning.Output(display_name="safe_positive",
                                       tooltip="The safe rewrite, encoded; the same conditioning as positive "
                                               "when the prompt is safe."),
                io.Boolean.Output(display_name="is_unsafe", tooltip="The detector's verdict."),
                io.String.Output(display_name="safe_text", tooltip="The safe prompt as text."),
                io.String.Output(display_name="report", tooltip="Verdict, nearest concepts and removed words."),
            ],
        )

    @classmethod
    def validate_inputs(cls, text, unsafe_concepts, safe_concepts):
        try:  # the bounds of steering/input_detector.py, before any model runs
            check_prompt_length(text)
            parse_concepts(unsafe_concepts, "unsafe_concepts")
            parse_concepts(safe_concepts, "safe_concepts")
        except DetectorInputError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, clip, text, unsafe_concepts, safe_concepts, k, threshold, safe_suffix) -> io.NodeOutput:
        import comfy.model_management as mm

        if clip is None:
            raise ValueError("clip input is None: the checkpoint has no text encoder")
        check_prompt_length(text)
        interrupted = mm.throw_exception_if_processing_interrupted
        embedder = clip_embedder(clip, check_interrupt=interrupted)
        detector = InputDetector(embedder, parse_concepts(unsafe_concepts, "unsafe_concepts"),
                                 parse_concepts(safe_concepts, "safe_concepts"), k=k, threshold=threshold)
        interrupted()
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(text))  # the prompt's only encoding
        embedder.put(text, conditioning_feature(positive))
        detection = detector.detect(text, safe_suffix)
        safe_positive = positive
        if detection.unsafe:
            interrupted()
            safe_positive = clip.encode_from_tokens_scheduled(clip.tokenize(detection.safe_text))
        return io.NodeOutput(positive, safe_positive, detection.unsafe, detection.safe_text, detection.report())


NODES = [DualLatentKSampler, DualLatentGuider, DualLatentInputDetector]
