"""Every node of the pack, every input, every kind of hostile value: the pack's own clear error.

The cases are generated from the node schemas (the pack's own node list), so a new node or
input is covered without editing this file. Prompts go through ComfyUI's real validation
(execution.validate_prompt, as POST /prompt does) and, for values only known at run time
(linked inputs, tensors, vector sets), through the nodes' real execute path.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import uuid

import pytest
import torch

from comfy_execution.graph_utils import GraphBuilder, Node
from devtools.session import PromptError

# Stock ComfyUI producers of the connected types (only validated here, never run, except where said).
STOCK_PRODUCERS = {
    "MODEL": ("CheckpointLoaderSimple", 0), "CLIP": ("CheckpointLoaderSimple", 1),
    "VAE": ("CheckpointLoaderSimple", 2), "CONDITIONING": ("CLIPTextEncode", 0),
    "LATENT": ("EmptyLatentImage", 0), "IMAGE": ("EmptyImage", 0), "MASK": ("SolidMask", 0),
    "FLOAT": ("PrimitiveFloat", 0), "INT": ("PrimitiveInt", 0), "STRING": ("PrimitiveString", 0),
    "BOOLEAN": ("PrimitiveBoolean", 0), "*": ("EmptyImage", 0),
}
WIDGETS = {"FLOAT", "INT", "STRING", "BOOLEAN", "COMBO"}
ONE_MB = "violence " * (1024 * 1024 // 9)
# Documented exceptions to "a blank text is refused when the declared default is not blank".
EMPTY_ALLOWED = {("RSDualLatentInputDetector", "safe_suffix")}    # no suffix
EMPTY_REFUSED = {("RSCLIPScore", "prompt")}                       # the images are scored against it
# Nodes whose every prompt fails validation: the server policy's stand-in for a refused prompt.
ALWAYS_REFUSED = {"RSPolicyRefusal"}


@pytest.fixture(scope="module")
def pack(comfy, tmp_path_factory):
    """The pack's nodes, with one file in every file list (vectors, reference files, safety CLIPs), so that
    every combo has a valid value; the folders are removed from ComfyUI's paths afterwards."""
    import folder_paths

    root = tmp_path_factory.mktemp("hostile-files")
    vectors, clips = root / "steering_vectors", root / "safety_clip"
    (clips / "tiny").mkdir(parents=True)
    (clips / "tiny" / "config.json").write_text("{}")
    vectors.mkdir()
    (vectors / "listed.safetensors").write_bytes(b"")   # only listed, never loaded
    (vectors / "listed.pth").write_bytes(b"")
    added = [("steering_vectors", str(vectors)), ("safety_clip", str(clips))]
    for kind, path in added:
        folder_paths.add_model_folder_path(kind, path)
    nodes = comfy.module("nodes").all_nodes()
    yield {cls.define_schema().node_id: cls for cls in nodes}
    for kind, path in added:
        folder_paths.folder_names_and_paths[kind][0].remove(path)


def inputs_of(cls):
    return [(inp, str(inp.get_io_type())) for inp in cls.define_schema().inputs]


def is_widget(inp, io_type) -> bool:
    return io_type in WIDGETS and not getattr(inp, "force_input", False)


def good_value(inp, io_type):
    default = getattr(inp, "default", None)
    if io_type == "COMBO":
        return default if default in inp.options else inp.options[0]
    if io_type == "STRING":
        return default if isinstance(default, str) and default.strip() else "a photo of a cat"
    if default is not None:
        return default
    return {"FLOAT": 0.0 if inp.min is None else inp.min, "INT": 0 if inp.min is None else inp.min,
            "BOOLEAN": False}[io_type]


class PromptBuilder:
    """A valid API prompt around one node: widgets at valid values, connected inputs from real producers."""

    def __init__(self, comfy, pack):
        self.comfy, self.pack = comfy, pack
        self.graph = GraphBuilder(prefix="")
        self.made: dict[str, list] = {}

    def source(self, io_type: str, depth: int = 0) -> list:
        if io_type in self.made:
            return self.made[io_type]
        if io_type in STOCK_PRODUCERS:
            class_type, slot = STOCK_PRODUCERS[io_type]
            inputs = {"CheckpointLoaderSimple": {"ckpt_name": self.comfy.checkpoint_name},
                      "CLIPTextEncode": {"text": "a cat", "clip": None},
                      "EmptyLatentImage": {"width": 64, "height": 64, "batch_size": 1},
                      "EmptyImage": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
                      "SolidMask": {"value": 1.0, "width": 8, "height": 8},
                      "PrimitiveFloat": {"value": 0.5}, "PrimitiveInt": {"value": 1},
                      "PrimitiveString": {"value": "a cat"}, "PrimitiveBoolean": {"value": True}}[class_type]
            if class_type == "CLIPTextEncode":
                inputs["clip"] = self.source("CLIP", depth + 1)
            ref = self.graph.node(class_type, **inputs).out(slot)
        else:  # a custom type: the first pack node that outputs it
            assert depth < 6, f"no producer for {io_type}"
            producer = next(cls for cls in self.pack.values()
                            if io_type in [str(o.io_type) for o in cls.define_schema().outputs])
            schema = producer.define_schema()
            slot = [str(o.io_type) for o in schema.outputs].index(io_type)
            ref = self.node(producer, depth + 1).out(slot)
        self.made[io_type] = ref
        return ref

    def node(self, cls, depth: int = 0, **override) -> Node:
        values = {}
        for inp, io_type in inputs_of(cls):
            if inp.optional and inp.id not in override:
                continue
            values[inp.id] = (good_value(inp, io_type) if is_widget(inp, io_type)
                              else self.source(io_type, depth + 1))
        values.update(override)
        return self.graph.node(cls.define_schema().node_id, **values)


def build(comfy, pack, node_id, **override):
    b = PromptBuilder(comfy, pack)
    ref = b.node(pack[node_id], **override)
    b.graph.node("PreviewAny", id="out", source=ref.out(0))
    return b.graph.finalize(), ref.id


def validate(prompt: dict):
    import execution

    prompt = json.loads(json.dumps(prompt))  # what a client sends (NaN/Infinity literals included)
    return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))


def errors_of(result, node) -> list[str]:
    return [f"{e['message']}: {e['details']}" for e in result[3].get(node, {}).get("errors", [])]


def hostile_values(inp, io_type, node_id):
    """(label, value) pairs that the node must refuse for this input."""
    cases = []
    if io_type == "FLOAT":
        cases += [("NaN text", "NaN"), ("NaN", float("nan")), ("inf", float("inf")), ("-inf", float("-inf"))]
    if io_type == "INT":
        cases += [("NaN text", "NaN"), ("inf text", "inf"), ("fraction", "2.5")]
    if io_type in ("FLOAT", "INT"):
        if inp.max is not None:
            cases += [("above max", inp.max + 1), ("1e30", 10 ** 30 if io_type == "INT" else 1e30)]
        if inp.min is not None:
            cases += [("below min", inp.min - 1)]
    if io_type == "COMBO":
        cases += [("unknown option", "bogus"), ("empty option", "")]
    if io_type == "STRING":
        cases += [("1 MB text", ONE_MB), ("300 lines", "x\n" * 300)]
        if text_must_not_be_empty(node_id, inp):
            cases += [("empty", ""), ("blank", "  \n ")]
    return cases


def text_must_not_be_empty(node_id, inp) -> bool:
    if (node_id, inp.id) in EMPTY_ALLOWED:
        return False
    if (node_id, inp.id) in EMPTY_REFUSED:
        return True
    return bool((inp.default or "").strip())


def label_of(cls) -> str:
    """How the pack's errors name a node: as the user sees it (its display name)."""
    return cls.define_schema().display_name


def test_the_pack_node_list_is_what_comfyui_registered(comfy, pack):
    assert len(pack) >= 28
    for node_id, cls in pack.items():
        assert comfy.nodes.NODE_CLASS_MAPPINGS[node_id] is cls


def test_valid_prompts_of_every_node_pass_validation(comfy, pack):
    """The generated base prompts are valid, so every refusal below is caused by the hostile value."""
    failures = []
    for node_id in pack:
        prompt, node = build(comfy, pack, node_id)
        result = validate(prompt)
        if bool("out" not in result[2] or result[3]) != (node_id in ALWAYS_REFUSED):
            failures.append(f"{node_id}: {result[1]} {result[3]}")
    assert not failures, "\n".join(failures)


def test_every_widget_input_refuses_every_hostile_value_at_validation(comfy, pack):
    failures, checked = [], 0
    for node_id, cls in pack.items():
        label = label_of(cls)
        for inp, io_type in inputs_of(cls):
            if not is_widget(inp, io_type):
                continue
            for case, value in hostile_values(inp, io_type, node_id):
                prompt, node = build(comfy, pack, node_id, **{inp.id: value})
                result = validate(prompt)
                errors = errors_of(result, node)
                ours = [e for e in errors if f"{label}: " in e and f"input '{inp.id}'" in e]
                checked += 1
                if "out" in result[2] or not ours:
                    failures.append(f"{node_id}.{inp.id} <- {case}: {errors or result[1]}")
                elif any(len(e) > 2000 for e in errors):
                    failures.append(f"{node_id}.{inp.id} <- {case}: the error echoes the value back")
    assert checked > 150
    assert not failures, f"{len(failures)} of {checked} hostile values accepted or unclear:\n" + "\n".join(failures)


def test_blank_text_is_accepted_where_it_is_a_documented_value(comfy, pack):
    for node_id, cls in pack.items():
        for inp, io_type in inputs_of(cls):
            if node_id in ALWAYS_REFUSED:
                continue
            if io_type == "STRING" and is_widget(inp, io_type) and not text_must_not_be_empty(node_id, inp):
                prompt, node = build(comfy, pack, node_id, **{inp.id: ""})
                result = validate(prompt)
                assert "out" in result[2] and not result[3], f"{node_id}.{inp.id}: {result[3]}"


def test_declared_bounds_are_accepted_exactly(comfy, pack):
    """min and max themselves are valid: the layer enforces the schema, not something stricter."""
    for node_id, cls in pack.items():
        for inp, io_type in inputs_of(cls):
            if io_type in ("FLOAT", "INT") and is_widget(inp, io_type):
                for bound in (inp.min, inp.max):
                    if bound is None or bound > 1e12:
                        continue
                    prompt, node = build(comfy, pack, node_id, **{inp.id: bound})
                    result = validate(prompt)
                    # a node's own cross-input checks may still object (e.g. start after end): never the layer
                    assert not [e for e in errors_of(result, node) if f"input '{inp.id}' expects" in e], \
                        f"{node_id}.{inp.id} = {bound}: {errors_of(result, node)}"


# ---------------------------------------------------------------------------- values known only at run time

def placeholder(inp, io_type):
    if io_type in ("IMAGE",):
        return torch.zeros(1, 8, 8, 3)
    if io_type == "MASK":
        return torch.zeros(1, 8, 8)
    if io_type == "LATENT":
        return {"samples": torch.zeros(1, 4, 8, 8)}
    if io_type == "STEERING_VECTOR_SET":
        return (object(),)
    return object()


def degenerate_values(io_type):
    return {"IMAGE": [("zero-size image batch", torch.zeros(0, 8, 8, 3)), ("zero-width image", torch.zeros(1, 8, 0, 3))],
            "MASK": [("zero-size mask", torch.zeros(0, 8, 8))],
            "LATENT": [("zero-size latent", {"samples": torch.zeros(0, 4, 8, 8)})],
            "STEERING_VECTOR_SET": [("empty vector set", ())]}.get(io_type, [])


def run_time_arguments(cls):
    args = {}
    for inp, io_type in inputs_of(cls):
        if inp.optional:
            continue
        args[inp.id] = good_value(inp, io_type) if io_type in WIDGETS else placeholder(inp, io_type)
    return args


def test_every_input_is_checked_again_just_before_execute(comfy, pack):
    """Linked values are unknown at validation (ComfyUI passes None): the same checks run on the real values
    before the node's code, with InputValidationError naming the node and the input."""
    validation = comfy.module("nodes.validation")
    failures, checked = [], 0
    for node_id, cls in pack.items():
        label, base = label_of(cls), run_time_arguments(cls)
        try:  # the base arguments pass the checks (the node's own code may then fail on the placeholders)
            cls.execute(**base)
        except validation.InputValidationError as e:
            if node_id not in ALWAYS_REFUSED:
                failures.append(f"{node_id}: valid arguments refused: {e}")
        except Exception:  # noqa: BLE001
            pass
        for inp, io_type in inputs_of(cls):
            cases = (hostile_values(inp, io_type, node_id) if io_type in WIDGETS else degenerate_values(io_type))
            if not inp.optional and io_type not in WIDGETS:
                cases = cases + [("nothing connected", None)]
            for case, value in cases:
                checked += 1
                try:
                    cls.execute(**{**base, inp.id: value})
                    failures.append(f"{node_id}.{inp.id} <- {case}: ran")
                except validation.InputValidationError as e:
                    if f"{label}: " not in str(e) or f"input '{inp.id}'" not in str(e):
                        failures.append(f"{node_id}.{inp.id} <- {case}: unclear {e}")
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{node_id}.{inp.id} <- {case}: {type(e).__name__}: {e}")
    assert checked > 150
    assert not failures, f"{len(failures)} of {checked}:\n" + "\n".join(failures)


def test_a_linked_nan_is_refused_before_the_node_runs(comfy, pack):
    """End to end through the real executor: PrimitiveFloat lets NaN through; SaDi Index refuses it."""
    g = GraphBuilder(prefix="")
    nan = g.node("PrimitiveFloat", value=float("nan"))
    ok = g.node("PrimitiveFloat", value=0.5)
    g.node("RSSaDiIndex", unsafe_rate=nan.out(0), disruption=ok.out(0), alpha1=0.5, alpha2=0.5)
    with pytest.raises(PromptError) as info:
        comfy.run(g.finalize())
    assert info.value.exception_type.endswith("InputValidationError")
    assert "SaDi Index: input 'unsafe_rate' expects a finite number" in str(info.value)


def test_safety_score_with_nan_threshold_refuses_to_run(comfy, pack):
    """Fail closed: a NudeNet score with NaN detection_threshold never reports 'safe'; it is not built."""
    prompt, node = build(comfy, pack, "RSNudeNetScore", detection_threshold="NaN")
    result = validate(prompt)
    assert "out" not in result[2]
    assert any("input 'detection_threshold' expects a finite number in [0.0, 1.0]; got nan" in e
               for e in errors_of(result, node))
    with pytest.raises(comfy.module("nodes.validation").InputValidationError, match="detection_threshold"):
        pack["RSNudeNetScore"].execute(label_preset="stg_nudity", custom_labels="", detection_threshold=math.nan,
                                       threshold=0.0)


def test_a_nodes_own_check_waits_for_linked_inputs_and_runs_before_execute(comfy, pack):
    """ComfyUI passes None for linked inputs at validation; the node's own cross-input check (start before end)
    then runs on the real values before execute instead of failing on None."""
    validation = comfy.module("nodes.validation")
    node = pack["RSApplyHSpaceVector"]
    widgets = dict(strength=1.0, branches="cond_only", resize_mode="bilinear")
    assert node.validate_inputs(model=None, vector=None, start_percent=None, end_percent=0.2, **widgets) is True
    refused = node.validate_inputs(model=None, vector=None, start_percent=0.9, end_percent=0.2, **widgets)
    assert "Apply h-space Vector: start_percent (0.9) must not be after end_percent" in refused
    with pytest.raises(validation.InputValidationError, match=r"start_percent \(0.9\) must not be after end_percent"):
        node.execute(model=object(), vector=object(), start_percent=0.9, end_percent=0.2, **widgets)


# ---------------------------------------------------------------------------- hostile files

def _call_with_deadline(function, *args, seconds: float = 10.0):
    """function(*args) in a thread: (result, exception); a TimeoutError when it blocks (e.g. on a FIFO)."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["result"] = function(*args)
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return None, TimeoutError(f"{function.__name__}{args} blocked for {seconds}s")
    return outcome.get("result"), outcome.get("error")


def _safetensors(path, header: dict | str, data: bytes = b"") -> str:
    import struct

    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def _vector_metadata(**change) -> dict:
    metadata = {"format": "responsible-steering.vector", "format_version": "1", "method": "hspace_cvector",
                "arch": "sd1", "tensors": json.dumps({"c": {"shape": [2], "dtype": "F32"}})}
    metadata.update(change)
    return metadata


def _hostile_files(tmp_path) -> dict[str, str]:
    """Files that are not what a reader expects: a folder, devices, a FIFO."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    return {"a directory": str(folder), "/dev/zero": "/dev/zero", "/dev/urandom": "/dev/urandom", "a FIFO": str(fifo)}


def test_hostile_vector_files_raise_the_packs_error_naming_the_file(comfy, tmp_path):
    vf = comfy.module("steering.vector_file")
    entry = {"c": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    deep = "[" * 100000 + "]" * 100000
    cases = dict(_hostile_files(tmp_path))
    for label, header in {
        "metadata a list": {"__metadata__": ["x"], **entry},
        "metadata a string": {"__metadata__": "x", **entry},
        "metadata value an object": {"__metadata__": {**_vector_metadata(), "tensors": {"c": 1}}, **entry},
        "format_version a list": {"__metadata__": _vector_metadata(format_version=[1]), **entry},
        "tensors list of non-objects": {"__metadata__": _vector_metadata(tensors=json.dumps({"c": 5})), **entry},
        "shape a string": {"__metadata__": _vector_metadata(), "c": {"dtype": "F32", "shape": "2",
                                                                     "data_offsets": [0, 8]}},
        "offsets of strings": {"__metadata__": _vector_metadata(), "c": {"dtype": "F32", "shape": [2],
                                                                         "data_offsets": ["0", "8"]}},
        "training nested 100000 deep": {"__metadata__": _vector_metadata(training=deep), **entry},
        "tensors nested 100000 deep": {"__metadata__": _vector_metadata(tensors=deep), **entry},
    }.items():
        cases[label] = _safetensors(tmp_path / f"{label.replace(' ', '_')}.safetensors", header, b"\0" * 8)
    cases["header nested 100000 deep"] = _safetensors(tmp_path / "deep.safetensors", deep)
    failures = []
    for label, path in cases.items():
        _, error = _call_with_deadline(vf.load_vector, path)
        if type(error) is not vf.VectorFileError or path not in str(error):
            failures.append(f"{label}: {type(error).__name__}: {str(error)[:200]}")
    assert not failures, "\n".join(failures)


def test_hostile_reference_files_and_concept_dicts_raise_the_packs_error(comfy, tmp_path):
    ri = comfy.module("steering.reference_import")
    failures = []
    cases = dict(_hostile_files(tmp_path))
    (tmp_path / "zip-not-torch.pth").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    cases["a zip that is not torch"] = str(tmp_path / "zip-not-torch.pth")
    torch.save({"key": {"nested": torch.zeros(1)}}, str(tmp_path / "nested.pth"))
    cases["a dict of dicts"] = str(tmp_path / "nested.pth")
    for label, path in cases.items():
        _, error = _call_with_deadline(ri.import_reference, path)
        if type(error) is not ri.VectorFileError or path not in str(error):
            failures.append(f"{label}: {type(error).__name__}: {str(error)[:200]}")
    ram = ri.RAM_KEY if hasattr(ri, "RAM_KEY") else None
    for label, content in {"nested 100000 deep": "[" * 100000 + "]" * 100000, "a list": "[1, 2]",
                           "values of strings": '{"a cat": "0"}', "not UTF-8": b"\xff\xfe{"}.items():
        folder = tmp_path / f"dict-{label.replace(' ', '_')}"
        folder.mkdir()
        concept_dict = folder / "concept_dict.json"
        concept_dict.write_bytes(content if isinstance(content, bytes) else content.encode())
        if ram is not None:
            torch.save({ram: torch.zeros(81920, 2)}, str(folder / "sdisc.pth"))
            _, error = _call_with_deadline(ri.import_reference, str(folder / "sdisc.pth"))
            if isinstance(error, ri.VectorFileError) and str(concept_dict) in str(error):
                continue
            if error is None and label == "a list":
                continue            # a concept dict that is not an object is not used (columns are numbered)
            failures.append(f"concept dict {label}: {type(error).__name__}: {str(error)[:200]}")
    fifo_folder = tmp_path / "dict-fifo"
    fifo_folder.mkdir()
    os.mkfifo(fifo_folder / "concept_dict.json")
    if ram is not None:
        torch.save({ram: torch.zeros(81920, 2)}, str(fifo_folder / "sdisc.pth"))
        _, error = _call_with_deadline(ri.import_reference, str(fifo_folder / "sdisc.pth"))
        if type(error) is not ri.VectorFileError or "concept_dict.json" not in str(error):
            failures.append(f"concept dict FIFO: {type(error).__name__}: {str(error)[:200]}")
    assert not failures, "\n".join(failures)
