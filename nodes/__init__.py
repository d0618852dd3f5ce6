"""ComfyUI glue: the V3 extension that lists every node of the pack.

Every ``nodes/*_nodes.py`` module exposes ``NODES``, a list of its io.ComfyNode
classes; they are collected here in file-name order, and every one gets the pack's
input validation (nodes/validation.py: each input checked against its schema). The
entry point registers the pack's model folders (nodes/paths.py) and its demo models'
architectures and safety score (toyworld/, toyworld_sd/) before any node module is imported, then reads the
operator's policy (operator_policy/).
"""
from __future__ import annotations

import importlib
import pkgutil

from comfy_api.v0_0_2 import ComfyExtension, io

from ..operator_policy.install import install as install_policy
from ..toyworld.judges import register_score_kinds as register_toyworld_scores
from ..toyworld.model import register_architecture as register_toyworld
from ..toyworld_sd.model import register_architecture as register_toyworld_sd
from . import paths
from .paths import register_model_folders
from .validation import harden


def node_modules() -> list:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_nodes"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


def all_nodes() -> list[type[io.ComfyNode]]:
    return [harden(node) for module in node_modules() for node in module.NODES]


class ResponsibleSteeringExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()


async def comfy_entrypoint() -> ComfyExtension:
    register_model_folders()
    register_toyworld()
    register_toyworld_scores()
    register_toyworld_sd()
    install_policy(paths)
    return ResponsibleSteeringExtension()
