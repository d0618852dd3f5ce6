"""ToyWorld benchmarks: training the model (train.py), the efficacy benchmark (efficacy.py), fitting
vectors with the pack's training loop (fit.py) and activation patching.

The model itself (its world, weights, judges and vectors) ships with the pack, in ``toyworld/``;
these scripts use the pack's copy, as ComfyUI loaded it, so that module state (the architecture
registry, ToyWorld's model-config class) exists once per process."""
from __future__ import annotations

from types import ModuleType


def pack_toyworld(name: str, package: str = "toyworld") -> ModuleType:
    """The pack's ``toyworld.<name>`` module, or another demo world's (`package`: "toyworld_sd") (ComfyUI must be
    set up first: devtools.comfy_env.setup)."""
    from devtools import pack

    return pack.module(f"{package}.{name}")
