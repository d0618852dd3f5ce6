"""Embedding direction (arXiv 2505.15427): add beta * d to the prompt embedding.

The shift is applied from a warm-up point of the denoising schedule on. The window is
given as fractions of the schedule (0 = pure noise, 1 = clean), which ComfyUI turns
into sigmas with the model's own ``percent_to_sigma`` when sampling: the same window
means the same noise levels for every sampler and scheduler.

It is implemented with ComfyUI's native conditioning timestep ranges (what
``ConditioningSetTimestepRange`` sets): each conditioning entry becomes up to three
entries, the shifted one inside the window and the untouched one outside it. Outside
the window the sampler therefore runs exactly the original conditioning; inside it,
exactly the shifted one. As everywhere in ComfyUI, ranges are inclusive: a schedule
step that falls exactly on a boundary sigma averages the two predictions.

Only the conditioning passed in is shifted: connect the node to the positive input
and the unconditional (negative) branch stays untouched, as in the paper.

Token layouts (:func:`fit_to_tokens`): a direction is [T, D], one row per token position.
CLIP-chunk architectures (SD1.x, SD2.x, SDXL) define it per 77-token chunk (``chunk_mode``).
T5-style architectures (SD3: 77 CLIP tokens then the T5 tokens; FLUX: the T5 tokens, at least
256) have prompts of any length: row i acts on token i for the tokens present, rows beyond the
prompt are dropped and tokens beyond the direction are left as they are. Training (the Train
Steering Vector node) learns a direction with one row per token of its prompt, so the two agree.
A vector may also hold a direction for the pooled vector (``pooled``, [P]); it is added to
``pooled_output`` in the same window.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .architectures import ArchitectureError, architecture_of_conditioning, get_architecture
from .schedule import FAIRNESS_START_STEP, PAPER_STEPS, SAFETY_START_STEP, paper_step_to_start_percent
from .window import check_window

# The reference (generate.py / generate_fair.py) steers 1-based steps 15..50 of 50 for safety and 10..50 of 50 for
# fairness; on ComfyUI's `normal` scheduler these percents select exactly those steps (steering/schedule.py):
# 0.276 and 0.173, to the last step. The nodes and a Python caller get the same window.
DEFAULT_START = paper_step_to_start_percent(SAFETY_START_STEP, PAPER_STEPS)
DEFAULT_FAIR_START = paper_step_to_start_percent(FAIRNESS_START_STEP, PAPER_STEPS)
DEFAULT_END = 1.0

CHUNK_MODES = ("every_chunk", "first_chunk")


class EmbeddingDirectionError(ValueError):
    """Directions or options that cannot be applied to the conditioning."""


def expand_to_tokens(direction: torch.Tensor, tokens: int, chunk_mode: str = "every_chunk") -> torch.Tensor:
    """Fit a [T, D] direction to a prompt of `tokens` tokens.

    Prompts longer than 77 tokens reach the UNet as several 77-token CLIP chunks, each
    encoded on its own (with its own start/end tokens) and concatenated. The direction
    is defined per chunk position, so ``every_chunk`` adds it to each chunk and
    ``first_chunk`` only to the first."""
    length = direction.shape[0]
    if tokens == length:
        return direction
    if tokens % length != 0:
        raise ArchitectureError(
            f"conditioning has {tokens} tokens, not a whole number of {length}-token chunks the "
            f"direction [{length}, {direction.shape[1]}] applies to")
    if chunk_mode == "every_chunk":
        return direction.repeat(tokens // length, 1)
    if chunk_mode == "first_chunk":
        return torch.cat([direction, direction.new_zeros(tokens - length, direction.shape[1])])
    raise EmbeddingDirectionError(f"chunk_mode {chunk_mode!r}; expected one of {CHUNK_MODES}")


def fit_to_tokens(direction: torch.Tensor, tokens: int, arch: str, chunk_mode: str = "every_chunk") -> torch.Tensor:
    """The [T, D] direction as a [tokens, D] shift for a prompt of `tokens` tokens of architecture `arch`:
    per CLIP chunk (:func:`expand_to_tokens`), or, for T5-style prompts, row i on token i of the tokens
    present (zeros beyond the direction, rows beyond the prompt dropped)."""
    if get_architecture(arch).text_tokens is not None:
        return expand_to_tokens(direction, tokens, chunk_mode)
    if chunk_mode not in CHUNK_MODES:
        raise EmbeddingDirectionError(f"chunk_mode {chunk_mode!r}; expected one of {CHUNK_MODES}")
    rows = min(tokens, direction.shape[0])
    if rows == tokens:
        return direction[:tokens]
    return torch.cat([direction[:rows], direction.new_zeros(tokens - rows, direction.shape[1])])


def _window_pieces(own_start: float, own_end: float, start: float, end: float):
    """Split an entry's own window into (start, end, shifted) pieces around [start, end]."""
    pieces = []
    if own_start < start:
        pieces.append((own_start, min(own_end, start), False))
    lo, hi = max(own_start, start), min(own_end, end)
    if lo < hi:
        pieces.append((lo, hi, True))
    if end < own_end:
        pieces.append((max(own_start, end), own_end, False))
    return [p for p in pieces if p[0] < p[1]]


def apply_embedding_direction(
    conditioning: list,
    directions: Sequence[torch.Tensor],
    arch: str,
    strength: float = 1.0,
    start_percent: float = DEFAULT_START,
    end_percent: float = DEFAULT_END,
    chunk_mode: str = "every_chunk",
    pooled_directions: Sequence[torch.Tensor | None] | None = None,
) -> list:
    """Return new conditioning with `strength * d` added inside the window.

    `directions` holds one [T, D] direction for every image (fair sampling: image i of
    the batch gets directions[i]) or a single one for all images; `pooled_directions`, if given,
    one [P] direction of the pooled vector for each of them (None: that one has none). The input
    list, its dicts and tensors are not modified."""
    check_window(start_percent, end_percent, "embedding direction")
    if not directions:
        raise EmbeddingDirectionError("no embedding direction given")
    if strength == 0.0 or start_percent == end_percent:
        return [[t, d.copy()] for t, d in conditioning]
    out = []
    for cond, options in conditioning:
        cond_arch = architecture_of_conditioning(cond, options.get("pooled_output"))
        if cond_arch != arch:
            raise ArchitectureError(
                f"the direction is for {arch} but the conditioning is {list(cond.shape)} ({cond_arch}); "
                "use a direction learned for this model's text encoder")
        per_image = torch.stack([fit_to_tokens(d, cond.shape[1], arch, chunk_mode) for d in directions])
        shift = (strength * per_image).to(device=cond.device, dtype=cond.dtype)
        if cond.shape[0] > 1 and shift.shape[0] > 1 and cond.shape[0] != shift.shape[0]:
            raise EmbeddingDirectionError(
                f"conditioning holds a batch of {cond.shape[0]} prompts but {shift.shape[0]} per-image "
                "directions were given; they must match (or one of them be 1)")
        shifted = cond + shift
        shifted_options = _with_pooled_shift(options, pooled_directions, len(directions), strength)
        own_start = float(options.get("start_percent", 0.0))
        own_end = float(options.get("end_percent", 1.0))
        for lo, hi, is_shifted in _window_pieces(own_start, own_end, start_percent, end_percent):
            entry = (shifted_options if is_shifted else options).copy()
            if (lo, hi) != (own_start, own_end) or "start_percent" in options:
                entry["start_percent"], entry["end_percent"] = lo, hi
            out.append([shifted if is_shifted else cond, entry])
    return out


def _with_pooled_shift(options: dict, pooled_directions, count: int, strength: float) -> dict:
    """`options` with strength * p added to its pooled_output (per image), or `options` itself when no
    direction has a pooled part."""
    if not pooled_directions or all(p is None for p in pooled_directions):
        return options
    if len(pooled_directions) != count:
        raise EmbeddingDirectionError(f"{len(pooled_directions)} pooled directions for {count} directions")
    pooled = options.get("pooled_output")
    if pooled is None:
        raise ArchitectureError("the vector has a pooled direction but the conditioning has no pooled_output")
    width = int(pooled.shape[-1])
    rows = []
    for p in pooled_directions:
        p = torch.zeros(width) if p is None else p
        if p.shape != (width,):
            raise ArchitectureError(f"pooled direction of shape {list(p.shape)}; the conditioning's pooled_output "
                                    f"has width {width}")
        rows.append(p)
    shift = (strength * torch.stack(rows)).to(device=pooled.device, dtype=pooled.dtype)
    return {**options, "pooled_output": pooled + shift}
