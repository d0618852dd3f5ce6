"""Differentiable safety scores of decoded images (high = unsafe) for STG and the detect/censor nodes.

* :class:`ColourStatisticScore` - an analytic colour statistic (tests, toy settings);
* :class:`NudeNetScore` - the nudenet wheel's 320n.onnx detector converted to torch;
* :class:`CLIPViolenceScore`, :class:`CLIPArtistScore` - CLIP similarities from a local CLIP.

Heavy dependencies (onnx, transformers) are imported only when a score is built.
"""
from .base import DetectedRegion, SafetyScore, ScoreResult, image_to_nchw, rgb_nchw
from .colour import COLOUR_STATISTICS, ColourStatisticScore

__all__ = ["DetectedRegion", "SafetyScore", "ScoreResult", "image_to_nchw", "rgb_nchw", "COLOUR_STATISTICS", "ColourStatisticScore"]
