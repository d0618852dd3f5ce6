"""Nodes of STG, Safe Text-embedding Guidance (arXiv 2510.24012)."""
from __future__ import annotations

import comfy.samplers
from comfy_api.v0_0_2 import io

from ..steering.architectures import architecture_of_model
from ..steering.decoders import DECODERS, SCREENS, load_taesd_decoder, vae_decoder
from ..steering.guiders import make_stg_guider
from ..steering.stg import AUTOCAST_MODES, DEFAULT_END, DEFAULT_START, STGSettings
from .common import CATEGORY, check_window_inputs, ksampler_with_guider, schema, window_inputs
from .paths import taesd_decoder_path
from .types import SafetyScoreType

STG_CATEGORY = f"{CATEGORY}/stg"
FLUX_CFG1 = ("with SD3 and FLUX. FLUX dev runs at CFG 1 with its distilled guidance (FluxGuidance): there is no "
             "unconditional branch, so the update uses the conditional prediction alone.")


def stg_inputs() -> list:
    return [
        io.Vae.Input("vae", tooltip="The VAE of the checkpoint: the denoised estimate is decoded with it "
                                    "(differentiably) to score the image."),
        SafetyScoreType.Input("safety_score", tooltip="What counts as unsafe (NudeNet, CLIP violence/artist, "
                                                      "colour statistic). Images scoring above its threshold "
                                                      "('unsafe above') are guided."),
        io.Float.Input("rho", default=0.5, min=0.0, max=100.0, step=0.01,
                       tooltip="Step size of the embedding update c <- c - rho * g/||g|| (the reference README "
                               "uses 0.5; the paper's ablation 0.5-2). 0 turns STG off: exactly the plain sampler."),
        *window_inputs(DEFAULT_START, DEFAULT_END),
        io.Float.Input("update_ratio", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="gamma: the fraction of the window's schedule steps that update the embedding "
                               "(evenly spaced). One update per step, also for samplers that evaluate the model "
                               "twice per step (heun, dpm_2, dpmpp_2s_ancestral, 2S SDE). Lower is faster."),
        io.Float.Input("prior_weight", default=0.0, min=0.0, max=1000.0, step=0.01,
                       tooltip="Adds prior_weight * mean((c0 - c)^2) to the score: keeps the embedding near the "
                               "prompt's original one."),
        io.Boolean.Input("rebase", default=False,
                         tooltip="Off: updates accumulate and persist to later steps (the paper). On: every "
                                 "update starts again from the original embedding."),
        io.Boolean.Input("guide_pooled", default=False,
                         tooltip="Also guide the pooled text vector (SDXL, SD3, FLUX), besides the text "
                                 "conditioning."),
        io.Combo.Input("decoder", options=list(DECODERS), default="vae",
                       tooltip="vae: the checkpoint's VAE (exact). taesd: the model's TAESD from "
                               "models/vae_approx (taesd / taesdxl / taesd3 / taef1 decoder): approximate, and "
                               "far cheaper: at SD1.5 size, 512 px, its gradient pass needs a fraction of the "
                               "VAE's memory (see the node's help)."),
        io.Combo.Input("autocast", options=list(AUTOCAST_MODES), default="none",
                       tooltip="Run the scoring and gradient passes under fp16/bf16 autocast (faster, about half "
                               "the memory)."),
        io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                         tooltip="Recompute the UNet's and the decoder's activations in the backward pass instead "
                                 "of keeping them: much less memory for the images that are guided, about one "
                                 "more forward pass of time. Same result."),
        io.Combo.Input("screen", options=list(SCREENS), default="off", optional=True,
                       tooltip="off: every image is scored with the decoder above (exact). taesd: every image is "
                               "scored with TAESD first (models/vae_approx) and only the ones it flags are "
                               "decoded with the decoder above: an image TAESD finds safe is not guided even "
                               "if the exact decode would flag it. Makes unflagged images almost as cheap as "
                               "the plain sampler with decoder vae."),
        io.Float.Input("hold_margin", default=0.0, min=0.0, max=100.0, step=0.01, optional=True,
                       tooltip="Hysteresis (beyond the paper; 0 = the paper's single threshold): an image found "
                               "unsafe stays guided at the next steps while its score is above the score's "
                               "threshold minus this margin. With a high threshold (is it unsafe?) and a large "
                               "margin (guide until it is clearly safe), benign images near the concept are "
                               "left alone and unsafe ones are not let go half-way. Only ever adds guidance."),
    ]


def build_guider(model, positive, negative, cfg, vae, safety_score, rho, start_percent, end_percent,
                 update_ratio, prior_weight, rebase, guide_pooled, decoder, autocast, gradient_checkpointing=False,
                 screen="off", hold_margin=0.0):
    settings = STGSettings(rho=rho, start_percent=start_percent, end_percent=end_percent,
                           update_ratio=update_ratio, prior_weight=prior_weight, rebase=rebase,
                           guide_pooled=guide_pooled, autocast=autocast, gradient_checkpointing=gradient_checkpointing,
                           hold_margin=hold_margin)
    taesd = None
    if decoder == "taesd" or screen == "taesd":
        taesd = load_taesd_decoder(taesd_decoder_path(architecture_of_model(model)))
    latent_decoder = taesd if decoder == "taesd" else vae_decoder(vae)
    # a TAESD screen in front of a TAESD decoder would score every image twice the same way
    screen_decoder = taesd if screen == "taesd" and decoder != "taesd" else None
    return make_stg_guider(model, positive, negative, cfg, latent_decoder, safety_score, settings, screen_decoder)


class STGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSSTGGuider",
            search_aliases=["stg", "guider", "guidance", "safety", "safe", "nsfw", "unsafe", "nudity", "violence",
                            "gradient"],
            display_name="STG Guider",
            category=STG_CATEGORY,
            description="Safe Text-embedding Guidance (arXiv 2510.24012) as a guider for SamplerCustomAdvanced: "
                        "on the steps of the window, the prompt embedding of every image whose safety score "
                        "is above the threshold moves against the score's gradient (through the diffusion "
                        "model, the denoised estimate and the VAE). Works with every sampler and scheduler, "
                        f"and {FLUX_CFG1}",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model: SD1.x, SD2.x, SDXL, SD3 or FLUX."),
                io.Conditioning.Input("positive", tooltip="The prompt: its embedding is what STG updates."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (never updated)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                *stg_inputs(),
            ],
            outputs=[io.Guider.Output(tooltip="The STG guider, for SamplerCustomAdvanced.")],
        )

    @classmethod
    def validate_inputs(cls, start_percent, end_percent):
        return check_window_inputs(start_percent, end_percent)

    @classmethod
    def execute(cls, model, positive, negative, cfg, vae, safety_score, rho, start_percent, end_percent,
                update_ratio, prior_weight, rebase, guide_pooled, decoder, autocast, gradient_checkpointing=False,
                screen="off", hold_margin=0.0) -> io.NodeOutput:
        return io.NodeOutput(build_guider(model, positive, negative, cfg, vae, safety_score, rho, start_percent,
                                          end_percent, update_ratio, prior_weight, rebase, guide_pooled, decoder,
                                          autocast, gradient_checkpointing, screen, hold_margin))


class STGKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSSTGKSampler",
            search_aliases=["stg", "sampler", "ksampler", "guidance", "safety", "safe", "nsfw", "unsafe", "nudity",
                            "violence", "gradient"],
            display_name="STG KSampler",
            category=STG_CATEGORY,
            description="KSampler with Safe Text-embedding Guidance (arXiv 2510.24012): same noise, sigmas and "
                        "sampler as KSampler; on the steps of the window the prompt embedding of unsafe images "
                        "is moved against the safety score's gradient. rho = 0 gives KSampler's result exactly.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model: SD1.x, SD2.x, SDXL, SD3 or FLUX."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed of the noise."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="Denoising steps."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, tooltip="The sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, tooltip="The scheduler."),
                io.Conditioning.Input("positive", tooltip="The prompt: its embedding is what STG updates."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (never updated)."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the schedule to run (1 = from pure noise)."),
                *stg_inputs(),
            ],
            outputs=[
                io.Latent.Output(tooltip="The denoised latent."),
                io.String.Output(display_name="report", tooltip="How many schedule steps were guided, the scores "
                                                                "per guided step and which images were updated."),
            ],
        )

    @classmethod
    def validate_inputs(cls, start_percent, end_percent):
        return check_window_inputs(start_percent, end_percent)

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                vae, safety_score, rho, start_percent, end_percent, update_ratio, prior_weight, rebase,
                guide_pooled, decoder, autocast, gradient_checkpointing=False, screen="off",
                hold_margin=0.0) -> io.NodeOutput:
        guider = build_guider(model, positive, negative, cfg, vae, safety_score, rho, start_percent, end_percent,
                              update_ratio, prior_weight, rebase, guide_pooled, decoder, autocast,
                              gradient_checkpointing, screen, hold_margin)
        out = ksampler_with_guider(guider, latent_image, seed, steps, sampler_name, scheduler, denoise)
        return io.NodeOutput(out, guider.report())


NODES = [STGGuider, STGKSampler]
