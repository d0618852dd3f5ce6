"""What a safety score found, per image of a batch: masks of the regions, a report, and censoring.

* :func:`detection_masks` - [B, H, W] masks: 1 inside the boxes a detector found (grown by a
  padding fraction), or the whole image for scores without boxes when the image is unsafe;
* :func:`detect_unsafe` - score a batch: the any-unsafe flag, per-image scores, masks and a
  readable report (the Detect Unsafe node);
* :func:`censor` - blur, pixelate or black out masked regions of an image batch;
* :func:`censor_detected` - detect with a score, then censor its boxes (the Censor node).

Images are ComfyUI IMAGE batches [B, H, W, C]; scores run on NCHW float copies without
gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import DetectedRegion, SafetyScore, image_to_nchw

CENSOR_MODES = ("blur", "pixelate", "black")


class CensorSettingsError(ValueError):
    """A censor setting outside what the censor can do (e.g. an unknown mode)."""


def detection_masks(detections: list[list[DetectedRegion]] | None, batch: int, height: int, width: int,
                    unsafe: torch.Tensor | None = None, pad: float = 0.0) -> torch.Tensor:
    """[B, H, W] masks: 1 inside detected boxes (or the whole image when unsafe and no boxes are known)."""
    masks = torch.zeros(batch, height, width)
    for b in range(batch):
        if detections is None:
            if unsafe is not None and bool(unsafe[b]):
                masks[b] = 1.0
            continue
        for d in detections[b]:
            x0, y0, x1, y1 = d.box
            px, py = (x1 - x0) * pad, (y1 - y0) * pad
            x0, y0 = max(0, int(x0 - px)), max(0, int(y0 - py))
            x1, y1 = min(width, int(round(x1 + px))), min(height, int(round(y1 + py)))
            masks[b, y0:y1, x0:x1] = 1.0
    return masks


@dataclass
class UnsafeReport:
    """The verdict on a batch: whether any image is unsafe, one score per image, [B, H, W] masks of the
    detected regions (whole images for scores without boxes) and a readable report."""
    any_unsafe: bool
    scores: list[float]
    masks: torch.Tensor
    report: str


def detect_unsafe(images: torch.Tensor, safety_score: SafetyScore) -> UnsafeReport:
    """Score every image of an IMAGE batch with `safety_score` (no gradients)."""
    nchw = image_to_nchw(images).float()
    with torch.no_grad():
        result = safety_score.evaluate(nchw)
    b, _, h, w = nchw.shape
    masks = detection_masks(result.detections, b, h, w, result.unsafe)
    scores = [float(s) for s in result.score.detach().cpu()]
    lines = [safety_score.describe()]
    for i, (score, unsafe) in enumerate(zip(scores, result.unsafe.tolist())):
        detail = f" - {result.details[i]}" if result.details else ""
        lines.append(f"image {i}: score {score:.4f} {'UNSAFE' if unsafe else 'safe'}{detail}")
    lines.append(f"{int(result.unsafe.sum())} of {b} images unsafe")
    return UnsafeReport(bool(result.unsafe.any()), scores, masks, "\n".join(lines))


def censor(images: torch.Tensor, masks: torch.Tensor, mode: str, strength: int) -> torch.Tensor:
    """Blur, pixelate or black out the masked regions of IMAGE [B,H,W,C] (masks [B,H,W])."""
    if mode not in CENSOR_MODES:
        raise CensorSettingsError(f"censor mode {mode!r}; expected one of {CENSOR_MODES}")
    nchw = images.movedim(-1, 1).float()
    h, w = nchw.shape[-2:]
    if masks.dim() == 2:
        masks = masks[None]
    if masks.dim() != 3 or tuple(masks.shape[-2:]) != (h, w) or masks.shape[0] not in (1, nchw.shape[0]):
        raise CensorSettingsError(f"masks must be [{nchw.shape[0]}, {h}, {w}] (or one [{h}, {w}] mask for the "
                                  f"whole batch) to censor images {list(images.shape)}; got {list(masks.shape)}")
    if mode == "black":
        covered = torch.zeros_like(nchw)
    elif mode == "pixelate":
        block = max(1, int(strength))
        small = F.interpolate(nchw, size=(max(1, h // block), max(1, w // block)), mode="area")
        covered = F.interpolate(small, size=(h, w), mode="nearest")
    else:
        radius = max(1, int(strength))
        k = 2 * radius + 1
        covered = F.avg_pool2d(F.pad(nchw, (radius,) * 4, mode="replicate"), k, stride=1)
        covered = F.avg_pool2d(F.pad(covered, (radius,) * 4, mode="replicate"), k, stride=1)
    m = masks.to(nchw).unsqueeze(1)
    return (nchw * (1 - m) + covered * m).movedim(1, -1).to(images.dtype)


def censor_detected(images: torch.Tensor, detector: SafetyScore, mode: str, strength: int,
                    padding: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Find regions with `detector` (a score that reports boxes, e.g. NudeNet), grow each box by `padding`
    of its size and censor them: (censored images, [B, H, W] masks, the detections of each image)."""
    nchw = image_to_nchw(images).float()
    with torch.no_grad():
        result = detector.evaluate(nchw)
    b, _, h, w = nchw.shape
    masks = detection_masks(result.detections, b, h, w, pad=padding)
    out = censor(images, masks.to(images.device), mode, strength)
    report = "\n".join(f"image {i}: {d}" for i, d in enumerate(result.details))
    return out, masks, report
