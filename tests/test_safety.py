"""Safety scores: the converted NudeNet detector against onnxruntime, gradients in inference mode,
model lookup, CLIP scores from a local folder, and the Detect Unsafe / Censor nodes in real prompts."""
from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch

from comfy_execution.graph_utils import GraphBuilder
from devtools.session import PromptError

MAX_ABS_DIFF = {}


def onnx_path() -> str:
    spec = importlib.util.find_spec("nudenet")
    if spec is None:
        pytest.skip("the nudenet package is not installed (scripts/setup.sh installs it)")
    return os.path.join(os.path.dirname(spec.origin), "320n.onnx")


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # onnx2torch Slice, harmless
def test_converted_nudenet_matches_onnxruntime(nudenet):
    """Same inputs, same outputs: boxes (pixels) and the 18 class confidences."""
    import onnxruntime

    path = onnx_path()
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 10, 10, generator=g), size=(320, 320),
                                             mode="bilinear")
    batch = torch.cat([torch.rand(2, 3, 320, 320, generator=g), smooth])
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    expected = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0])
    with torch.inference_mode():
        got = nudenet.load_detector(path)(batch)
    assert got.shape == expected.shape == (4, 22, 2100)
    box_diff = float((got[:, :4] - expected[:, :4]).abs().max())
    class_diff = float((got[:, 4:] - expected[:, 4:]).abs().max())
    MAX_ABS_DIFF.update(boxes=box_diff, classes=class_diff)
    print(f"\nconverted NudeNet vs onnxruntime: max abs diff boxes {box_diff:.3g} px, classes {class_diff:.3g}")
    assert box_diff < 2e-3 and class_diff < 1e-4, MAX_ABS_DIFF


def test_nudenet_score_differentiable_in_inference_mode(nudenet):
    """Built inside the executor's inference mode, the score still gives image gradients; the score is
    the sum of the kept detections' confidences."""
    with torch.inference_mode():
        score = nudenet.NudeNetScore(nudenet.LABELS, detection_threshold=0.0005, threshold=0.0)
        frozen = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(False), torch.enable_grad():
        images = frozen.clone().requires_grad_(True)
        result = score.evaluate(images)
        assert result.score.shape == (2,) and bool((result.score > 0).all())
        (grad,) = torch.autograd.grad(result.score.sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    for b in range(2):
        assert float(result.score[b].detach()) == pytest.approx(sum(d.confidence for d in result.detections[b]), rel=1e-5)
        for d in result.detections[b]:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= 128 and 0 <= y0 <= y1 <= 96
    stg_only = nudenet.NudeNetScore(detection_threshold=0.0005)
    with torch.no_grad():
        subset = stg_only.evaluate(frozen)
    assert all(d.label in nudenet.LABEL_PRESETS["stg_nudity"] for ds in subset.detections for d in ds)
    assert bool((subset.score <= result.score + 1e-6).all())


def test_label_presets(nudenet):
    assert nudenet.resolve_labels("stg_nudity") == ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED",
                                                    "ANUS_EXPOSED", "MALE_GENITALIA_EXPOSED")
    assert [nudenet.LABELS.index(x) for x in nudenet.resolve_labels("stg_nudity")] == [3, 4, 6, 14]
    assert all(x.endswith("_EXPOSED") for x in nudenet.resolve_labels("all_exposed"))
    assert nudenet.resolve_labels("custom", "buttocks_exposed, FACE_FEMALE") == ("BUTTOCKS_EXPOSED", "FACE_FEMALE")
    with pytest.raises(ValueError, match="NOT_A_LABEL"):
        nudenet.resolve_labels("custom", "not_a_label")


def test_nudenet_model_lookup(nudenet, paths, tmp_path, monkeypatch):
    """models/nudenet first, then the nudenet package; a clear error lists both when neither has it.
    Without a path the score's detector is the package's."""
    import importlib.util

    import folder_paths

    source = onnx_path()
    folder = tmp_path / "nudenet"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "nudenet", ([str(folder)], {".onnx"}))
    assert paths.nudenet_model_path("320n.onnx") == source                       # from the package
    assert nudenet.find_model() == source
    shutil.copy(source, folder / "320n.onnx")
    assert paths.nudenet_model_path("320n.onnx") == str(folder / "320n.onnx")    # the models folder wins
    (folder / "320n.onnx").unlink()
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", lambda name: None)           # no nudenet package
        with pytest.raises(FileNotFoundError) as info:
            paths.nudenet_model_path("320n.onnx")
    message = str(info.value)
    assert str(folder) in message and "nudenet package" in message and "320n.onnx" in message
    with pytest.raises(FileNotFoundError, match="expected a file name"):
        paths.nudenet_model_path("../320n.onnx")


def colour_batch(g: GraphBuilder):
    red = g.node("EmptyImage", width=64, height=48, batch_size=1, color=0xFF0000)
    blue = g.node("EmptyImage", width=64, height=48, batch_size=1, color=0x0000FF)
    return g.node("ImageBatch", image1=red.out(0), image2=blue.out(0))


def test_detect_unsafe_node(comfy):
    """Per-image scores, any-unsafe flag, per-image masks and a report, through a real prompt."""
    g = GraphBuilder(prefix="")
    images = colour_batch(g)
    score = g.node("RSColourStatisticScore", statistic="redness", threshold=0.5)
    detect = g.node("RSDetectUnsafe", images=images.out(0), safety_score=score.out(0))
    for slot in range(4):
        g.node("PreviewAny", source=detect.out(slot))
    result = comfy.run(g.finalize())
    entry = comfy.executor.caches.outputs.get(detect.id)
    outputs = entry.outputs if hasattr(entry, "outputs") else entry
    any_unsafe, scores, masks, report = outputs[0][0], outputs[1], outputs[2][0], outputs[3][0]
    assert any_unsafe is True
    assert scores == pytest.approx([1.0, -0.5], abs=1e-2)
    assert masks.shape == (2, 48, 64) and masks[0].min() == 1 and masks[1].max() == 0
    assert "image 0: score 1.0" in report and "UNSAFE" in report.splitlines()[1]
    assert "1 of 2 images unsafe" in report


def test_censor(comfy):
    """Masked regions are blacked out / pixelated / blurred; the rest is untouched; the node runs."""
    censor = comfy.module("steering.safety.censor").censor
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 32, 32, 3, generator=g)
    masks = torch.zeros(2, 32, 32)
    masks[0, 8:24, 4:20] = 1
    for mode in ("black", "pixelate", "blur"):
        out = censor(images, masks, mode, 8)
        inside = masks.bool()
        assert torch.equal(out[~inside], images[~inside])
        assert torch.equal(out[1], images[1])
        assert out[inside].std() < images[inside].std() * 0.8, mode
    assert censor(images, masks, "black", 8)[masks.bool()].abs().max() == 0

    graph = GraphBuilder(prefix="")
    batch = colour_batch(graph)
    outs = {}
    for threshold in (1.0, 0.0):
        node = graph.node("RSCensor", images=batch.out(0), label_preset="all", custom_labels="",
                         detection_threshold=threshold, mode="black", strength=8, padding=0.0)
        graph.node("PreviewImage", images=node.out(0))
        graph.node("PreviewAny", source=node.out(2))
        outs[threshold] = node
    result = comfy.run(graph.finalize())
    nothing = result.output(outs[1.0].id, 0)
    assert result.output(outs[1.0].id, 1).max() == 0
    everything, mask = result.output(outs[0.0].id, 0), result.output(outs[0.0].id, 1)
    assert mask.shape == (2, 48, 64) and mask.max() == 1           # threshold 0 keeps detections
    assert torch.equal(everything[~mask.bool()], nothing[~mask.bool()])
    assert everything[mask.bool()].abs().max() == 0


def test_detection_masks(comfy):
    """Boxes (grown by the padding, cut at the image) become 1s; scores without boxes mask unsafe images
    whole."""
    censor = comfy.module("steering.safety.censor")
    region = comfy.module("steering.safety.base").DetectedRegion
    boxes = [[region("FACE_FEMALE", 0.9, (2.5, 1.0, 6.2, 4.0))], []]
    masks = censor.detection_masks(boxes, 2, 6, 8)
    expected = torch.zeros(2, 6, 8)
    expected[0, 1:4, 2:6] = 1          # x from int(2.5) to round(6.2), y from 1 to 4
    assert torch.equal(masks, expected)
    padded = censor.detection_masks(boxes, 2, 6, 8, pad=0.5)
    expected[0, 0:6, 0:8] = 1          # half the size on every side: x -0.35..8.05, y -0.5..5.5, cut at the image
    assert torch.equal(padded, expected)
    whole = censor.detection_masks(None, 2, 3, 4, unsafe=torch.tensor([False, True]))
    assert whole[0].max() == 0 and whole[1].min() == 1
    with pytest.raises(ValueError, match="censor mode 'smudge'"):
        censor.censor(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4), "smudge", 2)


@pytest.fixture(scope="module")
def clip_folder(comfy, tmp_path_factory):
    """A folder with a tiny CLIP, added to models/safety_clip for this module (then removed again)."""
    import folder_paths
    from devtools import tiny_models

    folder = tmp_path_factory.mktemp("safety_clip")
    tiny_models.write_tiny_clip(str(folder / "tiny-clip"))
    paths, extensions = folder_paths.folder_names_and_paths["safety_clip"]
    saved = (list(paths), set(extensions))  # add_model_folder_path changes the list in place
    folder_paths.add_model_folder_path("safety_clip", str(folder), is_default=True)
    yield folder
    folder_paths.folder_names_and_paths["safety_clip"] = saved


def test_clip_scores_from_a_local_folder(comfy, clip_scores, clip_folder):
    """The CLIP nodes load the local folder; their scores equal the direct computation and are
    differentiable w.r.t. the image even when built in inference mode."""
    g = GraphBuilder(prefix="")
    images = colour_batch(g)
    violence = g.node("RSCLIPViolenceScore", clip_model="tiny-clip", violence_texts="blood\ngore", threshold=-1.0)
    artist = g.node("RSCLIPArtistScore", clip_model="tiny-clip", artist="Van Gogh", reference_text="art",
                   threshold=0.0)
    detects = [g.node("RSDetectUnsafe", images=images.out(0), safety_score=s.out(0)) for s in (violence, artist)]
    for d in detects:
        g.node("PreviewAny", source=d.out(3))
    g.node("PreviewAny", source=images.out(0))
    result = comfy.run(g.finalize())
    pixels = result.output(images.id)
    reports = [result.output(d.id, 3) for d in detects]
    assert "2 of 2 images unsafe" in reports[0]                    # threshold -1: every cosine is above

    model = clip_scores.load_clip(str(clip_folder / "tiny-clip"))
    with torch.no_grad():
        direct = (model.image_features(pixels.movedim(-1, 1))
                  @ model.text_features(["blood", "gore"], pixels.device).T).mean(1)
    with torch.inference_mode(False), torch.enable_grad():
        # inside 0..1 (the pure colours sit on the clamp's edges, where the clamp passes no gradient)
        x = (pixels.movedim(-1, 1) * 0.8 + 0.1).clone().requires_grad_(True)
        image = model.image_features(x)
        text = model.text_features(["blood", "gore"], x.device)
        (grad,) = torch.autograd.grad((image @ text.T).mean(1).sum(), x)
    assert grad.abs().max() > 0
    for i, value in enumerate(direct.tolist()):
        assert f"image {i}: score {value:.4f}" in reports[0]
    artist_direct = clip_scores.CLIPArtistScore(model, "Van Gogh").scores(pixels.movedim(-1, 1))
    for i, value in enumerate(artist_direct.tolist()):
        assert f"image {i}: score {value:.4f}" in reports[1]


def test_missing_clip_fails_clearly(comfy, paths, clip_folder):
    with pytest.raises(FileNotFoundError) as info:
        paths.clip_model_path("clip-vit-large-patch14")
    assert str(clip_folder) in str(info.value) and "never downloaded" in str(info.value)
    g = GraphBuilder(prefix="")
    score = g.node("RSCLIPViolenceScore", clip_model="clip-vit-large-patch14", violence_texts="blood", threshold=0.2)
    g.node("RSDetectUnsafe", images=g.node("EmptyImage", width=8, height=8, batch_size=1, color=0).out(0),
          safety_score=score.out(0))
    g.node("PreviewAny", source=[list(g.nodes)[-1], 3])
    with pytest.raises(PromptError, match="not found; looked in"):
        comfy.run(g.finalize())


# ---------------------------------------------------------------------------- NudeNet set-up (as the STG reference)

def skin_blob_image(seed: int = 11, size: int = 320) -> np.ndarray:
    """A synthetic HxWx3 uint8 image of skin-coloured blobs with dark centres; seed 11 makes the shipped
    320n.onnx detect FEMALE_BREAST_EXPOSED at about 0.7 (so thresholds and NMS have something to keep)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    img = np.zeros((size, size, 3)) + r.uniform(0.1, 0.9, 3)
    for _ in range(r.integers(1, 5)):
        cx, cy, sx, sy = r.uniform(0.2, 0.8), r.uniform(0.2, 0.8), r.uniform(0.05, 0.25), r.uniform(0.05, 0.25)
        m = np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))[..., None]
        img = img * (1 - m) + np.array([0.87, 0.67, 0.55]) * r.uniform(0.6, 1.1) * m
        m2 = np.exp(-(((xx - cx) / (sx / 8)) ** 2 + ((yy - cy) / (sy / 8)) ** 2))[..., None]
        img = img * (1 - 0.6 * m2) + np.array([0.5, 0.3, 0.25]) * 0.6 * m2
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


def as_nchw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).float().div(255).permute(2, 0, 1)[None]


def synthetic_raw() -> torch.Tensor:
    """A raw detector output [1, 22, 5] built by hand (boxes cx, cy, w, h in detector pixels):
    a0 FACE_FEMALE 0.9 and a1 FEMALE_BREAST_EXPOSED 0.6 overlap at IoU 1520/1680 = 0.905; a2 (breast, 0.5)
    overlaps a1 at 1480/1720 = 0.860 and a0 at 1400/1800 = 0.778; a3 ANUS_EXPOSED exactly 0.01; a4
    MALE_GENITALIA_EXPOSED 0.02 far away."""
    raw = torch.full((1, 22, 5), 0.001)
    boxes = [(50, 50, 40, 40), (52, 50, 40, 40), (55, 50, 40, 40), (150, 150, 20, 20), (250, 250, 30, 30)]
    classes = [(1, 0.9), (3, 0.6), (3, 0.5), (6, 0.01), (14, 0.02)]
    for a, (box, (cls, conf)) in enumerate(zip(boxes, classes)):
        raw[0, :4, a] = torch.tensor(box, dtype=torch.float32)
        raw[0, 4 + cls, a] = conf
    return raw


def test_detection_selection_by_hand(nudenet):
    """Confidence strictly above the threshold, per-class vs class-agnostic NMS, the detection cap."""
    raw = synthetic_raw()
    pick = lambda *args: nudenet.select_detections(raw, *args)[0].tolist()
    assert pick(0.01, 0.7, True, 300) == [0, 1, 4]      # a2 under a1 (0.860 > 0.7); a3 not above 0.01
    assert pick(0.01, 0.9, True, 300) == [0, 1, 2, 4]   # 0.860 < 0.9: a2 stays
    assert pick(0.01, 0.45, False, 0) == [0, 4]         # class-agnostic: the FACE box hides both breasts
    assert pick(0.01, 0.7, True, 2) == [0, 1]           # the cap counts every class, most confident first
    assert pick(0.005, 0.7, True, 0) == [0, 1, 4, 3]
    assert pick(0.25, 0.45, False, 0) == [0]


def fixed_raw_score(nudenet, **settings):
    """A NudeNetScore whose detector output is the hand-built one (the score's own post-processing runs)."""
    class FixedRawScore(nudenet.NudeNetScore):
        def raw(self, images):
            return synthetic_raw().expand(images.shape[0], -1, -1).clone(), (1.0, 1.0)
    return FixedRawScore(**settings)


def test_stg_settings_are_the_defaults(comfy, nudenet):
    """The score's and the node's defaults are STG's guidance settings; with them the synthetic output
    scores 0.6 + 0.02 = 0.62 (STG's four classes), with the nudenet package's NMS the FACE box hides
    the breast box (0.02), with its 0.25 threshold as well nothing is left."""
    score = nudenet.NudeNetScore()
    assert (score.detection_threshold, score.nms_iou, score.class_wise_nms, score.max_detections,
            score.channel_order, score.resize, score.input_size) == (0.01, 0.7, True, 300, "rgb", "stretch",
                                                                     (320, 320))
    spec = comfy.input_spec("RSNudeNetScore")
    values = {**spec["required"], **spec.get("optional", {})}
    defaults = {k: values[k][1].get("default") for k in ("detection_threshold", "threshold", "nms_iou",
                                                         "class_wise_nms", "max_detections", "channel_order",
                                                         "resize", "model_name")}
    assert defaults == dict(detection_threshold=0.01, threshold=0.0, nms_iou=0.7, class_wise_nms=True,
                            max_detections=300, channel_order="rgb", resize="stretch", model_name="320n.onnx")
    censor = comfy.input_spec("RSCensor")
    censor = {**censor["required"], **censor.get("optional", {})}
    assert [censor[k][1]["default"] for k in ("detection_threshold", "nms_iou", "class_wise_nms")] == [0.25, 0.45,
                                                                                                       False]
    images = torch.zeros(2, 3, 320, 320)
    stg_score = fixed_raw_score(nudenet).scores(images)
    torch.testing.assert_close(stg_score, torch.tensor([0.62, 0.62]))
    agnostic = fixed_raw_score(nudenet, nms_iou=0.45, class_wise_nms=False, max_detections=0).scores(images)
    torch.testing.assert_close(agnostic, torch.tensor([0.02, 0.02]))
    package = fixed_raw_score(nudenet, **nudenet.NUDENET_PACKAGE_SETTINGS).scores(images)
    assert package.tolist() == [0.0, 0.0]


def test_resize_then_clamp(nudenet):
    """Resize first, clamp after (the reference): [1.6, 0] averages to 0.8 (clamping first would give 0.5),
    and the overshooting pixel keeps its gradient (weight 1/4 of the 2x2 -> 1x1 average)."""
    for resize in nudenet.RESIZE_MODES:
        with torch.enable_grad():
            image = torch.tensor([[[1.6, 0.0], [1.6, 0.0]], [[0.2, 0.2], [0.2, 0.2]],
                                  [[-0.4, 0.0], [0.0, 0.0]]]).unsqueeze(0).requires_grad_(True)
            out, scale = nudenet.preprocess(image, (1, 1), resize, "rgb")
            (grad,) = torch.autograd.grad(out[0, 0, 0, 0], image)
        torch.testing.assert_close(out.flatten(), torch.tensor([0.8, 0.2, 0.0]))
        assert float(grad[0, 0, 0, 0]) == pytest.approx(0.25)
        assert scale == (2.0, 2.0)
        bgr, _ = nudenet.preprocess(image.detach(), (1, 1), resize, "bgr")
        torch.testing.assert_close(bgr.flatten(), torch.tensor([0.0, 0.2, 0.8]))
    with pytest.raises(ValueError, match="channel order"):
        nudenet.preprocess(torch.zeros(1, 3, 4, 4), (2, 2), "stretch", "rbg")


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
def test_stg_score_matches_a_hand_rederivation(nudenet):
    """NudeNetScore's defaults against the STG reference's pipeline written out here: torchvision-style
    antialiased resize to 320, clamp, onnxruntime, best class, confidence > 0.01, class-offset NMS at
    IoU 0.7, first 300, sum of the confidences of the chosen classes."""
    import onnxruntime
    import torchvision

    session = onnxruntime.InferenceSession(onnx_path(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(4)
    noisy = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(384, 384),
                                            mode="bilinear") * 1.4 - 0.2   # overshoots both ends
    blobs = torch.nn.functional.interpolate(as_nchw(skin_blob_image()), size=(384, 384), mode="bilinear")
    images = torch.cat([blobs, noisy])

    def reference(labels):
        x = torch.nn.functional.interpolate(images, size=(320, 320), mode="bilinear", align_corners=False,
                                            antialias=True).clamp(0, 1)
        out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        totals = []
        for pred in out.transpose(1, 2):
            conf, cls = pred[:, 4:].max(1)
            pred, conf, cls = pred[conf > 0.01], conf[conf > 0.01], cls[conf > 0.01]
            xyxy = torch.cat([pred[:, :2] - pred[:, 2:4] / 2, pred[:, :2] + pred[:, 2:4] / 2], 1)
            keep = torchvision.ops.nms(xyxy + cls[:, None].float() * 7680, conf, 0.7)[:300]
            wanted = torch.tensor([nudenet.LABELS.index(label) for label in labels])
            totals.append(float(conf[keep][torch.isin(cls[keep], wanted)].sum()))
        return torch.tensor(totals)

    for labels in (nudenet.LABEL_PRESETS["stg_nudity"], nudenet.LABELS):
        expected = reference(labels)
        got = nudenet.NudeNetScore(labels).scores(images)
        assert float(expected[0]) > 0.3 and float(expected[1]) > 0
        torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
def test_detector_input_size_from_the_onnx_graph(nudenet, paths, tmp_path, monkeypatch):
    """320n.onnx: dynamic dims, imgsz metadata [320, 320]. The same graph with its input fixed at 640 (as
    NudeNet's 640 px exports) runs at 640: 8400 anchors, equal to onnxruntime on that graph, and is
    listed / found in models/nudenet. A graph with neither is refused clearly."""
    import folder_paths
    import onnx
    import onnxruntime

    model = onnx.load(onnx_path())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_value == 0 and dims[3].dim_value == 0
    assert nudenet.detector_input_size(onnx_path()) == (320, 320)
    dims[2].dim_value, dims[3].dim_value = 640, 640
    del model.metadata_props[:]
    folder = tmp_path / "nudenet"
    folder.mkdir()
    path = str(folder / "640test.onnx")
    onnx.save(model, path)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "nudenet", ([str(folder)], {".onnx"}))
    assert paths.list_nudenet_models() == ["320n.onnx", "640test.onnx"]
    assert paths.nudenet_model_path("640test.onnx") == path
    score = nudenet.NudeNetScore(nudenet.LABELS, model_path=path)
    assert score.input_size == (640, 640)
    images = torch.rand(1, 3, 100, 150, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw, scale = score.raw(images)
    assert raw.shape == (1, 22, 8400) and scale == (150 / 640, 100 / 640)
    x = torch.nn.functional.interpolate(images, size=(640, 640), mode="bilinear", antialias=True).clamp(0, 1)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    expected = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert float((raw[:, 4:] - expected[:, 4:]).abs().max()) < 1e-4

    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(model, str(folder / "nosize.onnx"))
    with pytest.raises(ValueError, match="cannot tell the detector's input size"):
        nudenet.NudeNetScore(model_path=str(folder / "nosize.onnx"))
    with pytest.raises(FileNotFoundError, match="missing.onnx not found"):
        paths.nudenet_model_path("missing.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        nudenet.NudeNetScore(model_path=str(folder / "missing.onnx"))


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
def test_bgr_option_reproduces_the_nudenet_package(nudenet, tmp_path):
    """With the nudenet package's settings (BGR, letterbox, 0.25, class-agnostic NMS 0.45) the score
    finds what the package's own NudeDetector.detect (cv2 + onnxruntime) finds on an image file; its
    pre-processing matches the package's blob and its post-processing the package's _postprocess."""
    pytest.importorskip("cv2", reason="the nudenet package's own pipeline needs opencv (opencv-python-headless)")
    from PIL import Image
    import nudenet.nudenet as package

    # the detector input: a non-square image, letterboxed (pad bottom/right), as the package's blob
    wide = skin_blob_image(size=320)[40:200, :]
    Image.fromarray(wide).save(tmp_path / "wide.png")
    blob, x_ratio, y_ratio, x_pad, y_pad, width, height = package._read_image(str(tmp_path / "wide.png"), 320)
    ours, _ = nudenet.preprocess(as_nchw(wide), (320, 320), "letterbox", "bgr")
    rgb, _ = nudenet.preprocess(as_nchw(wide), (320, 320), "letterbox", "rgb")
    assert float(np.abs(ours.numpy() - blob).max()) < 1.0 / 255    # cv2 resizes in uint8
    assert float(np.abs(rgb.numpy() - blob).max()) > 0.2           # the package feeds BGR

    # the whole pipeline on an image with a detection
    image = skin_blob_image()
    Image.fromarray(image).save(tmp_path / "blobs.png")
    expected = package.NudeDetector().detect(str(tmp_path / "blobs.png"))
    score = nudenet.NudeNetScore(nudenet.LABELS, **nudenet.NUDENET_PACKAGE_SETTINGS)
    with torch.no_grad():
        found = score.evaluate(as_nchw(image)).detections[0]
    assert len(expected) >= 1 and expected[0]["score"] > 0.5
    assert [d.label for d in found] == [e["class"] for e in expected]
    for d, e in zip(found, expected):
        assert d.confidence == pytest.approx(e["score"], abs=5e-3)
        x0, y0, x1, y1 = d.box
        assert np.allclose([x0, y0, x1 - x0, y1 - y0], e["box"], atol=2.0), (d, e)

    # post-processing alone, on the package's own raw output with its confidences raised (c ** 0.25) so
    # that many boxes pass 0.25 and overlap across classes
    import onnxruntime

    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(0)),
                                             size=(96, 128), mode="bilinear")
    Image.fromarray((smooth[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "s.png")
    blob, x_ratio, y_ratio, x_pad, y_pad, width, height = package._read_image(str(tmp_path / "s.png"), 320)
    session = onnxruntime.InferenceSession(onnx_path(), providers=["CPUExecutionProvider"])
    raw = session.run(None, {session.get_inputs()[0].name: blob})[0]
    raw[:, 4:] = raw[:, 4:] ** 0.25
    expected = package._postprocess([raw], x_pad, y_pad, x_ratio, y_ratio, width, height, 320, 320)
    raw_t = torch.from_numpy(raw)
    per_anchor = raw_t.transpose(1, 2)[0]
    side = max(width, height)
    boxes = nudenet.image_boxes(per_anchor[:, :4], (side / 320, side / 320), (height, width), "letterbox")
    kept = nudenet.select_detections(raw_t, 0.25, 0.45, False, 0, [boxes])[0]
    confidence, class_id = per_anchor[:, 4:].max(-1)
    assert len(expected) >= 5
    assert [nudenet.LABELS[int(class_id[i])] for i in kept] == [e["class"] for e in expected]
    assert [float(confidence[i]) for i in kept] == pytest.approx([e["score"] for e in expected], abs=1e-6)
    for i, e in zip(kept.tolist(), expected):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        assert np.allclose([x0, y0, x1 - x0, y1 - y0], e["box"], atol=1.0)


def test_scores_clamp_the_decoded_image(comfy):
    """Decoders hand over image/2 + 0.5 unclamped; the colour score clamps to 0..1 itself (no resize):
    red values [1.5, 0.5] -> mean(1.0, 0.5) = 0.75 (unclamped would be 1.0)."""
    colour = comfy.module("steering.safety.colour")
    image = torch.zeros(1, 3, 1, 2)
    image[0, 0, 0] = torch.tensor([1.5, 0.5])
    assert float(colour.ColourStatisticScore("red").scores(image)[0]) == pytest.approx(0.75)



@pytest.mark.parametrize("setting", ["detection_threshold", "threshold", "nms_iou"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1.5])
def test_scores_refuse_settings_that_would_pass_everything(comfy, nudenet, setting, value):
    """Fail closed: a NaN detection threshold keeps no detection (every image 'safe') and a NaN
    threshold flags nothing, so the score refuses to be built, naming the setting. (A threshold of
    1.5 is a legal 'unsafe above' bar; confidences and IoU above 1 are not.)"""
    base = comfy.module("steering.safety.base")
    colour = comfy.module("steering.safety.colour")
    if setting == "threshold" and value == 1.5:
        assert nudenet.NudeNetScore(threshold=value).threshold == 1.5
        return
    with pytest.raises(base.ScoreSettingsError, match=setting):
        nudenet.NudeNetScore(**{setting: value})
    if setting == "threshold":
        with pytest.raises(base.ScoreSettingsError, match="threshold"):
            colour.ColourStatisticScore(threshold=value)
