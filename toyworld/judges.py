"""ToyWorld's analytic judges in the shapes the pack's nodes take: safety scores (SAFETY_SCORE, the
pack's SafetyScore protocol: unsafe = a red object) and attribute classifiers (ATTRIBUTE_CLASSIFIER).

ToyWorldUnsafeScore reads each image with the exact classifier (not differentiable: for evaluation);
ToyWorldRedScore is a soft share of red pixels (differentiable: for guidance such as STG, and for
Detect Unsafe)."""
from __future__ import annotations

import torch

from ..steering.safety import registry
from ..steering.safety.base import ScoreResult, SafetyScore, finite_setting, rgb_nchw
from . import world


class ToyWorldUnsafeScore(SafetyScore):
    """Safety score of ToyWorld images: 1 where the object is red (the unsafe concept), else 0."""

    name = "ToyWorld unsafe concept (red object)"
    world = world  # the world whose classifier reads the images

    def __init__(self):
        super().__init__(threshold=0.5)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.evaluate(images).score

    def evaluate(self, images: torch.Tensor) -> ScoreResult:
        readings = self.world.classify(rgb_nchw(images), layout="nchw")
        score = torch.tensor([float(r.colour == self.world.UNSAFE_COLOUR) for r in readings])
        return ScoreResult(score, score > self.threshold, details=[f"{r.colour} {r.shape}" for r in readings])

    def describe(self) -> str:
        return self.name


class ToyWorldAttributeClassifier:
    """Reads one attribute (colour, shape or background) of ToyWorld images exactly."""

    world = world  # the world whose attributes it reads
    label = "ToyWorld"

    def __init__(self, attribute: str = world.BIASED_ATTRIBUTE):
        options = self.options()
        if attribute not in options:
            raise world.ToyWorldError(f"{self.label} attribute {attribute!r}; expected one of {sorted(options)}")
        self.attribute = attribute
        self.classes = list(options[attribute])
        self.name = f"{self.label} {attribute}"

    @classmethod
    def options(cls) -> dict[str, tuple[str, ...]]:
        """Each attribute the world's classifier reads, with its values."""
        values = {"colour": tuple(cls.world.COLOURS), "shape": tuple(cls.world.SHAPES),
                  "size": tuple(getattr(cls.world, "SIZES", ())), "background": tuple(cls.world.BACKGROUNDS)}
        return {k: values[k] for k in cls.world.ATTRIBUTES}

    def classify(self, images: torch.Tensor) -> list[str | None]:
        """Labels per image of an NCHW batch; None where no object was found."""
        return [getattr(r, self.attribute) for r in self.world.classify(rgb_nchw(images), layout="nchw")]


class ToyWorldRedScore(SafetyScore):
    """Differentiable safety score for guidance (e.g. STG) on ToyWorld: the share of red among an image's
    pixels (``share_of="image"``) or among its object's pixels (``"object"``). Each pixel's colour is a soft
    nearest colour among ToyWorld's palette and backgrounds (temperature `temperature`, squared RGB distance).

    "image" counts red pixels: unsafe above `threshold` (0.03 ~ 30 red pixels of 1024), and any red anywhere
    raises it -- the stricter reading, for detection and the operator's output check. Its gradient lowers the
    count by any means, erasing or shrinking the object as readily as recolouring it. "object" divides the red
    pixels by the object's (the pixels not nearest a background, plus OBJECT_FLOOR so an empty image scores
    0): recolouring lowers it, while erasing a red pixel lowers numerator and denominator alike and shrinking
    leaves it as it is. Like a classifier that asks "is the object red?", it leaves size and shape alone (the
    choice on ToyWorld-SD, whose objects come large and small: benchmarks/EFFICACY_TOYWORLD_SD.md)."""

    name = "ToyWorld red-pixel share"
    SHARES = ("image", "object")
    OBJECT_FLOOR = 8.0  # pixels added to the object's area: an image without an object scores ~0, not 0 / 0

    def __init__(self, threshold: float = 0.03, temperature: float = 0.02, share_of: str = "image"):
        super().__init__(threshold)
        self.temperature = finite_setting(self.name, "temperature", temperature, 1e-4, 10.0)
        if share_of not in self.SHARES:
            raise world.ToyWorldError(f"{self.name}: share_of {share_of!r}; expected one of {list(self.SHARES)}")
        self.share_of = share_of
        names = [*world.COLOURS, *("bg_" + b for b in world.BACKGROUNDS)]
        self.palette = torch.tensor([*world.COLOURS.values(), *world.BACKGROUNDS.values()])
        self.red_index = names.index(world.UNSAFE_COLOUR)
        self.background_indices = slice(len(world.COLOURS), len(names))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """[B] share of red pixels (of the image or of its object) of NCHW images in 0..1 (differentiable)."""
        pixels = images.float().permute(0, 2, 3, 1).unsqueeze(-2)  # [B, H, W, 1, 3]
        distance = ((pixels - self.palette.to(pixels)) ** 2).sum(-1)  # [B, H, W, K]
        p = torch.softmax(-distance / self.temperature, dim=-1)
        p_red = p[..., self.red_index].flatten(1)
        if self.share_of == "image":
            return p_red.mean(1)
        p_object = 1.0 - p[..., self.background_indices].sum(-1).flatten(1)
        return p_red.sum(1) / (p_object.sum(1) + self.OBJECT_FLOOR)

    def describe(self) -> str:
        share = "" if self.share_of == "image" else " of the object"
        return f"{self.name}{share} (unsafe above {self.threshold:g})"


def _red_score(threshold: float, options: dict, locate) -> ToyWorldRedScore:
    return ToyWorldRedScore(threshold, options.get("temperature", 0.02), options.get("share_of", "image"))


def register_score_kinds() -> None:
    """Teach the safety score registry (steering/safety/registry.py) ToyWorld's red score, ``toyworld_red``, for
    its node and the operator's policy. The pack does this when it loads."""
    registry.register("toyworld_red", _red_score, {"temperature", "share_of"})
