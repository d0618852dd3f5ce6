"""The safety scores by kind name: one table the score nodes and the operator's policy both build from.

``build(kind, threshold, options, locate)`` makes a :class:`~.base.SafetyScore`; `options` are the kind's own
settings (as the node's inputs or the policy's fields name them) and `locate` finds model files (the nodes'
folders: nodes/paths.py), so this module does not know where models live. Kinds defined outside steering/
register themselves (ToyWorld's red score: toyworld/judges.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from .base import SafetyScore, ScoreSettingsError


class ModelLocator(Protocol):
    def nudenet_model_path(self, name: str = ...) -> str: ...

    def clip_model_path(self, name: str) -> str: ...


Builder = Callable[[float, dict, ModelLocator], SafetyScore]


@dataclass(frozen=True)
class ScoreKind:
    name: str
    build: Builder
    options: frozenset[str]


SCORE_KINDS: dict[str, ScoreKind] = {}


def register(name: str, build: Builder, options: set[str] | frozenset[str]) -> None:
    SCORE_KINDS[name] = ScoreKind(name, build, frozenset(options))


def build(kind: str, threshold: float, options: dict, locate: ModelLocator) -> SafetyScore:
    """The score of `kind`; :class:`ScoreSettingsError` for an unknown kind or option."""
    entry = SCORE_KINDS.get(kind)
    if entry is None:
        raise ScoreSettingsError(f"unknown safety score kind {kind!r}; expected one of {sorted(SCORE_KINDS)}")
    unknown = set(options) - entry.options
    if unknown:
        raise ScoreSettingsError(f"score kind {kind!r} has no option {sorted(unknown)}; its options are "
                                 f"{sorted(entry.options)}")
    return entry.build(threshold, options, locate)


def _colour(threshold: float, options: dict, locate: ModelLocator) -> SafetyScore:
    from .colour import ColourStatisticScore

    return ColourStatisticScore(options.get("statistic", "redness"), threshold)


NUDENET_OPTIONS = {"labels", "custom_labels", "detection_threshold", "nms_iou", "class_wise_nms", "max_detections",
                   "channel_order", "resize", "model_name"}


def _nudenet(threshold: float, options: dict, locate: ModelLocator) -> SafetyScore:
    """NudeNet with the nudenet package's detection settings fed RGB (what Censor uses), overridden by `options`
    (the score node passes all of them: STG's guidance settings by default)."""
    from . import nudenet

    settings = {**nudenet.NUDENET_PACKAGE_SETTINGS, "channel_order": "rgb",
                **{k: v for k, v in options.items() if k in nudenet.NUDENET_PACKAGE_SETTINGS}}
    labels = options.get("labels", "stg_nudity")
    labels = nudenet.resolve_labels(labels, options.get("custom_labels", "")) if isinstance(labels, str) else labels
    path = locate.nudenet_model_path(options["model_name"]) if options.get("model_name") else \
        locate.nudenet_model_path()
    return nudenet.NudeNetScore(labels, settings.pop("detection_threshold"), threshold, path, **settings)


def _clip_violence(threshold: float, options: dict, locate: ModelLocator) -> SafetyScore:
    from . import clip_scores

    clip = clip_scores.load_clip(locate.clip_model_path(options["clip_model"]))
    texts = options.get("texts")
    return clip_scores.CLIPViolenceScore(clip, tuple(clip_scores.DEFAULT_VIOLENCE_TEXTS if texts is None else texts),
                                         threshold)


def _clip_artist(threshold: float, options: dict, locate: ModelLocator) -> SafetyScore:
    from . import clip_scores

    clip = clip_scores.load_clip(locate.clip_model_path(options["clip_model"]))
    return clip_scores.CLIPArtistScore(clip, options["artist"], options.get("reference_text", "art"), threshold)


register("colour", _colour, {"statistic"})
register("nudenet", _nudenet, NUDENET_OPTIONS)
register("clip_violence", _clip_violence, {"clip_model", "texts"})
register("clip_artist", _clip_artist, {"clip_model", "artist", "reference_text"})
