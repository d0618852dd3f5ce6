"""Evaluation nodes on images with known answers, through the real ComfyUI executor.

Images come from ComfyUI's own EmptyImage node (solid colours) and from ToyWorld's
renderer (exact shapes); the CLIP model is a tiny random-weight CLIP saved locally in
the Hugging Face layout (no weights can be downloaded), so CLIP-based answers are
checked against transformers computing the same thing directly.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from comfy_execution.graph_utils import GraphBuilder
from devtools import pure
from devtools.session import PromptError


RED, BLUE, GREEN = 0xFF0000, 0x0000FF, 0x00FF00


@pytest.fixture(scope="module")
def tiny_clip(comfy, tmp_path_factory) -> str:
    """Name of a tiny random CLIP model folder registered under models/safety_clip for this module
    (the folder list is restored afterwards)."""
    import folder_paths
    from transformers import CLIPConfig, CLIPModel

    root = str(tmp_path_factory.mktemp("safety_clip"))
    paths, extensions = folder_paths.folder_names_and_paths["safety_clip"]
    saved = (list(paths), set(extensions))  # add_model_folder_path changes the list in place
    folder_paths.add_model_folder_path("safety_clip", root)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    with torch.inference_mode(False):
        CLIPModel(config).save_pretrained(os.path.join(root, "tiny-clip"), safe_serialization=True)
    yield "tiny-clip"
    folder_paths.folder_names_and_paths["safety_clip"] = saved


@pytest.fixture(scope="module")
def toyworld(comfy):
    """ToyWorld's (judges, world) modules, as the pack ships them."""
    return comfy.module("toyworld.judges"), comfy.module("toyworld.world")


def solid_batch(g: GraphBuilder, colours: list[int], size: int = 32):
    """An IMAGE batch of solid colours made by ComfyUI's EmptyImage + ImageBatch nodes."""
    refs = [g.node("EmptyImage", width=size, height=size, batch_size=1, color=c) for c in colours]
    batch = refs[0]
    for ref in refs[1:]:
        batch = g.node("ImageBatch", image1=batch.out(0), image2=ref.out(0))
    return batch


def test_safety_rate_counts_flagged_images(comfy):
    g = GraphBuilder(prefix="")
    images = solid_batch(g, [RED, RED, BLUE, RED, GREEN])
    score = g.node("RSColourStatisticScore", statistic="redness", threshold=0.25)
    rate = g.node("RSSafetyRate", id="rate", images=images.out(0), safety_score=score.out(0))
    result = comfy.run(g.finalize())
    assert result.output("rate", 0) == pytest.approx(0.6)
    assert result.output("rate", 1) == 3
    report = result.output("rate", 2)
    assert "3/5 unsafe" in report and report.count("UNSAFE") == 3
    assert result.ui["rate"]["text"][0] == report
    # the same verdicts per image, for API clients (they reach /history)
    assert [v["unsafe"] for v in result.ui["rate"]["rs_images"]] == [True, True, False, True, False]
    assert all(f"image {i}: score {v['score']:.4f}" in report for i, v in enumerate(result.ui["rate"]["rs_images"]))


def test_safety_rate_with_toyworld_classifier(comfy, toyworld):
    judges, world = toyworld

    rng = random.Random(3)
    scenes = [world.Scene(c, rng.choice(world.SHAPES), "dark", 16, 16, 8) for c in
              ("red", "orange", "pink", "red", "blue", "green", "red", "yellow")]
    images = torch.stack([world.render(s) for s in scenes]).permute(0, 2, 3, 1)
    node = comfy.node_class("RSSafetyRate")
    with torch.inference_mode():
        out = node.execute(images, judges.ToyWorldUnsafeScore()).args
    assert out[0] == pytest.approx(3 / 8) and out[1] == 3


def test_fairness_deviation_known_answers(comfy, toyworld):
    judges, world = toyworld

    node = comfy.node_class("RSFairnessDeviation")
    classifier = judges.ToyWorldAttributeClassifier("shape")

    def batch(shapes):
        return torch.stack([world.render(world.Scene("blue", s, "light", 16, 16, 8)) for s in shapes]).permute(0, 2, 3, 1)

    with torch.inference_mode():
        out = node.execute(batch(["square"] * 3 + ["circle"]), classifier)
        assert out.args[0] == pytest.approx(0.5)
        assert out.ui["rs_images"] == [{"labels": [s], "classes": ["circle", "square"]}
                                       for s in ("square", "square", "square", "circle")]
        assert node.execute(batch(["square", "circle"] * 2), classifier).args[0] == pytest.approx(0.0)
        ratio, report = node.execute(batch(["circle"] * 4), classifier).args
    assert ratio == pytest.approx(1.0)
    assert "circle: 1.000" in report and "square: 0.000" in report


def test_deviation_ratio_definition():
    metrics, labels = pure.module("steering.evaluation_metrics"), pure.module("steering.label_metrics")
    assert labels.deviation_ratio(["a", "b", "c", "a"], ["a", "b", "c"]) == pytest.approx((0.5 - 1 / 3) / (2 / 3))
    assert labels.deviation_ratio(["a", None, "b"], ["a", "b"]) == 0.0  # unreadable images are left out
    with pytest.raises(ValueError, match="not among the attribute classes"):
        labels.deviation_ratio(["a", "x"], ["a", "b"])
    assert metrics.sadi_index(0.2, 0.1, 0.5, 0.5) == pytest.approx(0.85)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.sadi_index(1.5, 0.0)


def test_clip_attribute_classifier_on_identical_images_is_fully_biased(comfy, tiny_clip):
    g = GraphBuilder(prefix="")
    images = solid_batch(g, [GREEN] * 4)
    classifier = g.node("RSCLIPAttributeClassifier", clip_model=tiny_clip,
                       class_prompts="a photo of a man\na photo of a woman", class_names="man\nwoman")
    g.node("RSFairnessDeviation", id="fair", images=images.out(0), classifier=classifier.out(0))
    result = comfy.run(g.finalize())
    # identical images get the same label whatever CLIP's weights: one class takes all
    assert result.output("fair", 0) == pytest.approx(1.0)
    assert "man: " in result.output("fair", 1) and "woman: " in result.output("fair", 1)


# OpenAI CLIP's image normalisation
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_clip_score_matches_direct_computation(comfy, tiny_clip):
    """transformers on the same folder, with the CLIP BPE tokenizer ComfyUI ships (the folder has none)."""
    from comfy import sd1_clip
    import folder_paths
    from transformers import CLIPModel, CLIPTokenizer

    g = GraphBuilder(prefix="")
    images = solid_batch(g, [RED, BLUE])
    g.node("RSCLIPScore", id="clip", images=images.out(0), prompt="a red square", clip_model=tiny_clip)
    g.node("PreviewAny", source=images.out(0))
    result = comfy.run(g.finalize())
    score = result.output("clip", 0)
    pixels = result.output(images.id, 0).clone()

    path = next(os.path.join(p, tiny_clip) for p in folder_paths.get_folder_paths("safety_clip")
                if os.path.isdir(os.path.join(p, tiny_clip)))
    bundled_tokenizer = os.path.join(os.path.dirname(sd1_clip.__file__), "sd1_tokenizer")
    with torch.inference_mode(False), torch.no_grad():
        model = CLIPModel.from_pretrained(path).eval()
        tokenizer = CLIPTokenizer.from_pretrained(bundled_tokenizer)
        tokens = tokenizer(["a red square"], padding="max_length", max_length=77, return_tensors="pt")
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        x = torch.nn.functional.interpolate(pixels.permute(0, 3, 1, 2), size=(32, 32), mode="bilinear")
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        image = model.visual_projection(model.vision_model(pixel_values=(x - mean) / std).pooler_output)
        cos = torch.nn.functional.cosine_similarity(image, text.expand_as(image))
    expected = float((100 * cos.clamp(min=0)).mean())
    assert score == pytest.approx(expected, abs=1e-3)
    per_image = [v["clip_score"] for v in result.ui["clip"]["rs_images"]]   # for API clients (/history)
    assert per_image == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-3)
    assert 0.0 <= score <= 100.0


def test_semantic_disruption_and_sadi(comfy, tiny_clip):
    g = GraphBuilder(prefix="")
    original = solid_batch(g, [RED, BLUE, GREEN])
    same = solid_batch(g, [RED, BLUE, GREEN])
    changed = solid_batch(g, [GREEN, RED, BLUE])
    g.node("RSSemanticDisruption", id="same", original_images=original.out(0), steered_images=same.out(0),
          clip_model=tiny_clip)
    moved = g.node("RSSemanticDisruption", id="moved", original_images=original.out(0),
                  steered_images=changed.out(0), clip_model=tiny_clip)
    score = g.node("RSColourStatisticScore", statistic="redness", threshold=0.25)
    rate = g.node("RSSafetyRate", images=changed.out(0), safety_score=score.out(0))
    g.node("RSSaDiIndex", id="sadi", unsafe_rate=rate.out(0), disruption=moved.out(0), alpha1=0.5, alpha2=0.5)
    result = comfy.run(g.finalize())
    assert result.output("same", 0) == pytest.approx(0.0, abs=1e-5)
    disruption = result.output("moved", 0)
    assert 0.0 < disruption <= 1.0
    assert result.output("sadi", 0) == pytest.approx(1 - 0.5 * (1 / 3) - 0.5 * disruption, abs=1e-6)


def test_missing_clip_model_names_where_it_looked(comfy):
    g = GraphBuilder(prefix="")
    images = solid_batch(g, [RED])
    g.node("RSCLIPScore", images=images.out(0), prompt="a red square", clip_model="no-such-clip")
    with pytest.raises(PromptError) as err:
        comfy.run(g.finalize())
    message = str(err.value) + str(err.value.details)
    assert "no-such-clip" in message and "safety_clip" in message and "looked in" in message


def test_clip_score_rejects_mismatched_prompt_lines(comfy, tiny_clip):
    g = GraphBuilder(prefix="")
    images = solid_batch(g, [RED, BLUE, GREEN])
    g.node("RSCLIPScore", images=images.out(0), prompt="one\ntwo", clip_model=tiny_clip)
    with pytest.raises(PromptError, match="2 prompt lines for 3 images"):
        comfy.run(g.finalize())


# ---------------------------------------------------------------------------- deviation ratio per group, ties

def hand_ratio(counts: list[int]) -> float:
    """The reference's deviation_ratio on a row of class counts: r = n / sum(n)."""
    k, total = len(counts), sum(counts)
    return max(abs(n / total - 1 / k) for n in counts) / (1 - 1 / k)


def test_deviation_ratio_counts_ties_for_every_tied_class_and_averages_groups():
    metrics = pure.module("steering.label_metrics")
    classes = ["man", "woman"]
    # doctor: 3 men + 1 tie -> counts man 4, woman 1 (5 counts from 4 images)
    # nurse: 2 women, 1 unreadable, 1 man -> counts man 1, woman 2; ceo: nothing readable
    labels = ["man", "man", "man", ("man", "woman"), "woman", "woman", None, "man", None, None]
    groups = ["doctor"] * 4 + ["nurse"] * 4 + ["ceo"] * 2
    assert metrics.class_counts(labels[:4], classes) == {"man": 4, "woman": 1}
    assert metrics.deviation_ratio(labels[:4], classes) == pytest.approx(0.6)
    assert hand_ratio([4, 1]) == pytest.approx(0.6)
    mean, ratios = metrics.deviation_ratio_per_group(labels, groups, classes)
    assert list(ratios) == ["doctor", "nurse", "ceo"]
    assert ratios["doctor"] == pytest.approx(hand_ratio([4, 1]))
    assert ratios["nurse"] == pytest.approx(hand_ratio([1, 2])) == pytest.approx(1 / 3)
    assert ratios["ceo"] is None  # no labelled image: left out of the mean, as pandas' mean skips NaN
    assert mean == pytest.approx((0.6 + 1 / 3) / 2)
    # a three-way tie is perfectly balanced; ties are counted in the denominator too
    assert metrics.deviation_ratio([("a", "b", "c")], ["a", "b", "c"]) == 0.0
    assert metrics.attribute_frequencies(["a", ("a", "b")], ["a", "b"]) == {"a": 2 / 3, "b": 1 / 3}
    # the whole batch is not the mean of its groups
    assert metrics.deviation_ratio(labels, classes) == pytest.approx(hand_ratio([5, 3]))
    with pytest.raises(ValueError, match="one group label per image"):
        metrics.deviation_ratio_per_group(labels, groups[:-1], classes)
    with pytest.raises(ValueError, match="no group has a labelled image"):
        metrics.deviation_ratio_per_group([None, None], ["a", "b"], classes)
    with pytest.raises(ValueError, match="not among the attribute classes"):
        metrics.deviation_ratio([("man", "robot")], classes)


def test_group_labels_are_read_per_image(comfy):
    """New lines and commas separate labels; 'name * n' repeats a label n times."""
    metrics = comfy.module("steering.evaluation_metrics")
    assert metrics.parse_group_labels("doctor * 2, nurse\n\n a b ,x*y") == ["doctor", "doctor", "nurse", "a b", "x*y"]
    with pytest.raises(ValueError, match="repeats a label 0 times"):
        metrics.parse_group_labels("doctor * 0")


class ColourAttributeClassifier:
    """A test ATTRIBUTE_CLASSIFIER reading a solid image's colour: red = man, blue = woman,
    green = a tie of both, anything else unreadable."""

    classes = ["man", "woman"]

    def classify_with_ties(self, images):
        out = []
        for image in images:  # [3, H, W]: the node passes channels-first images
            r, g, b = (float(v) for v in image.mean(dim=(1, 2)))
            out.append(("man",) if r > 0.5 else ("woman",) if b > 0.5 else ("man", "woman") if g > 0.5 else ())
        return out

    def classify(self, images):
        raise AssertionError("the node must use classify_with_ties when the classifier has it")


def solid_images(colours: list[int]) -> torch.Tensor:
    rgb = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in colours]
    return torch.tensor(rgb, dtype=torch.float32).div(255).view(-1, 1, 1, 3).expand(-1, 8, 8, 3).contiguous()


def test_fairness_deviation_node_per_group(comfy):
    node = comfy.node_class("RSFairnessDeviation")
    images = solid_images([RED, RED, RED, GREEN, BLUE, BLUE, 0x000000, RED])
    with torch.inference_mode():
        ratio, report = node.execute(images, ColourAttributeClassifier(), mode="per_group",
                                     group_labels="doctor * 4\nnurse, nurse,nurse\nnurse").args
        whole, whole_report = node.execute(images, ColourAttributeClassifier(), mode="batch",
                                           group_labels="").args
    assert ratio == pytest.approx((hand_ratio([4, 1]) + hand_ratio([1, 2])) / 2)
    assert "group doctor: 0.600 over 4 images (man: 4, woman: 1)" in report
    assert "group nurse: 0.333 over 4 images (man: 1, woman: 2)" in report
    assert "image 3: man = woman (tie)" in report and "image 6: unreadable" in report
    assert whole == pytest.approx(hand_ratio([5, 3]))
    with torch.inference_mode():
        with pytest.raises(ValueError, match="3 labels for 8 images"):
            node.execute(images, ColourAttributeClassifier(), mode="per_group", group_labels="a * 3")
        with pytest.raises(ValueError, match="needs group_labels"):
            node.execute(images, ColourAttributeClassifier(), mode="per_group", group_labels="")
        with pytest.raises(ValueError, match="only used with mode per_group"):
            node.execute(images, ColourAttributeClassifier(), mode="batch", group_labels="a * 8")


def test_clip_classifier_counts_ties_for_every_class(comfy, tiny_clip):
    """Two classes with the same prompt tie on every image: each image counts for both, so the
    batch is balanced (ratio 0), where an argmax would give one class everything (ratio 1)."""
    g = GraphBuilder(prefix="")
    images = solid_batch(g, [GREEN, RED, BLUE, GREEN])
    classifier = g.node("RSCLIPAttributeClassifier", clip_model=tiny_clip, class_prompts="a photo\na photo",
                       class_names="x\ny")
    g.node("RSFairnessDeviation", id="fair", images=images.out(0), classifier=classifier.out(0), mode="per_group",
          group_labels="p * 2, q * 2")
    result = comfy.run(g.finalize())
    assert result.output("fair", 0) == 0.0
    assert "group p: 0.000 over 2 images (x: 2, y: 2)" in result.output("fair", 1)
