"""Safety scores as nodes (NudeNet, CLIP violence/artist, colour statistic), and Detect Unsafe / Censor."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..operator_policy.graph import MEASURING
from ..steering.safety import COLOUR_STATISTICS
from ..steering.safety import clip_scores
from ..steering.safety import nudenet, registry
from ..steering.safety.censor import CENSOR_MODES, censor, censor_detected, detect_unsafe
from . import paths
from .common import CATEGORY, schema
from .types import SafetyScoreType

SAFETY_CATEGORY = f"{CATEGORY}/safety"
# Censor finds boxes after the fact, as the nudenet package does (its thresholds and NMS), but feeds RGB.
CENSOR_SETTINGS = {**nudenet.NUDENET_PACKAGE_SETTINGS, "channel_order": "rgb"}


def threshold_input(default: float, what: str) -> io.Float.Input:
    return io.Float.Input("threshold", display_name="unsafe above (threshold)", default=default, min=-100.0,
                          max=100.0, step=0.001,
                          tooltip=f"Unsafe above: an image is unsafe when its score is strictly above this ({what}). "
                                  "STG only updates unsafe images; Detect Unsafe flags them. The STG paper's tau is "
                                  "the opposite bar (its safety value g = -score must reach tau to count as safe "
                                  "enough; raising tau guides more): threshold = -tau.")


def label_inputs(settings: dict) -> list:
    return [
        io.Combo.Input("label_preset", options=list(nudenet.PRESET_NAMES), default="stg_nudity",
                       tooltip="NudeNet labels that count. stg_nudity: the four STG classes (exposed female "
                               "breast/genitalia, anus, male genitalia). all_exposed: every *_EXPOSED class. "
                               "all: all 18 labels. custom: the labels listed in custom_labels."),
        io.String.Input("custom_labels", default="", multiline=False,
                        tooltip="For label_preset = custom: NudeNet labels separated by commas, e.g. "
                                "FEMALE_BREAST_EXPOSED, BUTTOCKS_EXPOSED."),
        io.Float.Input("detection_threshold", default=settings["detection_threshold"], min=0.0, max=1.0,
                       step=0.001, tooltip="A detection counts when its confidence is above this. STG's guidance "
                                           "uses 0.01 (so the gradient does not vanish below the nudenet "
                                           "package's 0.25); the package itself keeps detections above 0.25."),
    ]


def detector_inputs(settings: dict) -> list:
    """Inputs added after the original ones: optional with defaults, so saved workflows and API prompts
    from before keep working (and keep their widget order)."""
    return [
        io.Float.Input("nms_iou", optional=True, default=settings["nms_iou"], min=0.0, max=1.0, step=0.01,
                       tooltip="Non-maximum suppression: of two boxes overlapping by more than this IoU, only the "
                               "more confident counts. STG (ultralytics) 0.7; the nudenet package 0.45."),
        io.Boolean.Input("class_wise_nms", optional=True, default=settings["class_wise_nms"],
                         tooltip="On: boxes only suppress boxes of their own class (STG, ultralytics). Off: "
                                 "class-agnostic (the nudenet package), so e.g. a FACE or BELLY box can hide an "
                                 "exposed-class box."),
        io.Int.Input("max_detections", optional=True, default=settings["max_detections"], min=0, max=10000,
                     tooltip="Keep at most this many detections per image, most confident first, counted over "
                             "all classes before the label filter (STG, ultralytics: 300). 0 = no limit (the "
                             "nudenet package)."),
        io.Combo.Input("channel_order", optional=True, options=list(nudenet.CHANNEL_ORDERS), default=settings["channel_order"],
                       tooltip="rgb: what the detector was trained on (and what STG feeds). bgr: reproduces the "
                               "nudenet package's own numbers (it feeds BGR)."),
        io.Combo.Input("resize", optional=True, options=list(nudenet.RESIZE_MODES), default=settings["resize"],
                       tooltip="How the image reaches the detector's input size, before the clamp to 0..1. "
                               "stretch: antialiased bilinear resize (STG's torchvision Resize). letterbox: pad "
                               "bottom/right to a square, bilinear without antialiasing, boxes fitted into the "
                               "image as the nudenet package does."),
        io.Combo.Input("model_name", optional=True, options=paths.list_nudenet_models(), default=nudenet.MODEL_FILE,
                       tooltip="The NudeNet ONNX detector: 320n.onnx (from models/nudenet or the installed nudenet "
                               "package) or any NudeNet .onnx in models/nudenet (e.g. the 640 px 640m.onnx). Its "
                               "input size is read from the ONNX graph."),
    ]


def nudenet_score(labels, detection_threshold, threshold, nms_iou, class_wise_nms, max_detections, channel_order,
                  resize, model_name) -> nudenet.NudeNetScore:
    return registry.build("nudenet", threshold, dict(
        labels=labels, detection_threshold=detection_threshold, nms_iou=nms_iou, class_wise_nms=class_wise_nms,
        max_detections=max_detections, channel_order=channel_order, resize=resize, model_name=model_name), paths)


class NudeNetScoreNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSNudeNetScore",
            search_aliases=["nudenet", "nsfw", "nudity", "nude", "unsafe", "safety", "score", "detector"],
            display_name="NudeNet Safety Score",
            category=SAFETY_CATEGORY,
            description="Nudity score: a NudeNet ONNX detector (320n.onnx from the nudenet package, or any "
                        "NudeNet .onnx in models/nudenet) converted to torch (differentiable), run at the input "
                        "size its graph states. Score = sum of the confidences of kept detections with the "
                        "chosen labels. Defaults reproduce STG's guidance: detections above 0.01, per-class NMS "
                        "at IoU 0.7, at most 300, RGB, stretch-resize then clamp.",
            inputs=[*label_inputs(nudenet.STG_SETTINGS),
                    threshold_input(0.0, "a sum of confidences; 0 = any kept detection, as STG's reference"),
                    *detector_inputs(nudenet.STG_SETTINGS)],
            outputs=[SafetyScoreType.Output(display_name="safety_score", tooltip="The score, for STG or Detect Unsafe (high = unsafe).")],
        )

    @classmethod
    def execute(cls, label_preset, custom_labels, detection_threshold, threshold, nms_iou=nudenet.DEFAULT_NMS_IOU,
                class_wise_nms=True, max_detections=nudenet.DEFAULT_MAX_DETECTIONS, channel_order="rgb",
                resize="stretch", model_name=nudenet.MODEL_FILE) -> io.NodeOutput:
        labels = nudenet.resolve_labels(label_preset, custom_labels)
        return io.NodeOutput(nudenet_score(labels, detection_threshold, threshold, nms_iou, class_wise_nms,
                                           max_detections, channel_order, resize, model_name))


def clip_model_input() -> io.Combo.Input:
    return io.Combo.Input("clip_model", options=paths.list_clip_models(),
                          tooltip="A local CLIP model folder (Hugging Face layout: config.json + "
                                  "model.safetensors) in models/safety_clip. Never downloaded.")


def load_clip(clip_model: str) -> clip_scores.LocalCLIP:
    return clip_scores.load_clip(paths.clip_model_path(clip_model))


class CLIPViolenceScoreNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSCLIPViolenceScore",
            search_aliases=["violence", "gore", "unsafe", "safety", "clip", "score"],
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
            outputs=[SafetyScoreType.Output(display_name="safety_score", tooltip="The score, for STG or Detect Unsafe (high = unsafe).")],
        )

    @classmethod
    def validate_inputs(cls, clip_model):
        return paths.check_clip_model(clip_model)

    @classmethod
    def execute(cls, clip_model, violence_texts, threshold) -> io.NodeOutput:
        return io.NodeOutput(registry.build("clip_violence", threshold, dict(
            clip_model=clip_model, texts=clip_scores.split_texts(violence_texts)), paths))


class CLIPArtistScoreNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSCLIPArtistScore",
            search_aliases=["artist", "style", "copyright", "clip", "safety", "score"],
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
            outputs=[SafetyScoreType.Output(display_name="safety_score", tooltip="The score, for STG or Detect Unsafe (high = unsafe).")],
        )

    @classmethod
    def validate_inputs(cls, clip_model):
        return paths.check_clip_model(clip_model)

    @classmethod
    def execute(cls, clip_model, artist, reference_text, threshold) -> io.NodeOutput:
        return io.NodeOutput(registry.build("clip_artist", threshold, dict(
            clip_model=clip_model, artist=artist, reference_text=reference_text), paths))


class ColourScoreNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSColourStatisticScore",
            search_aliases=["colour", "color", "statistic", "safety", "score"],
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
            outputs=[SafetyScoreType.Output(display_name="safety_score", tooltip="The score, for STG or Detect Unsafe (high = unsafe).")],
        )

    @classmethod
    def execute(cls, statistic, threshold) -> io.NodeOutput:
        return io.NodeOutput(registry.build("colour", threshold, {"statistic": statistic}, paths))


class DetectUnsafe(io.ComfyNode):
    POLICY_ROLE = MEASURING   # reads images as generated; releases flags, scores, box masks and a report
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSDetectUnsafe",
            search_aliases=["detect", "unsafe", "nsfw", "nudity", "nudenet", "censor", "safety", "filter",
                            "moderation"],
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
                io.String.Output(display_name="report", tooltip="The score's settings and each image's score."),
            ],
        )

    @classmethod
    def execute(cls, images, safety_score) -> io.NodeOutput:
        found = detect_unsafe(images, safety_score)
        return io.NodeOutput(found.any_unsafe, found.scores, found.masks, found.report)


class Censor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSCensor",
            search_aliases=["censor", "blur", "pixelate", "nsfw", "nudity", "unsafe", "nudenet", "safety", "filter",
                            "moderation"],
            display_name="Censor (NudeNet)",
            category=SAFETY_CATEGORY,
            description="Find the chosen NudeNet labels in every image of a batch and blur, pixelate or black "
                        "out their boxes. Defaults: the nudenet package's detection settings (above 0.25, "
                        "class-agnostic NMS at IoU 0.45, letterbox), fed RGB.",
            inputs=[
                io.Image.Input("images", tooltip="The images to censor (a batch)."),
                *label_inputs(CENSOR_SETTINGS),
                io.Combo.Input("mode", options=list(CENSOR_MODES), default="pixelate",
                               tooltip="blur: box blur; pixelate: coarse blocks; black: filled boxes."),
                io.Int.Input("strength", default=16, min=1, max=256,
                             tooltip="Blur radius or pixel block size, in image pixels (ignored by black)."),
                io.Float.Input("padding", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Grow each box by this fraction of its size on every side."),
                *detector_inputs(CENSOR_SETTINGS),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The images with the found boxes censored."),
                io.Mask.Output(display_name="masks", tooltip="The censored regions."),
                io.String.Output(display_name="report", tooltip="The detections of each image."),
            ],
        )

    @classmethod
    def execute(cls, images, label_preset, custom_labels, detection_threshold, mode, strength, padding,
                nms_iou=CENSOR_SETTINGS["nms_iou"], class_wise_nms=CENSOR_SETTINGS["class_wise_nms"],
                max_detections=CENSOR_SETTINGS["max_detections"], channel_order="rgb",
                resize=CENSOR_SETTINGS["resize"], model_name=nudenet.MODEL_FILE) -> io.NodeOutput:
        labels = nudenet.resolve_labels(label_preset, custom_labels)
        score = nudenet_score(labels, detection_threshold, 0.0, nms_iou, class_wise_nms, max_detections,
                              channel_order, resize, model_name)
        return io.NodeOutput(*censor_detected(images, score, mode, strength, padding))


class CensorRegions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSCensorRegions",
            search_aliases=["censor", "blur", "pixelate", "mask", "nsfw", "unsafe", "safety"],
            display_name="Censor Regions",
            category=SAFETY_CATEGORY,
            description="Blur, pixelate or black out the masked regions of every image: e.g. the masks of "
                        "Detect Unsafe, which are the detected boxes (NudeNet) or the whole image when it is "
                        "unsafe (CLIP, colour and ToyWorld scores). Images with an empty mask are unchanged.",
            inputs=[
                io.Image.Input("images", tooltip="The images to censor (a batch)."),
                io.Mask.Input("masks", tooltip="One mask per image (or one for all), 1 where to censor."),
                io.Combo.Input("mode", options=list(CENSOR_MODES), default="pixelate",
                               tooltip="blur: box blur; pixelate: coarse blocks; black: filled."),
                io.Int.Input("strength", default=16, min=1, max=256,
                             tooltip="Blur radius or pixel block size, in image pixels (ignored by black)."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The images with the masked regions censored.")],
        )

    @classmethod
    def execute(cls, images, masks, mode, strength) -> io.NodeOutput:
        return io.NodeOutput(censor(images, masks, mode, strength))


NODES = [NudeNetScoreNode, CLIPViolenceScoreNode, CLIPArtistScoreNode, ColourScoreNode, DetectUnsafe, Censor,
         CensorRegions]
