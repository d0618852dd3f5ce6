"""Nodes of the embedding direction (arXiv 2505.15427): add a learned direction to the prompt embedding (arXiv 2505.15427)."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..steering.embedding_direction import (CHUNK_MODES, DEFAULT_END, DEFAULT_FAIR_START, DEFAULT_START,
                                            apply_embedding_direction)
from ..steering.fair import fair_assignment
from ..steering.schedule import FAIRNESS_START_STEP, PAPER_STEPS, SAFETY_START_STEP
from ..steering.vector_file import VectorFileError
from .common import (CATEGORY, check_window_inputs, describe_assignment, fair_inputs, schema, strength_input,
                     window_inputs)
from .types import SteeringVectorSetType, SteeringVectorType

CHUNK_TOOLTIP = ("Prompts over 77 tokens reach SD1.x/SD2.x/SDXL models as several 77-token CLIP chunks. "
                 "every_chunk adds the direction to each chunk; first_chunk only to the first. SD3 and FLUX "
                 "prompts are one token sequence: row i of the direction acts on token i (no effect here).")


def _embedding_vector(vector):
    if vector.kind != "embedding":
        raise VectorFileError(f"{vector.describe()} is not an embedding direction; use Apply h-space Vector")
    return vector


class ApplyEmbeddingDirection(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSApplyEmbeddingDirection",
            search_aliases=["vector", "embedding", "direction", "safety", "safe", "nsfw", "unsafe", "nudity",
                            "violence", "guidance", "concept removal"],
            display_name="Apply Embedding Direction",
            category=f"{CATEGORY}/embedding",
            description="Add strength x d to the prompt embedding from a warm-up point of the schedule on "
                        "(arXiv 2505.15427). Connect the result to the positive input only: the "
                        "unconditional branch stays untouched. The pooled output changes only if the vector "
                        "has a pooled direction. Works with SD1.x, SD2.x, SDXL, SD3 and FLUX. The default "
                        f"start {DEFAULT_START} is the paper's step {SAFETY_START_STEP} of {PAPER_STEPS} on the "
                        "normal scheduler (README: paper step k of N <-> start_percent).",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The prompt conditioning to steer (positive)."),
                SteeringVectorType.Input("vector", tooltip="An embedding-direction vector for this model's "
                                                           "architecture."),
                strength_input(),
                *window_inputs(DEFAULT_START, DEFAULT_END),
                io.Combo.Input("chunk_mode", options=list(CHUNK_MODES), default="every_chunk",
                               tooltip=CHUNK_TOOLTIP),
            ],
            outputs=[io.Conditioning.Output(tooltip="The steered conditioning, for the positive input of the "
                                                    "sampler.")],
        )

    @classmethod
    def validate_inputs(cls, start_percent, end_percent):
        return check_window_inputs(start_percent, end_percent)

    @classmethod
    def execute(cls, conditioning, vector, strength, start_percent, end_percent, chunk_mode) -> io.NodeOutput:
        vector = _embedding_vector(vector)
        out = apply_embedding_direction(conditioning, [vector.embedding_direction()], vector.arch, strength,
                                        start_percent, end_percent, chunk_mode, [vector.pooled_direction()])
        return io.NodeOutput(out)


class ApplyEmbeddingDirectionFair(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSApplyEmbeddingDirectionFair",
            search_aliases=["vector", "embedding", "direction", "fair", "fairness", "bias", "debias", "gender",
                            "diversity"],
            display_name="Apply Embedding Direction (Fair Sampling)",
            category=f"{CATEGORY}/embedding",
            description="Fair sampling with embedding directions: each image of the batch gets one of the "
                        "attribute directions (e.g. male / female), drawn with a seed. The default start "
                        f"{DEFAULT_FAIR_START} is the paper's fairness step {FAIRNESS_START_STEP} of {PAPER_STEPS} "
                        "on the normal scheduler.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The prompt conditioning to steer (positive)."),
                SteeringVectorSetType.Input("vectors", tooltip="Attribute directions (Steering Vector Set)."),
                io.Int.Input("batch_size", default=1, min=1, max=4096,
                             tooltip="The latent batch size: image i of the batch gets direction i of the "
                                     "draw. Larger batches repeat the pattern."),
                *fair_inputs(),
                strength_input(),
                *window_inputs(DEFAULT_FAIR_START, DEFAULT_END),
                io.Combo.Input("chunk_mode", options=list(CHUNK_MODES), default="every_chunk",
                               tooltip=CHUNK_TOOLTIP),
            ],
            outputs=[
                io.Conditioning.Output(tooltip="The steered conditioning (one direction per image of the batch), "
                                               "for the positive input of the sampler."),
                io.String.Output(display_name="assignment", tooltip="Which vector each image got."),
            ],
        )

    @classmethod
    def validate_inputs(cls, start_percent, end_percent):
        return check_window_inputs(start_percent, end_percent)

    @classmethod
    def execute(cls, conditioning, vectors, batch_size, seed, assignment, strength, start_percent, end_percent,
                chunk_mode) -> io.NodeOutput:
        vectors = [_embedding_vector(v) for v in vectors]
        chosen = fair_assignment(len(vectors), batch_size, seed, assignment)
        directions = [vectors[k].embedding_direction() for k in chosen]
        out = apply_embedding_direction(conditioning, directions, vectors[0].arch, strength, start_percent,
                                        end_percent, chunk_mode, [vectors[k].pooled_direction() for k in chosen])
        return io.NodeOutput(out, describe_assignment([v.name for v in vectors], chosen))


NODES = [ApplyEmbeddingDirection, ApplyEmbeddingDirectionFair]
