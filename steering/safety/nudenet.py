"""NudeNet nudity score: the `nudenet` wheel's 320n.onnx detector as a differentiable torch module.

The ONNX graph (YOLOv8n, 320 px input, output [B, 22, 2100] = 4 box coordinates
(cx, cy, w, h in input pixels) + 18 class confidences per anchor) is converted with
onnx2torch, so the detector runs in torch and gradients reach the input image.

Detections follow the nudenet package's own post-processing: per anchor the best of
the 18 classes, kept when its confidence reaches the detection threshold, then
class-agnostic non-maximum suppression (IoU 0.45). The score of an image is the sum
of the confidences of kept detections whose label is in the chosen label set (STG's
nudity score); NMS only selects which anchors count, the confidences carry gradients.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import warnings

import torch
import torch.nn.functional as F

from .base import Detection, SafetyScore, ScoreResult, to_nchw

LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
LABEL_PRESETS: dict[str, tuple[str, ...]] = {
    # STG reference: class ids 3, 4, 6, 14
    "stg_nudity": ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "ANUS_EXPOSED", "MALE_GENITALIA_EXPOSED"),
    "all_exposed": tuple(label for label in LABELS if label.endswith("_EXPOSED")),
    "all": LABELS,
}
PRESET_NAMES = (*LABEL_PRESETS, "custom")
INPUT_SIZE = 320
NMS_IOU = 0.45
DEFAULT_DETECTION_THRESHOLD = 0.25  # what the nudenet package keeps (0.2 pre-filter, 0.25 in NMS)
MODEL_FILE = "320n.onnx"
MODEL_FOLDER = "nudenet"


class NudeNetModelNotFound(FileNotFoundError):
    pass


def resolve_labels(preset: str, custom: str = "") -> tuple[str, ...]:
    """The label set of a preset, or of a comma/space separated custom list (validated)."""
    if preset != "custom":
        try:
            return LABEL_PRESETS[preset]
        except KeyError:
            raise ValueError(f"unknown label preset {preset!r}; expected one of {PRESET_NAMES}") from None
    labels = tuple(dict.fromkeys(p.strip().upper() for p in custom.replace(",", " ").split() if p.strip()))
    unknown = [label for label in labels if label not in LABELS]
    if unknown or not labels:
        raise ValueError(f"custom NudeNet labels {list(unknown) or '(none given)'} are not NudeNet labels; "
                         f"expected some of {list(LABELS)}")
    return labels


def candidate_model_paths() -> list[str]:
    """Where the detector is looked for, in order: ComfyUI's models/nudenet folders, then the nudenet package."""
    paths = []
    try:
        import folder_paths

        folders = folder_paths.folder_names_and_paths.get(MODEL_FOLDER, ([os.path.join(folder_paths.models_dir,
                                                                                        MODEL_FOLDER)], set()))[0]
        paths += [os.path.join(folder, MODEL_FILE) for folder in folders]
    except ImportError:
        pass
    spec = importlib.util.find_spec("nudenet")  # located, not imported (its import needs opencv)
    if spec is not None and spec.origin:
        paths.append(os.path.join(os.path.dirname(spec.origin), MODEL_FILE))
    else:
        paths.append("<the nudenet package (pip install --no-deps nudenet): not installed>")
    return paths


def find_model(path: str | None = None) -> str:
    if path:
        if not os.path.isfile(path):
            raise NudeNetModelNotFound(f"NudeNet model file not found: {path}")
        return path
    candidates = candidate_model_paths()
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise NudeNetModelNotFound(
        f"NudeNet detector {MODEL_FILE} not found; looked in: {candidates}. Install the nudenet package "
        f"(`pip install --no-deps nudenet==3.4.2`) or put {MODEL_FILE} into ComfyUI's models/{MODEL_FOLDER} folder.")


_cache: dict[tuple[str, float], torch.nn.Module] = {}
_cache_lock = threading.Lock()


def load_detector(path: str | None = None) -> torch.nn.Module:
    """The converted torch module (cached per file); its weights are normal tensors even when
    loaded inside ComfyUI's inference mode, so autograd can pass through it."""
    path = find_model(path)
    key = (os.path.realpath(path), os.path.getmtime(path))
    with _cache_lock:
        if key not in _cache:
            try:
                import onnx
                from onnx2torch import convert
            except ImportError as e:
                raise ImportError(f"the NudeNet score needs the onnx and onnx2torch packages ({e}); "
                                  "pip install onnx onnx2torch") from e
            with torch.inference_mode(False):
                module = convert(onnx.load(path)).eval()
                for p in module.parameters():
                    p.requires_grad_(False)
            _cache[key] = module
        return _cache[key]


def letterbox(images: torch.Tensor, size: int = INPUT_SIZE) -> tuple[torch.Tensor, float]:
    """Pad NCHW images at the bottom/right to a square and resize to size x size (as nudenet does);
    returns the batch and the factor from model pixels to image pixels."""
    h, w = images.shape[-2:]
    side = max(h, w)
    if (h, w) != (side, side):
        images = F.pad(images, (0, side - w, 0, side - h))
    if side != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images, side / size


def _box_iou_nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    import torchvision

    return torchvision.ops.nms(boxes.float(), scores.float(), iou)


class NudeNetScore(SafetyScore):
    """Sum of confidences of kept NudeNet detections in a label set."""

    def __init__(self, labels: tuple[str, ...] = LABEL_PRESETS["stg_nudity"],
                 detection_threshold: float = DEFAULT_DETECTION_THRESHOLD, threshold: float = 0.0,
                 model_path: str | None = None):
        super().__init__(threshold)
        unknown = [label for label in labels if label not in LABELS]
        if unknown or not labels:
            raise ValueError(f"NudeNet labels {unknown or '(none)'} unknown; expected some of {list(LABELS)}")
        self.labels = tuple(labels)
        self.detection_threshold = float(detection_threshold)
        self.model_path = find_model(model_path)
        self.detector = load_detector(self.model_path)
        self.name = f"NudeNet ({len(self.labels)} labels)"
        self._label_ids = [LABELS.index(label) for label in self.labels]

    def modules(self):
        return [self.detector]

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Detector output [B, 22, anchors] for NCHW images in 0..1, and the pixel scale factor."""
        detector = self.detector
        param = next(detector.parameters())
        if param.device != images.device:
            with torch.inference_mode(False):
                detector.to(images.device)
        batch, scale = letterbox(images)
        with warnings.catch_warnings():
            # onnx2torch's Slice indexes with a list (same result); torch warns about the deprecated form
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            return detector(batch.to(param.dtype)), scale

    def _kept(self, images: torch.Tensor):
        """Detector output per anchor [B, A, 22], best class and confidence [B, A], kept anchors per image."""
        output, scale = self.raw(images)
        per_anchor = output.transpose(1, 2)
        confidence, class_id = per_anchor[..., 4:].max(-1)
        wanted = torch.zeros(len(LABELS), dtype=torch.bool, device=output.device)
        wanted[self._label_ids] = True
        kept = []
        with torch.no_grad():
            for b in range(per_anchor.shape[0]):
                cand = (confidence[b] >= self.detection_threshold).nonzero().flatten()
                xywh = per_anchor[b, cand, :4].float()
                xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
                keep = cand[_box_iou_nms(xyxy, confidence[b, cand], NMS_IOU)] if len(cand) else cand
                kept.append(keep[wanted[class_id[b, keep]]])
        return per_anchor, confidence, class_id, kept, scale

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        _, confidence, _, kept, _ = self._kept(to_nchw(images))
        return torch.stack([confidence[b, keep].float().sum() for b, keep in enumerate(kept)])

    def evaluate(self, images: torch.Tensor) -> ScoreResult:
        images = to_nchw(images)
        per_anchor, confidence, class_id, kept, scale = self._kept(images)
        h, w = images.shape[-2:]
        score = torch.stack([confidence[b, keep].float().sum() for b, keep in enumerate(kept)])
        detections, details = [], []
        for b, keep in enumerate(kept):
            found = []
            for index in keep.tolist():
                cx, cy, bw, bh = (float(v) * scale for v in per_anchor[b, index, :4].detach())
                box = (max(0.0, cx - bw / 2), max(0.0, cy - bh / 2), min(float(w), cx + bw / 2),
                       min(float(h), cy + bh / 2))
                found.append(Detection(LABELS[int(class_id[b, index])], float(confidence[b, index].detach()), box))
            detections.append(found)
            details.append(", ".join(f"{d.label} {d.confidence:.2f}" for d in found) or "no detections")
        return ScoreResult(score, score.detach() > self.threshold, detections, details)

    def describe(self) -> str:
        return (f"NudeNet score: labels {', '.join(self.labels)}; detection threshold "
                f"{self.detection_threshold:g}; unsafe above {self.threshold:g}")
