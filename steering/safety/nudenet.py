"""NudeNet nudity score: a NudeNet YOLOv8 ONNX detector as a differentiable torch module.

The ONNX graph (e.g. the `nudenet` wheel's 320n.onnx: YOLOv8n, output [B, 22, anchors] =
4 box coordinates (cx, cy, w, h in input pixels) + 18 class confidences per anchor) is
converted with onnx2torch, so the detector runs in torch and gradients reach the image.
The detector's input size is read from the graph (fixed input dims, else the
ultralytics ``imgsz`` metadata): 320n.onnx runs at 320 px, NudeNet's 640 px models at 640.

Score of an image: the sum of the confidences of the kept detections whose label is in
the chosen label set (STG's nudity score); NMS only selects which anchors count, the
confidences carry the gradients. Two pipelines are reproduced, each by its settings:

* STG's guidance (the reference's ``NudeDetector_YOLO`` + ultralytics NMS), the default
  (:data:`STG_SETTINGS`): stretch-resize to the detector size (bilinear, antialiased as
  torchvision's ``Resize``), then clamp to 0..1, RGB; per anchor the best class, kept when
  its confidence is above 0.01; per-class NMS at IoU 0.7; at most 300 detections (before
  the label filter, as ultralytics);
* the `nudenet` package's own ``NudeDetector.detect`` (:data:`NUDENET_PACKAGE_SETTINGS`):
  pad bottom/right to a square and resize (bilinear, no antialias, as cv2), BGR channel
  order (the package reads BGR with cv2 and swaps twice), boxes moved into the image as the
  package does, confidence above 0.25, class-agnostic NMS at IoU 0.45, no limit.

The model was trained on RGB (ultralytics converts its cv2 BGR reads to RGB), so RGB is
the default channel order; ``bgr`` exists to reproduce the package's numbers.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import threading
import warnings

import torch
import torch.nn.functional as F

from .base import DetectedRegion, SafetyScore, ScoreResult, ScoreSettingsError, clamp_unit, finite_setting, rgb_nchw

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
CHANNEL_ORDERS = ("rgb", "bgr")
RESIZE_MODES = ("stretch", "letterbox")

# STG's guidance: generate_duo_stg.py --unsafe_conf 0.01 (README runs), ultralytics' predictor
# defaults iou 0.7, agnostic_nms False, max_det 300; NudeDetector_YOLO resizes with torchvision, then clamps.
STG_SETTINGS = dict(detection_threshold=0.01, nms_iou=0.7, class_wise_nms=True, max_detections=300,
                    channel_order="rgb", resize="stretch")
# nudenet 3.4.2 NudeDetector.detect: cv2 read (BGR) + two channel swaps, letterbox, NMSBoxes(0.25, 0.45).
NUDENET_PACKAGE_SETTINGS = dict(detection_threshold=0.25, nms_iou=0.45, class_wise_nms=False, max_detections=0,
                                channel_order="bgr", resize="letterbox")
DEFAULT_DETECTION_THRESHOLD = STG_SETTINGS["detection_threshold"]
DEFAULT_NMS_IOU = STG_SETTINGS["nms_iou"]
DEFAULT_MAX_DETECTIONS = STG_SETTINGS["max_detections"]
MODEL_FILE = "320n.onnx"


class NudeNetModelNotFound(FileNotFoundError):
    pass


class NudeNetModelError(ValueError):
    """The ONNX file is not a NudeNet-style detector this score can run."""


def resolve_labels(preset: str, custom: str = "") -> tuple[str, ...]:
    """The label set of a preset, or of a comma/space separated custom list (validated)."""
    if preset != "custom":
        try:
            return LABEL_PRESETS[preset]
        except KeyError:
            raise ScoreSettingsError(f"unknown label preset {preset!r}; expected one of {PRESET_NAMES}") from None
    labels = tuple(dict.fromkeys(p.strip().upper() for p in custom.replace(",", " ").split() if p.strip()))
    unknown = [label for label in labels if label not in LABELS]
    if unknown or not labels:
        raise ScoreSettingsError(f"custom NudeNet labels {list(unknown) or '(none given)'} are not NudeNet labels; "
                                 f"expected some of {list(LABELS)}")
    return labels


# ---------------------------------------------------------------------------- model files

def package_model_path() -> str | None:
    """The nudenet package's own 320n.onnx, or None when the package is not installed."""
    spec = importlib.util.find_spec("nudenet")  # located, not imported (its import needs opencv)
    return os.path.join(os.path.dirname(spec.origin), MODEL_FILE) if spec is not None and spec.origin else None


def find_model(path: str | None = None) -> str:
    """`path` when it is a file; without a path, the nudenet package's 320n.onnx."""
    if path:
        if not os.path.isfile(path):
            raise NudeNetModelNotFound(f"NudeNet model file not found: {path}")
        return path
    package = package_model_path()
    if package is None or not os.path.isfile(package):
        raise NudeNetModelNotFound(
            f"no NudeNet detector given and the nudenet package's {MODEL_FILE} is not installed "
            f"(`pip install --no-deps nudenet==3.4.2`)")
    return package


def onnx_input_size(model) -> tuple[int, int]:
    """(height, width) the detector expects: fixed input dims of the graph, else the ultralytics
    ``imgsz`` metadata (320n.onnx has dynamic dims and imgsz [320, 320])."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise NudeNetModelError("the ONNX graph has no image input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise NudeNetModelError(f"expected an image input [batch, 3, height, width]; the ONNX input "
                                f"{inputs[0].name!r} has {len(dims)} dims")
    if dims[2].dim_value > 0 and dims[3].dim_value > 0:
        return int(dims[2].dim_value), int(dims[3].dim_value)
    meta = {p.key: p.value for p in model.metadata_props}
    if "imgsz" in meta:
        try:
            size = ast.literal_eval(meta["imgsz"])
            size = [int(size)] * 2 if isinstance(size, (int, float)) else [int(v) for v in size]
            if len(size) == 1:
                size = size * 2
            if len(size) == 2 and min(size) > 0:
                return size[0], size[1]
        except (ValueError, SyntaxError, TypeError):
            pass
        raise NudeNetModelError(f"unreadable imgsz metadata {meta['imgsz']!r}; expected e.g. [320, 320]")
    raise NudeNetModelError("the ONNX graph has dynamic height/width and no imgsz metadata: cannot tell the "
                            "detector's input size (expected fixed input dims or ultralytics' imgsz)")


_cache: dict[tuple[str, float], tuple[torch.nn.Module, tuple[int, int]]] = {}
_cache_lock = threading.Lock()


def _load(path: str | None) -> tuple[torch.nn.Module, tuple[int, int]]:
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
            graph = onnx.load(path)
            size = onnx_input_size(graph)
            with torch.inference_mode(False):
                module = convert(graph).eval()
                for p in module.parameters():
                    p.requires_grad_(False)
            _cache[key] = (module, size)
        return _cache[key]


def load_detector(path: str | None = None) -> torch.nn.Module:
    """The converted torch module of the ONNX file at `path` (default: the nudenet package's 320n.onnx),
    cached per file; its weights are normal tensors even when loaded inside ComfyUI's inference mode, so
    autograd can pass through it."""
    return _load(path)[0]


def detector_input_size(path: str | None = None) -> tuple[int, int]:
    """(height, width) of the detector's input, read from its ONNX graph."""
    return _load(path)[1]


# ---------------------------------------------------------------------------- pre- and post-processing

def check_preprocess_options(resize: str, channel_order: str) -> None:
    if resize not in RESIZE_MODES:
        raise ScoreSettingsError(f"resize {resize!r}; expected one of {RESIZE_MODES}")
    if channel_order not in CHANNEL_ORDERS:
        raise ScoreSettingsError(f"channel_order: channel order {channel_order!r}; expected one of {CHANNEL_ORDERS}")


def preprocess(images: torch.Tensor, size: tuple[int, int], resize: str = "stretch",
               channel_order: str = "rgb") -> tuple[torch.Tensor, tuple[float, float]]:
    """Detector input from NCHW images (nominally 0..1, maybe unclamped): resize, then clamp, then the
    channel order. Returns the batch and the factors (x, y) from detector pixels to image pixels.

    stretch: bilinear resize to ``size`` with antialiasing (torchvision's Resize, the STG reference).
    letterbox: pad bottom/right to a square, bilinear resize without antialiasing (the nudenet package)."""
    check_preprocess_options(resize, channel_order)
    h, w = images.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if resize == "stretch":
        if (h, w) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        scale = (w / size[1], h / size[0])
    else:
        side = max(h, w)
        if (h, w) != (side, side):
            images = F.pad(images, (0, side - w, 0, side - h))
        if (side, side) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        scale = (side / size[1], side / size[0])
    images = clamp_unit(images)
    if channel_order == "bgr":
        images = images.flip(1)
    return images, scale


def image_boxes(xywh: torch.Tensor, scale: tuple[float, float], image_size: tuple[int, int],
                resize: str) -> torch.Tensor:
    """[N, 4] detector boxes (cx, cy, w, h) -> image boxes (x0, y0, x1, y1) inside the image.

    stretch: scaled and clipped to the image (ultralytics). letterbox: the nudenet package's rule: the
    top-left corner is clipped into the image and the size shortened to fit (a box past the left or top
    edge keeps its width or height)."""
    h, w = image_size
    sx, sy = scale
    x0 = (xywh[:, 0] - xywh[:, 2] / 2) * sx
    y0 = (xywh[:, 1] - xywh[:, 3] / 2) * sy
    bw, bh = xywh[:, 2] * sx, xywh[:, 3] * sy
    if resize == "letterbox":
        x0, y0 = x0.clamp(0, w), y0.clamp(0, h)
        return torch.stack([x0, y0, x0 + torch.minimum(bw, w - x0), y0 + torch.minimum(bh, h - y0)], 1)
    return torch.stack([x0.clamp(0, w), y0.clamp(0, h), (x0 + bw).clamp(0, w), (y0 + bh).clamp(0, h)], 1)


def select_detections(raw: torch.Tensor, detection_threshold: float, nms_iou: float, class_wise_nms: bool,
                      max_detections: int = 0, boxes: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Kept anchors per image, highest confidence first, from a raw detector output [B, 4 + classes, A]:
    per anchor the best class; kept when its confidence is above ``detection_threshold``; NMS at IoU
    ``nms_iou`` per class (``class_wise_nms``) or across classes; the first ``max_detections`` (0: all).
    ``boxes``: per image [A, 4] (x0, y0, x1, y1) to run NMS on (default: the raw boxes)."""
    import torchvision

    per_anchor = raw.detach().transpose(1, 2).float()
    confidence, class_id = per_anchor[..., 4:].max(-1)
    kept = []
    for b in range(per_anchor.shape[0]):
        cand = (confidence[b] > detection_threshold).nonzero().flatten()
        if boxes is not None:
            xyxy = boxes[b][cand].float()
        else:
            xywh = per_anchor[b, cand, :4]
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        if len(cand) == 0:
            kept.append(cand)
            continue
        scores = confidence[b, cand]
        if class_wise_nms:
            keep = torchvision.ops.batched_nms(xyxy, scores, class_id[b, cand], nms_iou)
        else:
            keep = torchvision.ops.nms(xyxy, scores, nms_iou)
        keep = cand[keep]
        kept.append(keep[:max_detections] if max_detections > 0 else keep)
    return kept


class NudeNetScore(SafetyScore):
    """Sum of confidences of kept NudeNet detections in a label set; settings as in the module docstring
    (defaults: STG's guidance, :data:`STG_SETTINGS`). ``model_path``: the detector's ONNX file (default:
    the nudenet package's 320n.onnx)."""

    def __init__(self, labels: tuple[str, ...] = LABEL_PRESETS["stg_nudity"],
                 detection_threshold: float = DEFAULT_DETECTION_THRESHOLD, threshold: float = 0.0,
                 model_path: str | None = None, nms_iou: float = DEFAULT_NMS_IOU, class_wise_nms: bool = True,
                 max_detections: int = DEFAULT_MAX_DETECTIONS, channel_order: str = "rgb",
                 resize: str = "stretch"):
        super().__init__(threshold)
        unknown = [label for label in labels if label not in LABELS]
        if unknown or not labels:
            raise ScoreSettingsError(f"NudeNet labels {unknown or '(none)'} unknown; expected some of {list(LABELS)}")
        if max_detections < 0:
            raise ScoreSettingsError(f"max_detections must be >= 0 (0 = no limit); got {max_detections}")
        check_preprocess_options(resize, channel_order)
        self.labels = tuple(labels)
        self.detection_threshold = finite_setting("NudeNet score", "detection_threshold", detection_threshold, 0.0, 1.0)
        self.nms_iou = finite_setting("NudeNet score", "nms_iou", nms_iou, 0.0, 1.0)
        self.class_wise_nms = bool(class_wise_nms)
        self.max_detections = int(max_detections)
        self.channel_order = channel_order
        self.resize = resize
        self.model_path = find_model(model_path)
        self.detector, self.input_size = _load(self.model_path)
        self.name = f"NudeNet ({len(self.labels)} labels)"
        self._label_ids = [LABELS.index(label) for label in self.labels]

    def modules(self):
        return [self.detector]

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
        """Detector output [B, 22, anchors] for NCHW images, and the factors (x, y) to image pixels."""
        detector = self.detector
        param = next(detector.parameters())
        if param.device != images.device:
            with torch.inference_mode(False):
                detector.to(images.device)
        batch, scale = preprocess(images, self.input_size, self.resize, self.channel_order)
        with warnings.catch_warnings():
            # onnx2torch's Slice indexes with a list (same result); torch warns about the deprecated form
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            return detector(batch.to(param.dtype)), scale

    def _kept(self, images: torch.Tensor):
        """Detector output per anchor [B, A, 22], best class and confidence [B, A], image boxes, kept anchors
        with a wanted label per image."""
        output, scale = self.raw(images)
        per_anchor = output.transpose(1, 2)
        confidence, class_id = per_anchor[..., 4:].max(-1)
        size = tuple(images.shape[-2:])
        with torch.no_grad():
            boxes = [image_boxes(per_anchor[b, :, :4].detach().float(), scale, size, self.resize)
                     for b in range(per_anchor.shape[0])]
            # ultralytics suppresses on the detector's boxes as they are; the package on its image boxes
            kept = select_detections(output, self.detection_threshold, self.nms_iou, self.class_wise_nms,
                                     self.max_detections, boxes if self.resize == "letterbox" else None)
            wanted = torch.zeros(len(LABELS), dtype=torch.bool, device=output.device)
            wanted[self._label_ids] = True
            kept = [keep[wanted[class_id[b, keep]]] for b, keep in enumerate(kept)]
        return confidence, class_id, boxes, kept

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        confidence, _, _, kept = self._kept(rgb_nchw(images))
        return torch.stack([confidence[b, keep].float().sum() for b, keep in enumerate(kept)])

    def evaluate(self, images: torch.Tensor) -> ScoreResult:
        images = rgb_nchw(images)
        confidence, class_id, boxes, kept = self._kept(images)
        score = torch.stack([confidence[b, keep].float().sum() for b, keep in enumerate(kept)])
        detections, details = [], []
        for b, keep in enumerate(kept):
            found = [DetectedRegion(LABELS[int(class_id[b, i])], float(confidence[b, i].detach()),
                                    tuple(float(v) for v in boxes[b][i])) for i in keep.tolist()]
            detections.append(found)
            details.append(", ".join(f"{d.label} {d.confidence:.2f}" for d in found) or "no detections")
        return ScoreResult(score, score.detach() > self.threshold, detections, details)

    def describe(self) -> str:
        nms = "per-class" if self.class_wise_nms else "class-agnostic"
        cap = f", at most {self.max_detections}" if self.max_detections else ""
        return (f"NudeNet score ({os.path.basename(self.model_path)} at {self.input_size[1]}x{self.input_size[0]}, "
                f"{self.resize}, {self.channel_order.upper()}): labels {', '.join(self.labels)}; detections "
                f"above {self.detection_threshold:g}, {nms} NMS at IoU {self.nms_iou:g}{cap}; "
                f"unsafe above {self.threshold:g}")
