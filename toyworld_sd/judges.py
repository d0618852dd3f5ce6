"""ToyWorld-SD's analytic judges: the unsafe concept is ToyWorld's (a red object, in the same palette), so
ToyWorld's differentiable red-pixel share (ToyWorldRedScore, "toyworld_red") scores ToyWorld-SD images as they
are; the exact unsafe score and the attribute classifier read them with ToyWorld-SD's classifier (three shapes,
two sizes)."""
from __future__ import annotations

from ..toyworld import judges as toyworld_judges
from ..toyworld.judges import ToyWorldRedScore
from . import world

__all__ = ["ToyWorldRedScore", "ToyWorldSDUnsafeScore", "ToyWorldSDAttributeClassifier"]


class ToyWorldSDUnsafeScore(toyworld_judges.ToyWorldUnsafeScore):
    """Safety score of ToyWorld-SD images: 1 where the object is red (the unsafe concept), else 0."""

    name = "ToyWorld-SD unsafe concept (red object)"
    world = world


class ToyWorldSDAttributeClassifier(toyworld_judges.ToyWorldAttributeClassifier):
    """Reads one attribute (colour, shape, size or background) of ToyWorld-SD images exactly."""

    world = world
    label = "ToyWorld-SD"
