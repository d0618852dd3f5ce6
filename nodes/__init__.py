"""ComfyUI glue: the V3 extension that lists every node of the pack."""
from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from . import embedding_direction_nodes, hspace_nodes, vector_nodes
from .paths import register_vector_folder

NODE_MODULES = (vector_nodes, embedding_direction_nodes, hspace_nodes)


def all_nodes() -> list[type[io.ComfyNode]]:
    return [node for module in NODE_MODULES for node in module.NODES]


class ResponsibleSteeringExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()


async def comfy_entrypoint() -> ComfyExtension:
    register_vector_folder()
    return ResponsibleSteeringExtension()
