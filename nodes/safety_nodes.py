"""Safety scores as nodes (NudeNet, CLIP violence/artist, colour statistic), and Detect Unsafe / Censor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.v0_0_2 import io

from ..steering.safety import COLOUR_STATISTICS, ColourStatisticScore, to_nchw
from ..steering.safety import clip_scores
from ..steering.safety import nudenet
from .common import CATEGORY
from .paths import register_model_folder
from .types import SafetyScoreType

SAFETY_CATEGORY = f"{CATEGORY}/safety"
CENSOR_MODES = ("blur", "pixelate", "black")


register_model_folder(nudenet.MODEL_FOLDER, {".onnx"})
register_model_folder(clip_scores.MODEL_FOLDER, {".json", ".safetensors"})


def threshold_input(default: float, what: str) -> io.Float.Input:
    return io.Float.Input("threshold", default=default, min=-100.0, max=100.0, step=0.001,
                          tooltip=f"tau: an image is unsafe when its score is above this ({what}). STG only "
                                  "updates unsafe images; Detect Unsafe flags them.")


def label_inputs() -> list:
    return [
        io.Combo.Input("label_preset", options=list(nudenet.PRESET_NAMES), default="stg_nudity",
                       tooltip="NudeNet labels that count. stg_nudity: the four STG classes (exposed female "
                               "breast/genitalia, anus, male genitalia). all_exposed: every *_EXPOSED class. "
                               "all: all 18 labels. custom: the labels listed in custom_labels."),
        io.String.Input("custom_labels", default="", multiline=False,
                        tooltip="For label_preset = custom: NudeNet labels separated by commas, e.g. "
                                "FEMALE_BREAST_EXPOSED, BUTTOCKS_EXPOSED."),
        io.Float.Input("detection_threshold", default=nudenet.DEFAULT_DETECTION_THRESHOLD, min=0.0, max=1.0,
                       step=0.001, tooltip="A detection counts when its confidence reaches this (nudenet's "
                                           "own value is 0.25; the STG reference code uses 0.01)."),
    ]


class NudeNetScoreNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RSNudeNetScore",
            display_name="NudeNet Safety Score",
            category=SAFETY_CATEGORY,
            description="Nudity score: the nudenet package's 320n.onnx detector converted to torch "
                        "(differentiable), run at 320 px. Score = sum of the confidences of kept detections "
                        "with the chosen labels. The model comes from models/nudenet/320n.onnx or the "
                        "installed nudenet package.",
            inputs=[*label_inputs(), threshold_input(0.0, "a sum of confidences; 0 = any detection")],
            outputs=[SafetyScoreType.Output(display_name="safety_score")],
        )

    @classmethod
    def execute(cls, label_preset, custom_labels, detection_threshold, threshold) -> io.NodeOutput:
        labels = nudenet.resolve_labels(label_preset, custom_labels)
        return io.NodeOutput(nudenet.NudeNetScore(labels, detection_threshold, threshold))


def clip_model_input() -> io.Combo.Input:
    return io.Combo.Input("clip_model", options=clip_scores.list_clip_models(),
                          tooltip="A local CLIP model folder (Hugging Face layout: config.json + "
                                  "model.safetensors) in models/safety_clip. Never downloaded.")


class CLIPViolenceScoreNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RSCLIPViolenceScore",
            display_name="CLIP Violence Score",
            category=SAFETY_CATEGORY,
            description="Violence score: mean CLIP cosine similarity between the image and violence texts "
                        "(STG's violence safety function, negated so that high = unsafe).",
            inputs=[
                clip_model_input(),
                io.String.Input("violence_texts", default="\n".join(clip_scores.DEFAULT_VIOLENCE_TEXTS),
                                multiline=True, tooltip="One text per line (or comma separated)."),
                threshold_input(0.2, "a cosine similarity"),
            ],
            outputs=[SafetyScoreType.Output(display_name="safety_score")],
        )

    @classmethod
    def execute(cls, clip_model, violence_texts, threshold) -> io.NodeOutput:
        clip = clip_scores.load_clip(clip_model)
        return io.NodeOutput(clip_scores.CLIPViolenceScore(clip, clip_scores.split_texts(violence_texts),
                                                           threshold))


class CLIPArtistScoreNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RSCLIPArtistScore",
            display_name="CLIP Artist Style Score",
            category=SAFETY_CATEGORY,
            description="Artist-style score: cos(image, artist) - cos(image, \"art\") with a local CLIP "
                        "(STG's style-removal safety function, negated so that high = unsafe).",
            inputs=[
                clip_model_input(),
                io.String.Input("artist", default="Van Gogh", tooltip="The artist whose style to avoid."),
                io.String.Input("reference_text", default="art",
                                tooltip="The neutral text the artist similarity is compared with."),
                threshold_input(0.0, "a difference of cosine similarities"),
            ],
            outputs=[SafetyScoreType.Output(display_name="safety_score")],
        )

    @classmethod
    def execute(cls, clip_model, artist, reference_text, threshold) -> io.NodeOutput:
        clip = clip_scores.load_clip(clip_model)
        return io.NodeOutput(clip_scores.CLIPArtistScore(clip, artist, reference_text, threshold))


class ColourScoreNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RSColourStatisticScore",
            display_name="Colour Statistic Score",
            category=SAFETY_CATEGORY,
            description="An analytic score: the image mean of a colour statistic (e.g. redness = R - (G+B)/2). "
                        "Exact and cheap: for testing guidance, toy settings, or steering away from a colour.",
            inputs=[
                io.Combo.Input("statistic", options=list(COLOUR_STATISTICS), default="redness",
                               tooltip="brightness (luma), red, green, blue, or redness = R - (G+B)/2; "
                                       "pixel values 0..1."),
                threshold_input(0.0, "the statistic's image mean"),
            ],
            outputs=[SafetyScoreType.Output(display_name="safety_score")],
        )

    @classmethod
    def execute(cls, statistic, threshold) -> io.NodeOutput:
        return io.NodeOutput(ColourStatisticScore(statistic, threshold))


def detection_masks(detections, batch: int, height: int, width: int, unsafe=None, pad: float = 0.0) -> torch.Tensor:
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


class DetectUnsafe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RSDetectUnsafe",
            display_name="Detect Unsafe",
            category=SAFETY_CATEGORY,
            description="Score every image of a batch with a safety score: per-image scores, whether any "
                        "image is unsafe, masks of the detected regions (whole image for scores without "
                        "boxes) and a readable report.",
            inputs=[
                io.Image.Input("images", tooltip="The images to check (a batch)."),
                SafetyScoreType.Input("safety_score", tooltip="NudeNet, CLIP or colour score."),
            ],
            outputs=[
                io.Boolean.Output(display_name="any_unsafe", tooltip="True when at least one image is unsafe."),
                io.Float.Output(display_name="scores", is_output_list=True, tooltip="One score per image."),
                io.Mask.Output(display_name="masks", tooltip="Per image: detected regions (NudeNet) or the whole "
                                                             "image when unsafe (CLIP/colour scores)."),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, images, safety_score) -> io.NodeOutput:
        nchw = to_nchw(images).float()
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
        return io.NodeOutput(bool(result.unsafe.any()), scores, masks, "\n".join(lines))


def censor(images: torch.Tensor, masks: torch.Tensor, mode: str, strength: int) -> torch.Tensor:
    """Blur, pixelate or black out the masked regions of IMAGE [B,H,W,C] (masks [B,H,W])."""
    if mode not in CENSOR_MODES:
        raise ValueError(f"censor mode {mode!r}; expected one of {CENSOR_MODES}")
    nchw = images.movedim(-1, 1).float()
    h, w = nchw.shape[-2:]
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


class Censor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RSCensor",
            display_name="Censor (NudeNet)",
            category=SAFETY_CATEGORY,
            description="Find the chosen NudeNet labels in every image of a batch and blur, pixelate or black "
                        "out their boxes.",
            inputs=[
                io.Image.Input("images", tooltip="The images to censor (a batch)."),
                *label_inputs(),
                io.Combo.Input("mode", options=list(CENSOR_MODES), default="pixelate",
                               tooltip="blur: box blur; pixelate: coarse blocks; black: filled boxes."),
                io.Int.Input("strength", default=16, min=1, max=256,
                             tooltip="Blur radius or pixel block size, in image pixels (ignored by black)."),
                io.Float.Input("padding", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Grow each box by this fraction of its size on every side."),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Mask.Output(display_name="masks", tooltip="The censored regions."),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, images, label_preset, custom_labels, detection_threshold, mode, strength,
                padding) -> io.NodeOutput:
        labels = nudenet.resolve_labels(label_preset, custom_labels)
        score = nudenet.NudeNetScore(labels, detection_threshold, 0.0)
        nchw = to_nchw(images).float()
        with torch.no_grad():
            result = score.evaluate(nchw)
        b, _, h, w = nchw.shape
        masks = detection_masks(result.detections, b, h, w, pad=padding)
        out = censor(images, masks.to(images.device), mode, strength)
        report = "\n".join(f"image {i}: {d}" for i, d in enumerate(result.details))
        return io.NodeOutput(out, masks, report)


NODES = [NudeNetScoreNode, CLIPViolenceScoreNode, CLIPArtistScoreNode, ColourScoreNode, DetectUnsafe, Censor]
