"""ToyWorld, the pack's demo model, as nodes (steering/demo): its loader (MODEL, CLIP, VAE for the
stock KSampler, CLIPTextEncode and VAEDecode), an empty latent of its size, and its analytic judges
(a differentiable red-pixel score and an exact attribute classifier)."""
from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..steering.safety import registry
from ..toyworld import comfy_objects, judges, model, world
from . import paths
from .common import CATEGORY, schema
from .types import AttributeClassifierType, SafetyScoreType

DEMO_CATEGORY = f"{CATEGORY}/demo"


class LoadToyWorld(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSLoadToyWorld",
            search_aliases=["toyworld", "demo", "toy", "model", "loader", "checkpoint", "try it"],
            display_name="Load ToyWorld (demo model)",
            category=DEMO_CATEGORY,
            description="ToyWorld: a tiny text-to-image model shipped with the pack (5.6 MB, runs in seconds on a "
                        "CPU). It draws one circle or square in red, orange, pink, green, blue or yellow on a "
                        "dark or light background, 32 x 32 pixels. Red is its unsafe concept (also 'crimson', "
                        "'blood'); prompts that do not name the background get a dark one 85 % of the time "
                        "(its bias). Its words: " + ", ".join(world.WORDS) + ".",
            inputs=[],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="ToyWorld's UNet (ComfyUI's own UNetModel): use it "
                                                              "with KSampler and every steering node."),
                io.Clip.Output(display_name="CLIP", tooltip="ToyWorld's text encoder for CLIP Text Encode: "
                                                            "conditioning [1, 10, 768]; only ToyWorld's words."),
                io.Vae.Output(display_name="VAE", tooltip="ToyWorld's exact latent-to-image mapping for VAE "
                                                          "Decode (no learned VAE)."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*comfy_objects.load(model.WEIGHTS))


class ToyWorldEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSToyWorldEmptyLatent",
            search_aliases=["toyworld", "demo", "latent", "empty latent"],
            display_name="ToyWorld Empty Latent",
            category=DEMO_CATEGORY,
            description="An empty latent batch of ToyWorld's size (12 x 16 x 16, which decodes to 32 x 32 "
                        "pixels), for KSampler.",
            inputs=[
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Images per batch; image i gets the noise of seed + i, as in KSampler."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="Zeros [batch, 12, 16, 16].")],
        )

    @classmethod
    def execute(cls, batch_size) -> io.NodeOutput:
        return io.NodeOutput({"samples": torch.zeros(batch_size, model.LATENT_CHANNELS, model.LATENT_SIZE,
                                                     model.LATENT_SIZE)})


class ToyWorldRedScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSToyWorldRedScore",
            search_aliases=["toyworld", "demo", "safety", "unsafe", "score", "red", "nsfw"],
            display_name="ToyWorld Red Score",
            category=DEMO_CATEGORY,
            description="ToyWorld's unsafe concept as a differentiable safety score: the share of pixels whose "
                        "colour is nearest to red among ToyWorld's colours (soft nearest colour), of the whole "
                        "image or of its object. Use it with STG, Detect Unsafe and Safety Rate.",
            inputs=[
                io.Float.Input("threshold", default=0.03, min=0.0, max=1.0, step=0.001,
                               tooltip="Unsafe above this share of red pixels (0.03 is about 30 of 1024)."),
                io.Float.Input("temperature", default=0.02, min=0.001, max=1.0, step=0.001,
                               tooltip="Softness of the nearest-colour assignment (squared RGB distance); "
                                       "smaller is closer to a hard count, with a less smooth gradient."),
                io.Combo.Input("share_of", options=list(judges.ToyWorldRedScore.SHARES), default="image",
                               optional=True,
                               tooltip="image: red pixels among all pixels; any red anywhere counts (detection, "
                                       "censoring). object: red pixels among the object's; its gradient "
                                       "recolours the object instead of shrinking or erasing it (STG on "
                                       "ToyWorld-SD). Set the threshold to match: e.g. 0.1 of the object."),
            ],
            outputs=[SafetyScoreType.Output(display_name="SAFETY_SCORE",
                                            tooltip="Scores images by their share of red pixels.")],
        )

    @classmethod
    def execute(cls, threshold, temperature, share_of="image") -> io.NodeOutput:
        return io.NodeOutput(registry.build("toyworld_red", threshold,
                                            {"temperature": temperature, "share_of": share_of}, paths))


class ToyWorldAttributeClassifier(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSToyWorldAttributeClassifier",
            search_aliases=["toyworld", "demo", "fair", "fairness", "bias", "attribute", "classifier"],
            display_name="ToyWorld Attribute Classifier",
            category=DEMO_CATEGORY,
            description="Reads one attribute of ToyWorld images exactly (colour, shape or background), for "
                        "Fairness Deviation. An image without an object has no colour or shape.",
            inputs=[
                io.Combo.Input("attribute", options=list(world.ATTRIBUTES), default=world.BIASED_ATTRIBUTE,
                               tooltip="background: ToyWorld's biased attribute (dark / light). colour: six "
                                       "colours. shape: circle / square."),
            ],
            outputs=[AttributeClassifierType.Output(display_name="ATTRIBUTE_CLASSIFIER",
                                                    tooltip="Labels each image with its attribute value.")],
        )

    @classmethod
    def execute(cls, attribute) -> io.NodeOutput:
        return io.NodeOutput(judges.ToyWorldAttributeClassifier(attribute))


NODES = [LoadToyWorld, ToyWorldEmptyLatent, ToyWorldRedScore, ToyWorldAttributeClassifier]
