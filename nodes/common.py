"""Inputs shared by several nodes, so every node says the same thing the same way."""
from __future__ import annotations

import comfy.utils
import latent_preview
from comfy_api.v0_0_2 import io

from ..steering.comfy_compat import schema_options
from ..steering.fair import ASSIGNMENT_MODES
from ..steering.guidance import sample_with_guider
from ..steering.window import window_problem

CATEGORY = "steering"
PACK_SEARCH_ALIASES = ("steering", "responsible steering")
"""Words every node of the pack is found by in the node search, besides its own aliases."""


def schema(*, search_aliases: list[str], **fields) -> io.Schema:
    """The node's io.Schema: `fields` as io.Schema takes them, and `search_aliases` (the node's own words,
    plus :data:`PACK_SEARCH_ALIASES`) as a Schema field where this ComfyUI has one (comfy_compat). The
    aliases are also kept on the schema object, where this ComfyUI's Schema lacks the field, so that
    devtools/build_locales.py writes them into locales/ and js/search_aliases.js can hand them to the
    frontend's search."""
    aliases = list(dict.fromkeys([*search_aliases, *PACK_SEARCH_ALIASES]))
    result = io.Schema(**fields, **schema_options(search_aliases=aliases))
    result.search_aliases = aliases
    return result


def strength_input(default: float = 1.0, name: str = "strength", tooltip: str | None = None) -> io.Float.Input:
    return io.Float.Input(
        name, default=default, min=-20.0, max=20.0, step=0.01,
        tooltip=tooltip or "Multiplier of the vector (beta). 0 leaves the generation unchanged; "
                           "negative values push the other way.")


def window_inputs(start: float, end: float) -> list[io.Float.Input]:
    return [
        io.Float.Input(
            "start_percent", default=start, min=0.0, max=1.0, step=0.001,
            tooltip="Where in the denoising schedule the steering starts: 0 = first step (pure noise), "
                    "1 = the end. Converted to the model's sigma, so it means the same noise level for "
                    "every sampler and scheduler."),
        io.Float.Input(
            "end_percent", default=end, min=0.0, max=1.0, step=0.001,
            tooltip="Where the steering stops (fraction of the schedule; 1 = to the last step)."),
    ]


def check_window_inputs(start_percent: float, end_percent: float) -> bool | str:
    """validate_inputs' answer for a window: True, or what is wrong with it."""
    return window_problem(start_percent, end_percent) or True


def fair_inputs() -> list:
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Seed of the per-image choice of vector. Image i always gets the same vector "
                             "for the same seed, whatever the batch size."),
        io.Combo.Input("assignment", options=list(ASSIGNMENT_MODES), default="uniform",
                       tooltip="uniform: each image draws a vector independently and uniformly (the papers). "
                               "balanced: every run of K images uses each of the K vectors once, so small "
                               "batches are as even as possible."),
    ]


def describe_assignment(names: list[str], assignment: list[int]) -> str:
    return "\n".join(f"image {i}: {names[k]}" for i, k in enumerate(assignment))


def ksampler_with_guider(guider, latent_image: dict, seed: int, steps: int, sampler_name: str, scheduler: str,
                         denoise: float) -> dict:
    """A KSampler-style node's result with `guider`: `latent_image` with the new samples (the
    preview and the progress bar as KSampler shows them)."""
    callback = latent_preview.prepare_callback(guider.model_patcher, steps)
    out = latent_image.copy()
    out["samples"] = sample_with_guider(guider, latent_image, seed, steps, sampler_name, scheduler, denoise,
                                        callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED)
    return out
