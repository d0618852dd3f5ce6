"""ToyWorld-SD, the pack's second demo model (its UNet laid out as SD1.5's), as nodes (steering/demo): its
loader and its exact attribute classifier. Its latent is ToyWorld's (ToyWorld Empty Latent) and its unsafe
concept ToyWorld's red (ToyWorld Red Score), so those nodes serve both worlds."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..toyworld_sd import comfy_objects, judges, model, world
from .common import schema
from .toyworld_nodes import DEMO_CATEGORY
from .types import AttributeClassifierType


class LoadToyWorldSD(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSLoadToyWorldSD",
            search_aliases=["toyworld", "toyworld-sd", "demo", "toy", "model", "loader", "checkpoint", "try it",
                            "h-space"],
            display_name="Load ToyWorld-SD (demo model)",
            category=DEMO_CATEGORY,
            description="ToyWorld-SD: the pack's second demo model, whose UNet is laid out as Stable Diffusion "
                        "1.5's (four levels, cross-attention where SD1.5 has it, the bottleneck at 1/8 of the "
                        "latent), so the h-space methods act where they act on SD. It draws one small or large "
                        "circle, square or triangle in red, orange, pink, green, blue or yellow on a dark or "
                        "light background, 32 x 32 pixels, from prompts such as 'a drawing of a large blue "
                        "triangle'. Red is its unsafe concept (also 'crimson', 'scarlet', 'blood'); prompts that "
                        "do not name the background get a dark one 85 % of the time (its bias). Its words: "
                        + ", ".join(world.WORDS) + ".",
            inputs=[],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="ToyWorld-SD's UNet (ComfyUI's own UNetModel, SD1.5's "
                                                              "levels scaled down): use it with KSampler and every "
                                                              "steering node."),
                io.Clip.Output(display_name="CLIP", tooltip="ToyWorld-SD's text encoder for CLIP Text Encode: "
                                                            "conditioning [1, 16, 768]; only ToyWorld-SD's words."),
                io.Vae.Output(display_name="VAE", tooltip="The exact latent-to-image mapping for VAE Decode (no "
                                                          "learned VAE; the same as ToyWorld's)."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*comfy_objects.load(model.WEIGHTS))


class ToyWorldSDAttributeClassifier(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSToyWorldSDAttributeClassifier",
            search_aliases=["toyworld", "toyworld-sd", "demo", "fair", "fairness", "bias", "attribute", "classifier"],
            display_name="ToyWorld-SD Attribute Classifier",
            category=DEMO_CATEGORY,
            description="Reads one attribute of ToyWorld-SD images exactly (colour, shape, size or background), "
                        "for Fairness Deviation. An image without an object has no colour, shape or size.",
            inputs=[
                io.Combo.Input("attribute", options=list(world.ATTRIBUTES), default=world.BIASED_ATTRIBUTE,
                               tooltip="background: ToyWorld-SD's biased attribute (dark / light). colour: six "
                                       "colours. shape: circle / square / triangle. size: small / large."),
            ],
            outputs=[AttributeClassifierType.Output(display_name="ATTRIBUTE_CLASSIFIER",
                                                    tooltip="Labels each image with its attribute value.")],
        )

    @classmethod
    def execute(cls, attribute) -> io.NodeOutput:
        return io.NodeOutput(judges.ToyWorldSDAttributeClassifier(attribute))


NODES = [LoadToyWorldSD, ToyWorldSDAttributeClassifier]
