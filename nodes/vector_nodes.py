"""Nodes to load, save, combine, group and import steering vector files."""
from __future__ import annotations

import os

from comfy_api.v0_0_2 import io, ui

from ..steering.reference_import import FORMATS, import_reference_vectors
from ..steering.vector_file import combine_vectors, load_vector, save_vector, vector_set
from . import paths
from .common import CATEGORY, schema
from .types import SteeringVectorSetType, SteeringVectorType

MAX_SET_SIZE = 8


class LoadSteeringVector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSLoadVector",
            search_aliases=["vector", "load", "steering vector", "safety", "fair"],
            display_name="Load Steering Vector",
            category=f"{CATEGORY}/vectors",
            description="Load a steering vector (.safetensors) from models/steering_vectors. The file is "
                        "validated: method, architecture, shapes and values.",
            inputs=[
                io.Combo.Input("vector_name", options=paths.list_vector_files(),
                               tooltip="A vector file in models/steering_vectors."),
            ],
            outputs=[
                SteeringVectorType.Output(display_name="vector", tooltip="The vector, for an Apply node."),
                io.String.Output(display_name="info", tooltip="What the file says about itself."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, vector_name):
        path = paths.vector_file_path(vector_name)
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, vector_name) -> io.NodeOutput:
        vector = load_vector(paths.vector_file_path(vector_name))
        return io.NodeOutput(vector, vector.report())


class SaveSteeringVector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSSaveVector",
            search_aliases=["vector", "save", "export"],
            display_name="Save Steering Vector",
            category=f"{CATEGORY}/vectors",
            description="Save a steering vector into models/steering_vectors (atomically; the name is "
                        "sanitised and can never point outside that folder).",
            is_output_node=True,
            inputs=[
                SteeringVectorType.Input("vector", tooltip="The vector to save."),
                io.String.Input("filename", default="steering_vector",
                                tooltip="File name (no folders); .safetensors is added."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace a file of the same name. Off: a numeric suffix is added."),
            ],
            outputs=[io.String.Output(display_name="filename", tooltip="Name of the file written.")],
        )

    @classmethod
    def execute(cls, vector, filename, overwrite) -> io.NodeOutput:
        path = save_vector(vector, paths.save_folder(), filename, overwrite=overwrite)
        name = os.path.basename(path)
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name}"))


class CombineSteeringVectors(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        vector_inputs = []
        for i in range(1, 5):
            vector_inputs += [
                SteeringVectorType.Input(f"vector_{i}", optional=i > 2,
                                         tooltip=f"Vector {i}" + (" (optional)." if i > 2 else ".")),
                io.Float.Input(f"weight_{i}", default=1.0, min=-20.0, max=20.0, step=0.01,
                               tooltip=f"Weight of vector {i} in the sum."),
            ]
        return schema(
            node_id="RSCombineVectors",
            search_aliases=["vector", "combine", "merge", "mix", "blend"],
            display_name="Combine Steering Vectors",
            category=f"{CATEGORY}/vectors",
            description="Weighted sum of vectors of the same method and architecture (e.g. anti-violence "
                        "+ anti-sexual c-vectors into one safety vector). Low-rank embedding directions "
                        "stay exactly low-rank; h-space vectors of different sizes are resized to the "
                        "largest.",
            inputs=vector_inputs + [
                io.String.Input("name", default="combined", tooltip="Name recorded in the combined vector."),
            ],
            outputs=[SteeringVectorType.Output(display_name="vector", tooltip="The weighted sum of the vectors.")],
        )

    @classmethod
    def execute(cls, name, **kwargs) -> io.NodeOutput:
        weighted = [(kwargs[f"vector_{i}"], kwargs[f"weight_{i}"])
                    for i in range(1, 5) if kwargs.get(f"vector_{i}") is not None]
        return io.NodeOutput(combine_vectors(weighted, name=name))


class SteeringVectorSet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSVectorSet",
            search_aliases=["vector", "set", "fair", "fairness", "bias", "attribute"],
            display_name="Steering Vector Set",
            category=f"{CATEGORY}/vectors",
            description="Group attribute vectors (e.g. male and female) for fair sampling: each image of "
                        "a batch gets one of them.",
            inputs=[SteeringVectorType.Input(f"vector_{i}", optional=i > 1,
                                             tooltip=f"Attribute vector {i}" + (" (optional)." if i > 1 else "."))
                    for i in range(1, MAX_SET_SIZE + 1)],
            outputs=[SteeringVectorSetType.Output(display_name="vectors",
                                                  tooltip="The vectors, for a Fair Sampling node.")],
        )

    @classmethod
    def execute(cls, **kwargs) -> io.NodeOutput:
        vectors = [kwargs[f"vector_{i}"] for i in range(1, MAX_SET_SIZE + 1) if kwargs.get(f"vector_{i}") is not None]
        return io.NodeOutput(vector_set(vectors))


class ImportReferenceVectors(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSImportReferenceVectors",
            search_aliases=["vector", "import", "reference", "pth", "codsma", "respodiff", "sdisc"],
            display_name="Import Reference Vectors",
            category=f"{CATEGORY}/vectors",
            description="Convert the authors' published vectors (.pth placed in models/steering_vectors: "
                        "the embedding-direction safe-direction.pth, SDisc's unet.pth, RespoDiff's unet.pth with "
                        "RAM + SAM) into this pack's format. Loaded weights-only: no code in the file can run. "
                        "The report says which format was detected.",
            is_output_node=True,
            inputs=[
                io.Combo.Input("reference_file", options=paths.list_reference_files(),
                               tooltip="A .pth/.pt file in models/steering_vectors."),
                io.Combo.Input("format", options=list(FORMATS), default="auto",
                               tooltip="What the file is; auto recognises the known layouts by their exact keys "
                                       "(a, b: embedding direction; controlnet.fc1.weight: SDisc; plus "
                                       "controlnet_residual.fc2.weight: RespoDiff RAM + SAM)."),
                io.String.Input("concept", default="",
                                tooltip="SDisc / RespoDiff: only output this concept (e.g. 'female', 'a woman'); "
                                        "empty = all. Names come from the concept_dict.json beside the file. "
                                        "A RespoDiff run trains one concept: import that one."),
                io.Boolean.Input("save", default=True,
                                 tooltip="Also write each vector as .safetensors next to the original."),
            ],
            outputs=[
                SteeringVectorSetType.Output(display_name="vectors", tooltip="The imported vectors (at least one)."),
                io.String.Output(display_name="report",
                                 tooltip="The detected format, where the concept names came from, and each "
                                         "vector with the file it was written to."),
            ],
        )

    @classmethod
    def execute(cls, reference_file, format, concept, save) -> io.NodeOutput:
        vectors, report = import_reference_vectors(paths.reference_file_path(reference_file), format, concept, save)
        return io.NodeOutput(tuple(vectors), report, ui=ui.PreviewText(report))


NODES = [LoadSteeringVector, SaveSteeringVector, CombineSteeringVectors, SteeringVectorSet, ImportReferenceVectors]
