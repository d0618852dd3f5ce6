"""Nodes of the h-space methods: add learned vectors to the UNet bottleneck (CoDSMa c-vectors, RespoDiff RAM + SAM,
SDisc semantic directions; steering/hspace.py)."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..steering.hspace import BRANCHES, RESIZE_MODES, checked_offsets, patch_model_with_offsets
from .common import CATEGORY, check_window_inputs, fair_inputs, schema, strength_input, window_inputs
from .types import SteeringVectorSetType, SteeringVectorType


# RespoDiff's and SDisc's reference pipelines add the vector at every denoising step (paper step 1
# of N on, steering/schedule.py): the whole schedule.
DEFAULT_START, DEFAULT_END = 0.0, 1.0


def hspace_options() -> list:
    return [
        io.Combo.Input("branches", options=list(BRANCHES), default="cond_only",
                       tooltip="cond_only: shift only the conditional (prompt) half of the batch, as the "
                               "reference code does; cond_and_uncond: shift both."),
        io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="bilinear",
                       tooltip="How a vector learned at another resolution (e.g. 8x8 at 512 px for SD1.5) "
                               "is resized to this image's bottleneck size."),
    ]


class ApplyHSpaceVector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSApplyHSpaceVector",
            search_aliases=["vector", "h-space", "hspace", "bottleneck", "codsma", "respodiff", "sdisc", "safety",
                            "safe", "nsfw", "unsafe", "nudity", "violence", "guidance"],
            display_name="Apply h-space Vector",
            category=f"{CATEGORY}/h-space",
            description="Add a learned vector to the UNet bottleneck (middle-block output) at every step in "
                        "the window: CoDSMa c-vectors, RespoDiff RAM+SAM (applied together), SDisc "
                        "vectors. Works on a copy of the model; SD1.x, SD2.x and SDXL, any resolution (SD3 and FLUX "
                        "have no UNet bottleneck: use a text-side method there).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (UNet) to steer."),
                SteeringVectorType.Input("vector", tooltip="An h-space vector for this model's architecture."),
                strength_input(),
                *window_inputs(DEFAULT_START, DEFAULT_END),
                *hspace_options(),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model that adds the vector in the window.")],
        )

    @classmethod
    def validate_inputs(cls, start_percent, end_percent):
        return check_window_inputs(start_percent, end_percent)

    @classmethod
    def execute(cls, model, vector, strength, start_percent, end_percent, branches, resize_mode) -> io.NodeOutput:
        offsets = checked_offsets(model, [vector])
        return io.NodeOutput(patch_model_with_offsets(model, offsets, strength, start_percent, end_percent,
                                                      branches=branches, resize_mode=resize_mode))


class ApplyHSpaceVectorFair(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSApplyHSpaceVectorFair",
            search_aliases=["vector", "h-space", "hspace", "sdisc", "fair", "fairness", "bias", "debias", "gender",
                            "diversity"],
            display_name="Apply h-space Vector (Fair Sampling)",
            category=f"{CATEGORY}/h-space",
            description="Fair sampling in h-space: each image of the batch gets one of the attribute vectors "
                        "(e.g. SDisc male / female), drawn with a seed; image i gets the same vector for "
                        "the same seed whatever the batch size.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (UNet) to steer."),
                SteeringVectorSetType.Input("vectors", tooltip="Attribute vectors (Steering Vector Set)."),
                *fair_inputs(),
                strength_input(),
                *window_inputs(DEFAULT_START, DEFAULT_END),
                *hspace_options(),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model that adds one of the vectors to each image "
                                             "in the window.")],
        )

    @classmethod
    def validate_inputs(cls, start_percent, end_percent):
        return check_window_inputs(start_percent, end_percent)

    @classmethod
    def execute(cls, model, vectors, seed, assignment, strength, start_percent, end_percent, branches,
                resize_mode) -> io.NodeOutput:
        offsets = checked_offsets(model, vectors)
        return io.NodeOutput(patch_model_with_offsets(model, offsets, strength, start_percent, end_percent,
                                                      branches=branches, resize_mode=resize_mode, seed=seed,
                                                      assignment_mode=assignment))


NODES = [ApplyHSpaceVector, ApplyHSpaceVectorFair]
