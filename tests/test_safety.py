"""Safety scores: the converted NudeNet detector against onnxruntime, gradients in inference mode,
model lookup, CLIP scores from a local folder, and the Detect Unsafe / Censor nodes in real prompts."""
from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch

from rs_harness import Graph, PromptError

MAX_ABS_DIFF = {}


@pytest.fixture(scope="module")
def nudenet(comfy):
    return comfy.module("steering.safety.nudenet")


@pytest.fixture(scope="module")
def clip_scores(comfy):
    return comfy.module("steering.safety.clip_scores")


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


def test_nudenet_model_lookup(nudenet, tmp_path, monkeypatch):
    """models/nudenet first, then the nudenet package; a clear error lists both when neither has it."""
    import folder_paths

    source = onnx_path()
    folder = tmp_path / "nudenet"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "nudenet", ([str(folder)], {".onnx"}))
    assert nudenet.find_model() == source                        # from the package
    shutil.copy(source, folder / "320n.onnx")
    assert nudenet.find_model() == str(folder / "320n.onnx")     # the models folder wins
    (folder / "320n.onnx").unlink()
    monkeypatch.setattr(nudenet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as info:
        nudenet.find_model()
    message = str(info.value)
    assert str(folder) in message and "nudenet package" in message and "320n.onnx" in message


def colour_batch(g: Graph):
    red = g.add("EmptyImage", width=64, height=48, batch_size=1, color=0xFF0000)
    blue = g.add("EmptyImage", width=64, height=48, batch_size=1, color=0x0000FF)
    return g.add("ImageBatch", image1=red[0], image2=blue[0])


def test_detect_unsafe_node(comfy):
    """Per-image scores, any-unsafe flag, per-image masks and a report, through a real prompt."""
    g = Graph()
    images = colour_batch(g)
    score = g.add("RSColourStatisticScore", statistic="redness", threshold=0.5)
    detect = g.add("RSDetectUnsafe", images=images[0], safety_score=score[0])
    for slot in range(4):
        g.add("PreviewAny", source=detect[slot])
    result = comfy.run(g.prompt())
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
    censor = comfy.module("nodes.safety_nodes").censor
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

    graph = Graph()
    batch = colour_batch(graph)
    outs = {}
    for threshold in (1.0, 0.0):
        node = graph.add("RSCensor", images=batch[0], label_preset="all", custom_labels="",
                         detection_threshold=threshold, mode="black", strength=8, padding=0.0)
        graph.add("PreviewImage", images=node[0])
        graph.add("PreviewAny", source=node[2])
        outs[threshold] = node
    result = comfy.run(graph.prompt())
    nothing = result.output(outs[1.0].id, 0)
    assert result.output(outs[1.0].id, 1).max() == 0
    everything, mask = result.output(outs[0.0].id, 0), result.output(outs[0.0].id, 1)
    assert mask.shape == (2, 48, 64) and mask.max() == 1           # threshold 0 keeps detections
    assert torch.equal(everything[~mask.bool()], nothing[~mask.bool()])
    assert everything[mask.bool()].abs().max() == 0


@pytest.fixture(scope="module")
def clip_folder(comfy, tmp_path_factory):
    import folder_paths
    import tiny_clip

    folder = tmp_path_factory.mktemp("safety_clip")
    tiny_clip.write_tiny_clip(str(folder / "tiny-clip"))
    folder_paths.add_model_folder_path("safety_clip", str(folder), is_default=True)
    return folder


def test_clip_scores_from_a_local_folder(comfy, clip_scores, clip_folder):
    """The CLIP nodes load the local folder; their scores equal the direct computation and are
    differentiable w.r.t. the image even when built in inference mode."""
    g = Graph()
    images = colour_batch(g)
    violence = g.add("RSCLIPViolenceScore", clip_model="tiny-clip", violence_texts="blood\ngore", threshold=-1.0)
    artist = g.add("RSCLIPArtistScore", clip_model="tiny-clip", artist="Van Gogh", reference_text="art",
                   threshold=0.0)
    detects = [g.add("RSDetectUnsafe", images=images[0], safety_score=s[0]) for s in (violence, artist)]
    for d in detects:
        g.add("PreviewAny", source=d[3])
    g.add("PreviewAny", source=images[0])
    result = comfy.run(g.prompt())
    pixels = result.output(images.id)
    reports = [result.output(d.id, 3) for d in detects]
    assert "2 of 2 images unsafe" in reports[0]                    # threshold -1: every cosine is above

    model = clip_scores.load_clip("tiny-clip")
    with torch.no_grad():
        direct = (model.image_features(pixels.movedim(-1, 1)) @ model.text_features(["blood", "gore"], "cpu").T).mean(1)
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


def test_missing_clip_fails_clearly(comfy, clip_scores, clip_folder):
    with pytest.raises(FileNotFoundError) as info:
        clip_scores.load_clip("clip-vit-large-patch14")
    assert str(clip_folder) in str(info.value) and "never downloaded" in str(info.value)
    g = Graph()
    score = g.add("RSCLIPViolenceScore", clip_model="clip-vit-large-patch14", violence_texts="blood", threshold=0.2)
    g.add("RSDetectUnsafe", images=g.add("EmptyImage", width=8, height=8, batch_size=1, color=0)[0],
          safety_score=score[0])
    g.add("PreviewAny", source=[list(g.nodes)[-1], 3])
    with pytest.raises(PromptError, match="not found; looked in"):
        comfy.run(g.prompt())
