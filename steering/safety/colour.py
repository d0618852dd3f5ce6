"""An analytic safety score: a colour statistic of the image.

Useful to test and to demonstrate guidance (the score and its gradient are exact and
cheap) and for toy settings where "unsafe" is a colour: e.g. score = mean redness.
"""
from __future__ import annotations

import torch

from .base import SafetyScore, ScoreSettingsError, clamp_unit

# Per-channel weights (R, G, B) of each statistic; the score is the image mean of w . rgb.
COLOUR_STATISTICS: dict[str, tuple[float, float, float]] = {
    "brightness": (0.299, 0.587, 0.114),   # luma (ITU-R BT.601)
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "redness": (1.0, -0.5, -0.5),          # red minus the mean of green and blue
}


class ColourStatisticScore(SafetyScore):
    """score = mean over pixels of weights . (r, g, b) of the image clamped to 0..1 (no resize);
    unsafe when above the threshold."""

    def __init__(self, statistic: str = "redness", threshold: float = 0.0):
        super().__init__(threshold)
        if statistic not in COLOUR_STATISTICS:
            raise ScoreSettingsError(f"unknown colour statistic {statistic!r}; expected one of "
                                     f"{sorted(COLOUR_STATISTICS)}")
        self.statistic = statistic
        self.name = f"colour statistic: {statistic}"

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        weights = torch.tensor(COLOUR_STATISTICS[self.statistic], dtype=images.dtype, device=images.device)
        return (clamp_unit(images) * weights.view(1, 3, 1, 1)).sum(1).flatten(1).mean(1)
