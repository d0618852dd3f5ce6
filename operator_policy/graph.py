"""The submitted prompt as ComfyUI will run it, and where the policy's guards go: pure functions.

A prompt (API format: node id -> {"class_type", "inputs"}) is read with exactly the rules ComfyUI applies
when it validates and runs it (execution.py / comfy_execution/graph.py, 0.3.75 and upstream 0.38):

* an input is a link when ComfyUI's own ``is_link`` says so (a list [node id string, int or float slot];
  a JSON boolean is a Python int, so ``["6", false]`` is slot 0; a negative slot counts from the end),
  whether or not the node declares the input (undeclared links are still run and passed on), and after a
  declared input's ``{"__value__": v}`` wrapper is taken off (validation unwraps it in place, so a
  wrapped list becomes a link when the prompt runs);
* anything the policy cannot classify with certainty refuses the prompt (:class:`GraphRefused`, a 400
  for the client): a declared input holding a list that is not a link, a link to a node that is not in
  the prompt, a slot that is a float or out of range, a node that is not an object, an unknown class.

Classification (:func:`classify`) decides, for every value the graph makes:

* every IMAGE is scored and censored *where it is made* (a **source guard**) unless its node is a known
  pure image transform (outputs computed only from its IMAGE inputs and settings) of already guarded
  images; so whatever a graph does afterwards (invert, crop into strips, split channels, pad onto a large
  canvas) it does to censored pixels. Every IMAGE that reaches a node which releases it (an output node)
  is scored again there (a **sink guard**) unless it is exactly a source guard's output, so images
  composed from benign pieces are judged as they leave;
* every other value is *clean* (computed only from settings, text and loaded models, never from pixels)
  or *uninspected* (latents, masks, video, audio, unknown types, data derived from images or computed by a
  model). A releasing node that receives an uninspected value is refused unless the operator allow-lists
  its class (``output.allow_uninspected``).

Node roles come from the node classes themselves (``NodeInfo.role``: the pack's measuring nodes, which read
the images as generated and release statistics, never pixels) and from :data:`PURE_CORE_NODES`, ComfyUI's
own transforms read from their source. No ComfyUI import: the catalogue of node classes and ComfyUI's
``is_link`` are passed in (steering/comfy_compat.py provides the real ones).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..steering.prompt_format import WIDGET_TYPES

IMAGE = "IMAGE"
CLEAN, UNINSPECTED = "clean", "uninspected"

DATA_TYPES = WIDGET_TYPES
"""Settings and text (the widget types): clean when computed only from clean inputs that are not models."""
HANDLE_TYPES = frozenset({
    "MODEL", "CLIP", "VAE", "CONDITIONING", "CONTROL_NET", "CLIP_VISION", "CLIP_VISION_OUTPUT", "STYLE_MODEL",
    "UPSCALE_MODEL", "LATENT_UPSCALE_MODEL", "GLIGEN", "SAMPLER", "SIGMAS", "NOISE", "GUIDER", "HOOKS",
    "HOOK_KEYFRAMES", "TIMESTEPS_RANGE", "MODEL_PATCH", "PHOTOMAKER", "LORA_MODEL", "LATENT_OPERATION",
    "AUDIO_ENCODER", "STEERING_VECTOR", "STEERING_VECTOR_SET", "SAFETY_SCORE", "ATTRIBUTE_CLASSIFIER",
    "STEERING_LOSS"})
"""Models, conditionings and settings objects: clean when made from clean inputs. Every type not named here or
in DATA_TYPES (LATENT, MASK, VIDEO, AUDIO, "*", a custom node's own types) may hold pixels: uninspected."""

PURE_CORE_NODES = frozenset({
    # nodes.py
    "ImageBatch", "ImageInvert", "ImagePadForOutpaint", "ImageScale", "ImageScaleBy",
    # comfy_extras/nodes_images.py
    "ImageCrop", "ImageFlip", "ImageFromBatch", "ImageRotate", "ImageScaleToMaxDimension", "ImageStitch",
    "RepeatImageBatch", "ResizeAndPadImage", "ImageAddNoise", "GetImageSize",
    # comfy_extras/nodes_post_processing.py
    "ImageBlend", "ImageBlur", "ImageQuantize", "ImageScaleToTotalPixels", "ImageSharpen",
    # comfy_extras/nodes_mask.py
    "CropMask", "FeatherMask", "GrowMask", "ImageColorToMask", "ImageCompositeMasked", "ImageToMask",
    "InvertMask", "MaskComposite", "MaskToImage", "SolidMask", "ThresholdMask",
    # comfy_extras/nodes_compositing.py, nodes_morphology.py, nodes_canny.py, nodes_rebatch.py, nodes_flux.py
    "JoinImageWithAlpha", "PorterDuffImageComposite", "SplitImageWithAlpha", "Morphology", "ImageRGBToYUV",
    "ImageYUVToRGB", "Canny", "RebatchImages", "FluxKontextImageScale",
    # comfy_extras/nodes_dataset.py
    "AdjustBrightness", "AdjustContrast", "CenterCropImages", "RandomCropImages", "NormalizeImages",
})
"""ComfyUI nodes (0.3.75 and upstream 0.38) whose every output is computed only from their inputs and settings:
no model, no file, no content of their own."""

IMAGE_CONTAINERS = frozenset({"CreateVideo"})
"""ComfyUI nodes (comfy_extras/nodes_video.py, 0.3.75 and 0.38) that pack their IMAGE inputs, unchanged, into a
value of another type (a VIDEO): their IMAGE inputs are guarded as images leaving (sink guards) and their output
counts as clean when their other inputs are."""

MEASURING = "measuring"            # NodeInfo.role: reads images as generated, releases statistics only
IMAGE_TRANSFORM = "image_transform"  # NodeInfo.role: a pure transform (as PURE_CORE_NODES)
POLICY = "policy"                  # NodeInfo.role: the policy's own inserted nodes


class GraphRefused(ValueError):
    """The policy cannot read or allow this prompt; the message names the node, the input and the problem."""


@dataclass(frozen=True)
class InputSpec:
    type: str                       # declared type ("COMBO" for lists of options)
    category: str = "required"      # required / optional / hidden
    raw_link: bool = False


@dataclass(frozen=True)
class NodeInfo:
    """What the policy needs of a node class."""
    inputs: Mapping[str, InputSpec]
    outputs: tuple[str, ...]
    output_node: bool = False
    releases_ui: bool = False       # its results leave the server (an output node, or upstream's intermediate output)
    role: str | None = None
    concept_inputs: frozenset[str] = frozenset()   # text inputs that name concepts, not prompts


Catalog = Callable[[str], "NodeInfo | None"]


@dataclass(frozen=True)
class Link:
    node: str
    slot: int


@dataclass
class Node:
    id: str
    class_type: str
    info: NodeInfo
    links: dict[str, Link] = field(default_factory=dict)    # every input ComfyUI resolves as a link
    literals: dict[str, Any] = field(default_factory=dict)  # declared inputs ComfyUI passes as values


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def unwrap(value: Any) -> Any:
    """A declared input's value as ComfyUI runs it: validation replaces ``{"__value__": v}`` by ``v``."""
    return value["__value__"] if isinstance(value, dict) and "__value__" in value else value


def read_link(value: Any, is_link: Callable[[Any], bool], output_types: Callable[[str], tuple[str, ...] | None],
              where: str) -> Link | None:
    """The link `value` stands for (slot normalised as ComfyUI indexes it), None for a plain value, or
    :class:`GraphRefused` for a link ComfyUI would not run as written."""
    if not is_link(value):
        return None
    node, slot = value
    if isinstance(slot, float):
        raise GraphRefused(f"{where}: link {_describe(value)} has output index {slot!r}; expected an integer")
    slot = int(slot)                # True / False are 1 / 0, as ComfyUI indexes them
    types = output_types(node)
    if types is None:
        raise GraphRefused(f"{where}: link {_describe(value)} names node {node!r}, which is not in the prompt")
    if not -len(types) <= slot < len(types):
        raise GraphRefused(f"{where}: link {_describe(value)} asks for output {slot} of node {node!r}, which has "
                           f"{len(types)} output{'s' * (len(types) != 1)}")
    return Link(node, slot % len(types))


def read_prompt(prompt: Any, catalog: Catalog, is_link: Callable[[Any], bool],
                external: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Node]:
    """Every node of `prompt` with its links and values as ComfyUI runs them. `external`: node id -> output
    types of nodes outside `prompt` that its links may name (a node expansion's parent prompt)."""
    if not isinstance(prompt, dict):
        raise GraphRefused(f"the prompt must be an object of nodes; got {type(prompt).__name__}")
    infos: dict[str, NodeInfo] = {}
    for node_id, node in prompt.items():
        where = f"node {node_id!r}"
        if not isinstance(node, dict):
            raise GraphRefused(f"{where}: expected an object with class_type and inputs; got {_describe(node)}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str):
            raise GraphRefused(f"{where}: class_type must be a text; got {_describe(class_type)}")
        info = catalog(class_type)
        if info is None:
            raise GraphRefused(f"{where}: node type {class_type!r} is not installed on this server")
        if not isinstance(node.get("inputs", {}), dict):
            raise GraphRefused(f"{where} ({class_type}): inputs must be an object; got {_describe(node.get('inputs'))}")
        infos[str(node_id)] = info

    def output_types(node_id: Any) -> tuple[str, ...] | None:
        if isinstance(node_id, str) and node_id in infos:
            return infos[node_id].outputs
        return (external or {}).get(node_id) if isinstance(node_id, str) else None

    nodes = {}
    for node_id, node in prompt.items():
        info = infos[str(node_id)]
        read = Node(str(node_id), node["class_type"], info)
        for name, value in node.get("inputs", {}).items():
            declared = info.inputs.get(name)
            where = f"node {node_id!r} ({node['class_type']}) input {name!r}"
            if declared is not None and declared.category != "hidden":
                value = unwrap(value)
            link = read_link(value, is_link, output_types, where)
            if link is not None:
                read.links[name] = link
            elif isinstance(value, list) and declared is not None and declared.category != "hidden":
                raise GraphRefused(f"{where}: {_describe(value)} is neither a value nor a link ComfyUI can follow "
                                   f"([node id, output index])")
            elif declared is not None:
                read.literals[name] = value
        nodes[read.id] = read
    return nodes


# ---------------------------------------------------------------- classification

@dataclass(frozen=True)
class Sink:
    """An IMAGE input of a node that releases it: scored again there unless `direct` (its value is exactly a
    source guard's output). `link` is None for an image given as a value (by a node expansion)."""
    node: str
    input: str
    link: Link | None
    direct: bool


@dataclass
class Classification:
    kinds: dict[tuple[str, int], str]      # every output used or not: IMAGE, CLEAN or UNINSPECTED
    sources: list[tuple[str, int]]         # IMAGE outputs guarded where they are made
    sinks: list[Sink]
    raw_readers: set[tuple[str, str]]      # (node, input) of measuring nodes that read a source as generated
    allowed: list[str]                     # uninspected values let out by the operator's allow list
    refused: list[str]                     # why the prompt cannot run


def classify(nodes: Mapping[str, Node], allow_uninspected: Iterable[str] = (),
             trusted_transforms: Iterable[str] = (),
             external_kinds: Mapping[tuple[str, int], str] | None = None,
             external_types: Mapping[str, tuple[str, ...]] | None = None) -> Classification:
    """Where the guards go and what is refused (see the module docstring). `external_kinds` / `external_types`:
    the kinds and output types of nodes outside `nodes` that links name (a node expansion's parent)."""
    allow, trusted = set(allow_uninspected), set(trusted_transforms)
    kinds: dict[tuple[str, int], str] = {}
    visiting: set[str] = set()

    def output_type(link: Link) -> str:
        if link.node in nodes:
            return nodes[link.node].info.outputs[link.slot]
        return (external_types or {})[link.node][link.slot]

    def object_literals(node: Node) -> dict[str, str]:
        """Values given directly (not linked) to inputs of a type that may hold pixels: a node expansion can put
        a tensor there (a submitted JSON prompt cannot)."""
        return {name: node.info.inputs[name].type for name, value in node.literals.items()
                if node.info.inputs[name].type not in DATA_TYPES and value is not None}

    def is_pure(node: Node) -> bool:
        return node.class_type in PURE_CORE_NODES or node.class_type in trusted or node.info.role == IMAGE_TRANSFORM

    def kind_of(link: Link) -> str:
        if link.node not in nodes:
            return (external_kinds or {}).get((link.node, link.slot), UNINSPECTED)
        if (link.node, link.slot) not in kinds:
            resolve(nodes[link.node])
        return kinds[(link.node, link.slot)]

    def resolve(node: Node) -> None:
        if node.id in visiting:
            raise GraphRefused(f"node {node.id!r} ({node.class_type}) depends on itself (a cycle)")
        visiting.add(node.id)
        inputs = [(kind_of(link), output_type(link)) for link in node.links.values()]
        inputs += [(UNINSPECTED, spec) for spec in object_literals(node).values()]
        visiting.discard(node.id)
        all_clean = all(k == CLEAN for k, _ in inputs)
        for slot, kind in enumerate(node.info.outputs):
            if kind == IMAGE:
                value = IMAGE
            elif node.info.role == MEASURING:
                value = CLEAN
            elif node.class_type in IMAGE_CONTAINERS:
                value = CLEAN if all(k in (CLEAN, IMAGE) for k, _ in inputs) else UNINSPECTED
            elif is_pure(node) or kind in HANDLE_TYPES:
                value = CLEAN if all_clean else UNINSPECTED
            elif kind in DATA_TYPES:
                value = CLEAN if all_clean and not any(t in HANDLE_TYPES for _, t in inputs) else UNINSPECTED
            else:
                value = UNINSPECTED
            kinds[(node.id, slot)] = value

    for node in nodes.values():
        if (node.id, 0) not in kinds:
            resolve(node)

    sources = []
    for node in nodes.values():
        image_slots = [s for s, t in enumerate(node.info.outputs) if t == IMAGE]
        if not image_slots or node.info.role == POLICY:
            continue
        linked = [(kind_of(link), output_type(link)) for link in node.links.values()]
        transforms_guarded_images = is_pure(node) and any(k == IMAGE for k, _ in linked) and \
            all(k in (IMAGE, CLEAN) for k, _ in linked) and not object_literals(node)
        if not transforms_guarded_images:
            sources += [(node.id, s) for s in image_slots]
    source_set = set(sources)

    sinks, raw_readers, allowed, refused = [], set(), [], []

    def uninspected(node, what: str) -> None:
        """Data the policy cannot inspect reaching `node`: allowed where the operator allow-listed its class,
        else refused with the policy field that would allow it."""
        if node.class_type in allow:
            allowed.append(what)
        else:
            refused.append(f"{what}, which the safety policy cannot inspect; the server does not release it. An "
                           f"operator may allow it: add \"{node.class_type}\" to output.allow_uninspected in the "
                           f"policy")

    for node in nodes.values():
        if node.class_type in IMAGE_CONTAINERS:
            sinks += [Sink(node.id, name, link, (link.node, link.slot) in source_set)
                      for name, link in node.links.items() if kind_of(link) == IMAGE]
        if node.info.role == MEASURING:
            raw_readers |= {(node.id, name) for name, link in node.links.items()
                            if kind_of(link) == IMAGE and (link.node, link.slot) in source_set}
            continue
        if not node.info.releases_ui or node.info.role == POLICY:
            continue
        for name, spec in object_literals(node).items():
            what = f"node {node.id!r} ({node.class_type}) input {name!r} is given a {spec} value directly"
            if spec == IMAGE:
                sinks.append(Sink(node.id, name, None, False))
            else:
                uninspected(node, what)
        for name, link in node.links.items():
            kind = kind_of(link)
            declared = node.info.inputs.get(name)
            if kind == IMAGE or (declared is not None and declared.type == IMAGE):
                sinks.append(Sink(node.id, name, link, (link.node, link.slot) in source_set))
            elif kind == UNINSPECTED:
                what = (f"node {node.id!r} ({node.class_type}) input {name!r} receives {output_type(link)} data from "
                        f"node {link.node!r} ({nodes[link.node].class_type if link.node in nodes else 'outside'})")
                uninspected(node, what)
    return Classification(kinds, sources, sinks, raw_readers, allowed, refused)


# ---------------------------------------------------------------- texts and samplers

def upstream_sources(nodes: Mapping[str, Node], link: Link, sources: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """The guarded sources (of `sources`) that the value at `link` is computed from (itself included)."""
    wanted, found, seen, pending = set(sources), [], set(), [link]
    while pending:
        current = pending.pop()
        if (current.node, current.slot) in wanted and (current.node, current.slot) not in found:
            found.append((current.node, current.slot))
            continue
        if current.node in seen or current.node not in nodes:
            continue
        seen.add(current.node)
        pending += list(nodes[current.node].links.values())
    return sorted(found)


def encoder_texts(nodes: Mapping[str, Node]) -> list[tuple[str, str]]:
    """(node id, input name) of every literal text that reaches a text encoder: the STRING inputs of nodes that
    output CONDITIONING, and of every node that feeds them a STRING (followed upstream), except the inputs a
    node class marks as concept lists."""
    found, seen = [], set()
    pending = [n.id for n in nodes.values() if "CONDITIONING" in n.info.outputs]
    while pending:
        node = nodes.get(pending.pop())
        if node is None or node.id in seen:
            continue
        seen.add(node.id)
        for name, value in node.literals.items():
            spec = node.info.inputs.get(name)
            if isinstance(value, str) and spec is not None and spec.type == "STRING" \
                    and name not in node.info.concept_inputs:
                found.append((node.id, name))
        for link in node.links.values():
            if link.node in nodes and nodes[link.node].info.outputs[link.slot] == "STRING":
                pending.append(link.node)
    return sorted(found)


def sampler_positives(nodes: Mapping[str, Node]) -> list[tuple[str, str]]:
    """(node id, "positive") of every sampler or guider (a node whose input named positive is fed CONDITIONING
    and that returns none), where the policy's steering goes in."""
    found = []
    for node in nodes.values():
        link = node.links.get("positive")
        if link is not None and "CONDITIONING" not in node.info.outputs and link.node in nodes \
                and nodes[link.node].info.outputs[link.slot] == "CONDITIONING":
            found.append((node.id, "positive"))
    return sorted(found)


# ---------------------------------------------------------------- rewriting

def links_to(prompt: dict, nodes: Mapping[str, Node], target: tuple[str, int]) -> list[tuple[str, str]]:
    """(node id, input) of every input of `prompt` whose link (as read) is `target`."""
    return [(node.id, name) for node in nodes.values() for name, link in node.links.items()
            if (link.node, link.slot) == target]


def fresh_id(taken: set, stem: str) -> str:
    node_id, n = stem, 1
    while node_id in taken:
        n += 1
        node_id = f"{stem}-{n}"
    taken.add(node_id)
    return node_id


def remove_nodes_of(prompt: dict, class_types: set[str], input_names: tuple[str, ...], is_link) -> int:
    """Take out nodes of `class_types` a client sent (e.g. a prompt copied from /history, with the server's own
    guards in it): their consumers get the node's input (the first of `input_names` it has) back."""
    removed = {str(k): v for k, v in prompt.items() if isinstance(v, dict) and v.get("class_type") in class_types}
    for node_id in removed:
        prompt.pop(node_id, None)
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for name, value in list(inputs.items()) if isinstance(inputs, dict) else ():
            hops = 0
            while is_link(unwrap(value)) and str(unwrap(value)[0]) in removed and hops <= len(removed):
                inner = removed[str(unwrap(value)[0])].get("inputs") or {}
                value = next((inner[n] for n in input_names if n in inner), None)
                hops += 1
            inputs[name] = value
    return len(removed)
