"""The policy's verdict on an image batch, and the censoring of what it flags.

Every score of the policy runs on each whole image *and* on half-overlapping square windows of the side the
policy gives it (``window``): an image's score is the maximum over them, and it is flagged when any of them is.
So an unsafe region is judged at its own scale, not as a share of the canvas it was padded or composited
onto (a mean over a large canvas falls under any threshold). Detectors' boxes found in a window are moved
back into image coordinates; a flagged image without boxes is covered whole (fail closed), as is an image
whose score is NaN.

Images arrive as ComfyUI IMAGE [B, H, W, C] and are converted to NCHW once, explicitly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..steering.safety.base import DetectedRegion, image_to_nchw
from ..steering.safety.censor import censor, detection_masks

REPLACE_GREY = 0.5
WINDOW_BATCH = 64           # windows scored per call


@dataclass
class Verdicts:
    flags: torch.Tensor          # [B] bool
    masks: torch.Tensor          # [B, H, W] float, 1 = covered when flagged
    per_image: list[dict]        # {"scores", "thresholds", "labels", "windows"} per image


def window_positions(length: int, size: int) -> list[int]:
    """Start offsets of windows of `size` along `length`, half-overlapping, the last one flush with the end."""
    stride = max(1, size // 2)
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def windows(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the local windows of an image; none when the image fits in one window."""
    if height <= size and width <= size:
        return []
    h, w = min(size, height), min(size, width)
    return [(y, x, h, w) for y in window_positions(height, h) for x in window_positions(width, w)]


def _evaluate(score, nchw: torch.Tensor):
    result = score.evaluate(nchw)
    values = result.score.detach().float().cpu().reshape(-1)
    unsafe = result.unsafe.detach().cpu().bool().reshape(-1) | torch.isnan(values)
    return values, unsafe, result.detections


def judge(images: torch.Tensor, scores) -> Verdicts:
    """Score an IMAGE batch with `scores` (label, ScoreSpec, SafetyScore) on whole images and local windows."""
    nchw = image_to_nchw(images).float()
    b, _, h, w = nchw.shape
    flags = torch.zeros(b, dtype=torch.bool)
    masks = torch.zeros(b, h, w)
    per_image = [{"scores": {}, "thresholds": {}, "labels": [], "windows": 0} for _ in range(b)]
    with torch.no_grad():
        for label, spec, score in scores:
            values, unsafe, detections = _evaluate(score, nchw)
            boxes: list[list[DetectedRegion]] = [list(d) for d in detections] if detections is not None else \
                [[] for _ in range(b)]
            found = windows(h, w, spec.window)
            for start in range(0, len(found) * b, WINDOW_BATCH):
                chunk = [(i // len(found), found[i % len(found)]) for i in range(start, min(start + WINDOW_BATCH,
                                                                                         len(found) * b))]
                crops = torch.stack([nchw[i, :, y:y + wh, x:x + ww] for i, (y, x, wh, ww) in chunk])
                v, u, d = _evaluate(score, crops)
                for n, (i, (y, x, _, _)) in enumerate(chunk):
                    now, seen = float(values[i]), float(v[n])
                    values[i] = float("nan") if math.isnan(now) or math.isnan(seen) else max(now, seen)
                    unsafe[i] |= bool(u[n])
                    if d is not None and u[n]:
                        boxes[i] += [DetectedRegion(r.label, r.confidence,
                                                    (r.box[0] + x, r.box[1] + y, r.box[2] + x, r.box[3] + y))
                                     for r in d[n]]
            covered = detection_masks(boxes if detections is not None else None, b, h, w, unsafe)
            for i in range(b):
                value = float(values[i])
                per_image[i]["scores"][label] = value if math.isfinite(value) else str(value)   # JSON: "nan"
                per_image[i]["thresholds"][label] = spec.threshold
                per_image[i]["windows"] = max(per_image[i]["windows"], len(found))
                if unsafe[i]:
                    per_image[i]["labels"].append(label)
                    per_image[i]["labels"] += sorted({r.label for r in boxes[i]})
                    if not bool(covered[i].any()):
                        covered[i] = 1.0            # flagged without a box: the whole image (fail closed)
            flags |= unsafe
            masks = torch.maximum(masks, covered * unsafe.view(-1, 1, 1).float())
    return Verdicts(flags, masks, per_image)


def censored(images: torch.Tensor, verdicts: Verdicts, mode: str, strength: int) -> torch.Tensor:
    """The batch with each flagged image censored on its own (``replace``: a grey image); the rest untouched,
    bit for bit."""
    if not bool(verdicts.flags.any()):
        return images
    if mode == "replace":
        covered = torch.full_like(images, REPLACE_GREY)
    else:
        covered = censor(images, verdicts.masks.to(images.device), mode, strength)
    return torch.where(verdicts.flags.to(images.device).view(-1, 1, 1, 1), covered, images)
