"""What every safety score is: a differentiable function of an image batch.

A score maps decoded images to one number per image; high means unsafe. An image is
flagged unsafe when its score is *above* the score's ``threshold`` ("unsafe above").
Scores read NCHW batches ([B, 3, H, W]), nominally 0..1; a ComfyUI IMAGE ([B, H, W, 3]) is
converted once, explicitly, by :func:`image_to_nchw` (the layout is never guessed from the shape). During guidance they come straight from the decoder, unclamped
(``image / 2 + 0.5`` as in the STG reference): every score first resizes to its own
input size, then clamps to 0..1 (:func:`clamp_unit`), then scores - the reference's
order, so an overshooting pixel still passes gradient through the resize.

Threshold and the paper's tau: STG's paper states its safety function g with high =
safe (e.g. g = minus the NudeNet confidence sum) and a bar tau for "safe enough": the
update is made while g < tau, so raising tau updates more images (defence rises with
tau). Here the score is s = -g (high = unsafe) and an image is updated while
s > threshold, i.e. ``threshold = -tau`` for the same g: raising the paper's tau is
lowering this threshold. The reference code has no tau: it updates every image with at
least one kept nudity detection, which is NudeNet's score with threshold 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class DetectedRegion:
    """One region a detector found in an image: its label, confidence and box in image pixel
    coordinates (x0, y0, x1, y1)."""
    label: str
    confidence: float
    box: tuple[float, float, float, float]


@dataclass
class ScoreResult:
    score: torch.Tensor          # [B], differentiable when the input requires grad
    unsafe: torch.Tensor         # [B] bool: score > threshold
    detections: list[list[DetectedRegion]] | None = None  # per image, for detectors
    details: list[str] = field(default_factory=list)  # per image, human-readable


class ImageBatchError(ValueError):
    """Not an image batch a score can read (wrong rank or channel count)."""


def image_to_nchw(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] (C = 3; 4 with the alpha dropped; 1 = grey, repeated) as NCHW RGB.

    The layout is never guessed from the shape: an IMAGE is channels-last by definition, so a 3- or 4-pixel
    wide image stays what it is (guessing read [B, 3, H, 3] both ways)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ImageBatchError(f"expected a ComfyUI IMAGE batch [B, H, W, 3] (or 1 / 4 channels); got shape "
                              f"{list(images.shape)}")
    return rgb_nchw(images.movedim(-1, 1))


def rgb_nchw(images: torch.Tensor) -> torch.Tensor:
    """An NCHW batch [B, C, H, W] (C = 3; 4 with the alpha dropped; 1 = grey, repeated) as NCHW RGB: what every
    score's :meth:`SafetyScore.scores` reads. The layout is the caller's contract, never guessed."""
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ImageBatchError(f"expected an image batch [B, 3, H, W] (NCHW; or 1 / 4 channels); got shape "
                              f"{list(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def clamp_unit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to 0..1: what every score does after its resize (the reference's resize-then-clamp order)."""
    return images.clamp(0.0, 1.0)


class ScoreSettingsError(ValueError):
    """A safety score's setting it cannot be built with: an unknown option, or a value that would make it
    judge wrongly (e.g. a NaN threshold, which no score exceeds, so every image would pass as safe): the
    score refuses to be built (fail closed)."""


def finite_setting(score: str, name: str, value, low: float | None = None, high: float | None = None) -> float:
    """`value` as a float if it is finite and within [low, high], else :class:`ScoreSettingsError`."""
    number = float(value)
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        bounds = f" in [{low}, {high}]" if low is not None and high is not None else ""
        raise ScoreSettingsError(f"{score}: {name} must be a finite number{bounds}; got {value!r}")
    return number


class SafetyScore:
    """Base class: subclasses implement :meth:`scores` (and may override :meth:`evaluate`).

    ``threshold``: an image is unsafe when its score is strictly above it (see the module docstring
    for the paper's tau)."""

    name = "safety score"

    def __init__(self, threshold: float = 0.0):
        self.threshold = finite_setting(self.name, "threshold", threshold)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image score [B] of NCHW images (nominally 0..1, maybe unclamped: resize, then
        :func:`clamp_unit`), differentiable w.r.t. the images."""
        raise NotImplementedError

    def evaluate(self, images: torch.Tensor) -> ScoreResult:
        """Score an NCHW batch (see :func:`rgb_nchw`)."""
        score = self.scores(rgb_nchw(images))
        return ScoreResult(score, score.detach() > self.threshold)

    def score_and_flags(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score [B], unsafe [B]) of an NCHW batch without the human-readable extras (what guidance needs)."""
        score = self.scores(rgb_nchw(images))
        return score, score.detach() > self.threshold

    def __call__(self, images: torch.Tensor) -> ScoreResult:
        return self.evaluate(images)

    def modules(self) -> list[torch.nn.Module]:
        """Torch modules the score runs (so callers can make inference-mode weights autograd-safe)."""
        return []

    def describe(self) -> str:
        return f"{self.name} (unsafe above {self.threshold:g})"
