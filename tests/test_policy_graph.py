"""The policy's reading of a submitted prompt (operator_policy/graph.py), without ComfyUI: links with exactly
ComfyUI's semantics (its own ``is_link``), fail-closed refusals, where guards go and what is refused.

Node declarations come from tests/data/node_catalog.json, a snapshot of what the real ComfyUI 0.3.75 and the
pack declare (``python -m devtools.node_catalog``; test_policy.py checks it against the running ComfyUI)."""
from __future__ import annotations

import json
import os

import pytest
from comfy_execution.graph_utils import is_link   # ComfyUI's own helper (a plain module: no torch)

from devtools import comfy_env, pure
from devtools.toyworld_graphs import save_image, sampled

CATALOG = os.path.join(comfy_env.REPO, "tests", "data", "node_catalog.json")


@pytest.fixture(scope="module")
def graph():
    return pure.module("operator_policy.graph")


@pytest.fixture(scope="module")
def catalog(graph):
    with open(CATALOG) as f:
        table = json.load(f)
    infos = {name: graph.NodeInfo(inputs={k: graph.InputSpec(*v) for k, v in e["inputs"].items()},
                                  outputs=tuple(e["outputs"]), output_node=e["output_node"],
                                  releases_ui=e["output_node"] or e["intermediate_output"], role=e["role"],
                                  concept_inputs=frozenset(e["concept_inputs"]))
             for name, e in table.items()}
    return infos.get


def toy_prompt(save_images=("decode", 0), **extra) -> dict:
    """ToyWorld loader -> KSampler -> VAE Decode, and a Save Image fed `save_images`; `extra` nodes added."""
    prompt = sampled("a red circle", seed=1, batch=1, steps=2)
    prompt["save"] = save_image(list(save_images) if isinstance(save_images, tuple) else save_images, "x")
    prompt.update(extra)
    return prompt


def classify(graph, catalog, prompt, **options):
    return graph.classify(graph.read_prompt(prompt, catalog, is_link), **options)


def test_comfyuis_link_rules_are_the_policys(graph, catalog):
    """A JSON boolean is a slot (bool is an int), a negative slot counts from the end, a declared input's
    {"__value__": ...} is unwrapped as validation does, and an undeclared input's link is still a link."""
    for value, expected in ((["decode", False], ("decode", 0)), (["decode", True and 0], ("decode", 0)),
                            (["decode", -1], ("decode", 0)), ({"__value__": ["decode", 0]}, ("decode", 0))):
        nodes = graph.read_prompt(toy_prompt(value), catalog, is_link)
        link = nodes["save"].links["images"]
        assert (link.node, link.slot) == expected, value
    prompt = toy_prompt()
    prompt["save"]["inputs"]["smuggled"] = ["decode", False]
    assert "smuggled" in graph.read_prompt(prompt, catalog, is_link)["save"].links
    # the attack of issue 28: a link whose slot is false still gets the image guarded where it is made
    found = classify(graph, catalog, toy_prompt(["decode", False]))
    assert found.sources == [("decode", 0)] and [(s.node, s.input, s.direct) for s in found.sinks] == [
        ("save", "images", True)]


@pytest.mark.parametrize("value, problem", [
    (["decode", 0.0], "has output index 0.0; expected an integer"),
    (["nowhere", 0], "names node 'nowhere', which is not in the prompt"),
    (["decode", 1], "asks for output 1 of node 'decode', which has 1 output"),
    (["decode", -2], "asks for output -2 of node 'decode', which has 1 output"),
    (["decode", 0, 0], "is neither a value nor a link ComfyUI can follow"),
    ([6, 0], "is neither a value nor a link ComfyUI can follow"),
    ({"__value__": ["decode", "0"]}, "is neither a value nor a link ComfyUI can follow"),
])
def test_what_cannot_be_classified_with_certainty_is_refused(graph, catalog, value, problem):
    with pytest.raises(graph.GraphRefused, match="node 'save' \\(SaveImage\\) input 'images': .*" + problem.replace(
            "(", "\\(").replace(")", "\\)")):
        graph.read_prompt(toy_prompt(value), catalog, is_link)


@pytest.mark.parametrize("prompt, problem", [
    ({"a": ["not", "a node"]}, "node 'a': expected an object with class_type and inputs"),
    ({"a": {"class_type": 5, "inputs": {}}}, "node 'a': class_type must be a text"),
    ({"a": {"class_type": "NoSuchNode", "inputs": {}}}, "node type 'NoSuchNode' is not installed"),
    ({"a": {"class_type": "SaveImage", "inputs": []}}, "inputs must be an object"),
    ([], "the prompt must be an object of nodes"),
])
def test_malformed_nodes_are_refused(graph, catalog, prompt, problem):
    with pytest.raises(graph.GraphRefused, match=problem):
        graph.read_prompt(prompt, catalog, is_link)


def test_a_cycle_is_refused(graph, catalog):
    prompt = {"a": {"class_type": "ImageInvert", "inputs": {"image": ["b", 0]}},
              "b": {"class_type": "ImageInvert", "inputs": {"image": ["a", 0]}},
              "save": {"class_type": "SaveImage", "inputs": {"images": ["a", 0], "filename_prefix": "x"}}}
    with pytest.raises(graph.GraphRefused, match="depends on itself"):
        classify(graph, catalog, prompt)


def test_images_are_guarded_where_they_are_made_and_again_where_they_leave_after_a_transform(graph, catalog):
    prompt = toy_prompt(("invert", 0), invert={"class_type": "ImageInvert", "inputs": {"image": ["decode", 0]}})
    found = classify(graph, catalog, prompt)
    assert found.sources == [("decode", 0)]                       # not the invert: a transform of guarded pixels
    assert [(s.node, s.link.node, s.direct) for s in found.sinks] == [("save", "invert", False)]
    assert found.refused == []


def test_every_kind_of_image_maker_is_a_source(graph, catalog):
    """Decoders, loaders, generators of their own pixels (no IMAGE input) and transforms of anything that is
    not a guarded image (a mask from a loader, a model) are sources; pure transforms of guarded images are not."""
    extra = {
        "tiled": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["sampler", 0], "vae": ["load", 2],
                                                             "tile_size": 512, "overlap": 64, "temporal_size": 64,
                                                             "temporal_overlap": 8}},
        "file": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "empty": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "mask": {"class_type": "MaskToImage", "inputs": {"mask": ["file", 1]}},
        "grey": {"class_type": "MaskToImage", "inputs": {"mask": ["solid", 0]}},
        "solid": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["decode", 0], "image2": ["file", 0]}},
        "composite": {"class_type": "ImageCompositeMasked", "inputs": {
            "destination": ["empty", 0], "source": ["decode", 0], "x": 0, "y": 0, "resize_source": False,
            "mask": ["file", 1]}},
    }
    found = classify(graph, catalog, toy_prompt(("batch", 0), **extra))
    assert sorted(found.sources) == sorted([("decode", 0), ("tiled", 0), ("file", 0), ("empty", 0), ("mask", 0),
                                            ("grey", 0), ("composite", 0)])


@pytest.mark.parametrize("output, value, name", [
    ("MaskPreview", {"mask": ["m", 0]}, "mask"),
    ("SaveLatent", {"samples": ["sampler", 0], "filename_prefix": "x"}, "samples"),
    ("SaveLatent", {"samples": ["encode", 0], "filename_prefix": "x"}, "samples"),
    ("PreviewAny", {"source": ["m", 0]}, "source"),
    ("PreviewAny", {"source": ["sampler", 0]}, "source"),
    ("SaveTrainingDataset", {"latents": ["sampler", 0], "conditioning": ["pos", 0], "folder_name": "d",
                             "shard_size": 1}, "latents"),
])
def test_outputs_the_policy_cannot_inspect_are_refused_unless_allowed(graph, catalog, output, value, name):
    prompt = toy_prompt()
    prompt.update({
        "m": {"class_type": "ImageToMask", "inputs": {"image": ["decode", 0], "channel": "red"}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["decode", 0], "vae": ["load", 2]}},
        "out": {"class_type": output, "inputs": value}})
    found = classify(graph, catalog, prompt)
    assert len(found.refused) == 1
    assert found.refused[0].startswith(f"node 'out' ({output}) input '{name}' receives ")
    assert f'add "{output}" to output.allow_uninspected' in found.refused[0]
    allowed = classify(graph, catalog, prompt, allow_uninspected=[output])
    assert allowed.refused == [] and len(allowed.allowed) == 1


def test_text_made_from_text_may_be_shown_images_as_text_are_scored(graph, catalog):
    prompt = toy_prompt()
    prompt.update({
        "s": {"class_type": "StringConcatenate", "inputs": {"string_a": "a", "string_b": "b", "delimiter": " "}},
        "text": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}},
        "crop": {"class_type": "ImageCrop", "inputs": {"image": ["decode", 0], "width": 4, "height": 4, "x": 0,
                                                      "y": 0}},
        "pixels": {"class_type": "PreviewAny", "inputs": {"source": ["crop", 0]}}})
    found = classify(graph, catalog, prompt)
    assert found.refused == []
    assert sorted((s.node, s.input, s.direct) for s in found.sinks) == [("pixels", "source", False),
                                                                       ("save", "images", True)]


def test_measuring_nodes_read_sources_as_made_and_release_statistics(graph, catalog):
    prompt = toy_prompt()
    prompt.update({
        "score": {"class_type": "RSToyWorldRedScore", "inputs": {"threshold": 0.03, "temperature": 0.02}},
        "rate": {"class_type": "RSSafetyRate", "inputs": {"images": ["decode", 0], "safety_score": ["score", 0]}},
        "crop": {"class_type": "ImageCrop", "inputs": {"image": ["decode", 0], "width": 4, "height": 4, "x": 0,
                                                      "y": 0}},
        "rate2": {"class_type": "RSSafetyRate", "inputs": {"images": ["crop", 0], "safety_score": ["score", 0]}},
        "sadi": {"class_type": "RSSaDiIndex", "inputs": {"unsafe_rate": ["rate", 0], "disruption": ["rate2", 0],
                                                         "alpha1": 0.5, "alpha2": 0.5}}})
    found = classify(graph, catalog, prompt)
    assert found.raw_readers == {("rate", "images")}             # the crop reads guarded pixels
    assert found.refused == [] and [s.node for s in found.sinks] == ["save"]
    assert found.kinds[("rate", 0)] == graph.CLEAN


def test_a_video_is_guarded_where_its_frames_go_in(graph, catalog):
    prompt = toy_prompt()
    prompt.update({
        "video": {"class_type": "CreateVideo", "inputs": {"images": ["invert", 0], "fps": 8.0}},
        "invert": {"class_type": "ImageInvert", "inputs": {"image": ["decode", 0]}},
        "out": {"class_type": "SaveVideo", "inputs": {"video": ["video", 0], "filename_prefix": "v",
                                                      "format": "auto", "codec": "auto"}}})
    found = classify(graph, catalog, prompt)
    assert found.refused == []
    assert sorted((s.node, s.input) for s in found.sinks) == [("save", "images"), ("video", "images")]


def test_concept_lists_are_not_prompts(graph, catalog):
    prompt = {"d": {"class_type": "RSDualLatentInputDetector", "inputs": {
        "clip": ["c", 1], "text": "a red circle", "unsafe_concepts": "blood", "safe_concepts": "calm",
        "k": 3, "threshold": 0.5, "safe_suffix": ""}},
        "c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}}}
    nodes = graph.read_prompt(prompt, catalog, is_link)
    texts = graph.encoder_texts(nodes)
    assert texts == [("d", "text")]                  # not unsafe_concepts, safe_concepts, safe_suffix


LINKISH = [["6", 0], ["6", False], ["6", True], ["6", -1], ["6", 0.0], ["6", 2.5], [6, 0], ["6"], ["6", 0, 1], [],
           ("6", 0), ["6", "0"], ["6", None], [["6"], 0], {"__value__": ["6", 0]}, "6", 6, None, ["", 0],
           ["6", float("nan")], ["6", 10 ** 30]]


def test_the_packs_link_rule_is_comfyuis(graph):
    """steering/prompt_format.py (read by the evaluation command and the node checks, no ComfyUI import) answers
    as ComfyUI's own is_link for every kind of value."""
    prompt_format = pure.module("steering.prompt_format")
    assert [prompt_format.is_link(v) for v in LINKISH] == [is_link(v) for v in LINKISH]
    assert sum(is_link(v) for v in LINKISH) == 9            # the list tests both answers
