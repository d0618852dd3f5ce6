"""Workflows for the evaluation: UI or API format in, one API prompt per (prompt, seed) out.

Design:
* A workflow is read once (``load_template``): an API prompt is used as it is; a UI-format workflow
  (the frontend's JSON, with ``nodes`` and ``links``) is converted with the node definitions of a
  running server (``/object_info``), since only the server knows each node's widget order.
* *Marks* say which inputs the evaluation fills and which output it judges: the prompt text, the
  seed, the guidance scale (optional) and the output node whose images are judged. Each comes, in
  this order of precedence, from the command line (``NODE.INPUT``, or ``NODE`` for the output), from
  a tag in the node's title (``[eval:prompt]``, ``[eval:seed]``, ``[eval:guidance]``,
  ``[eval:output]``; a UI title is kept as the API prompt's ``_meta.title``), or is found in the
  graph: the one image output node (SaveImage / PreviewImage), the one sampler upstream of it with a
  literal seed (``seed`` or ``noise_seed``) and its ``cfg``, and the text of the node that encodes its
  ``positive`` conditioning. Anything ambiguous or missing is a WorkflowError naming the candidates.
* ``fill`` never mutates the template: it returns a deep copy with the values set. ``override``
  applies ``NODE.INPUT=VALUE`` settings (a configuration's differences, e.g. a steering strength).
* Nothing here imports ComfyUI: the scheduler's actors and the head node only handle JSON.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Callable

from steering.prompt_format import WIDGET_TYPES, is_link   # the pack's own (ComfyUI-free), as report.py's maths

CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
NOT_EXECUTED = {"Note", "MarkdownNote"}
OUTPUT_CLASSES = ("SaveImage", "PreviewImage")
SEED_INPUTS = ("seed", "noise_seed")
TAG = re.compile(r"\[eval:(prompt|seed|guidance|output)\]", re.I)


class WorkflowError(ValueError):
    """A workflow the evaluation cannot use: unreadable, or its marked inputs missing or ambiguous."""


@dataclass(frozen=True)
class InputRef:
    node: str
    input: str

    def __str__(self) -> str:
        return f"{self.node}.{self.input}"


@dataclass(frozen=True)
class Marks:
    """Where the evaluation writes the prompt text, the seed and the guidance, and which output it judges."""
    prompt: InputRef
    seed: InputRef
    guidance: InputRef | None
    output: str
    echoes: tuple[InputRef, ...] = ()   # inputs that get a copy of the prompt text (a judge's CLIP Score)


# ---------------------------------------------------------------------------- UI format -> API format

def is_widget(spec: list) -> bool:
    """Whether an input of a V1 INPUT_TYPES spec is a widget (a value in widgets_values), not a socket."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ui_to_api(workflow: dict, input_spec: Callable[[str], dict]) -> dict:
    """Convert a UI-format workflow (frontend JSON, version 0.4) to an API prompt.

    Widget values are matched to the node's widget inputs in schema order (required,
    then optional), skipping the frontend's control_after_generate values. A node's title,
    when set, is kept as ``_meta.title`` (where the evaluation's marks are read)."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        class_type = node["type"]
        if class_type in NOT_EXECUTED:
            continue
        if node.get("mode", 0) != 0:
            raise WorkflowError(f"node {node['id']} ({class_type}) is muted or bypassed; not supported here")
        spec = input_spec(class_type)
        ordered = list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values", [])
        if isinstance(values, dict):
            values = [values[name] for name, s in ordered if is_widget(s) and name in values]
        values = list(values)
        inputs = {}
        for name, s in ordered:
            if is_widget(s) and values:
                value = values.pop(0)
                inputs[name] = value
                options = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                if (s[0] == "INT" and values and isinstance(values[0], str) and values[0] in CONTROL_VALUES
                        and (options.get("control_after_generate") or name in SEED_INPUTS)):
                    values.pop(0)
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        entry = {"class_type": class_type, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt


def is_ui_format(workflow: dict) -> bool:
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def read_workflow(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            workflow = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WorkflowError(f"workflow {path}: cannot read it as JSON ({e})") from None
    if not isinstance(workflow, dict) or not workflow:
        raise WorkflowError(f"workflow {path}: expected a JSON object (API or UI format); got "
                            f"{type(workflow).__name__}")
    return workflow


def load_template(path: str, object_info: Callable[[], dict]) -> dict:
    """The workflow at `path` as an API prompt; `object_info` (a server's /object_info) is only asked for
    a UI-format workflow."""
    workflow = read_workflow(path)
    if is_ui_format(workflow):
        info = object_info()
        missing = sorted({n["type"] for n in workflow["nodes"] if n.get("type") not in info} - NOT_EXECUTED)
        if missing:
            raise WorkflowError(f"workflow {path}: the server knows no node types {missing}")
        return ui_to_api(workflow, lambda t: info[t]["input"])
    bad = [k for k, v in workflow.items() if not (isinstance(v, dict) and "class_type" in v)]
    if bad:
        raise WorkflowError(f"workflow {path}: an API prompt maps node ids to {{class_type, inputs}}; entries "
                            f"{bad[:5]} are not nodes (a UI workflow needs 'nodes' and 'links')")
    return workflow


# ---------------------------------------------------------------------------- marks

def parse_ref(text: str, what: str) -> InputRef:
    node, dot, name = text.rpartition(".")
    if not dot or not node or not name:
        raise WorkflowError(f"{what}: expected NODE.INPUT (e.g. 6.text); got {text!r}")
    return InputRef(node, name)


def upstream(prompt: dict, node_id: str) -> set[str]:
    """Every node `node_id` depends on (itself included)."""
    seen, todo = set(), [node_id]
    while todo:
        current = todo.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        todo += [v[0] for v in prompt[current].get("inputs", {}).values() if is_link(v)]
    return seen


def tagged(prompt: dict, role: str) -> list[str]:
    return [k for k, v in prompt.items()
            if any(m.lower() == role for m in TAG.findall(str(v.get("_meta", {}).get("title", ""))))]


def one(candidates: list[str], what: str, hint: str) -> str:
    if len(candidates) != 1:
        found = "none" if not candidates else ", ".join(candidates)
        raise WorkflowError(f"cannot tell the {what}: found {found}; {hint}")
    return candidates[0]


def check_ref(prompt: dict, ref: InputRef, what: str, literal: bool = True) -> InputRef:
    if ref.node not in prompt:
        raise WorkflowError(f"{what} {ref}: the workflow has no node {ref.node!r} (nodes: {sorted(prompt)[:20]})")
    inputs = prompt[ref.node].get("inputs", {})
    if ref.input not in inputs:
        raise WorkflowError(f"{what} {ref}: node {ref.node} ({prompt[ref.node]['class_type']}) has no input "
                            f"{ref.input!r} (inputs: {sorted(inputs)})")
    if literal and is_link(inputs[ref.input]):
        raise WorkflowError(f"{what} {ref}: that input is linked to node {inputs[ref.input][0]}; mark the input "
                            "where the value is written")
    return ref


def input_named(prompt: dict, node: str, names: tuple[str, ...], what: str) -> InputRef:
    inputs = prompt[node].get("inputs", {})
    found = [n for n in names if n in inputs and not is_link(inputs[n])]
    return InputRef(node, one(found, f"{what} input of node {node}", f"give it as {node}.INPUT"))


def find_marks(prompt: dict, prompt_input: str | None = None, seed_input: str | None = None,
               guidance_input: str | None = None, output_node: str | None = None) -> Marks:
    """The marks of `prompt` (see the module's docstring for the precedence); WorkflowError when one
    is missing or ambiguous. ``guidance_input="none"`` leaves the guidance as the workflow has it."""
    output = output_node or (tagged(prompt, "output") or [None])[0]
    if output is None:
        output = one([k for k, v in prompt.items() if v["class_type"] in OUTPUT_CLASSES], "output node to judge",
                     "give --output-node NODE or tag its title [eval:output]")
    if output not in prompt:
        raise WorkflowError(f"output node {output!r}: not in the workflow (nodes: {sorted(prompt)[:20]})")
    if not is_link(prompt[output].get("inputs", {}).get("images")):
        raise WorkflowError(f"output node {output} ({prompt[output]['class_type']}) has no linked 'images' input")
    above = upstream(prompt, output)

    samplers = [k for k in sorted(above) if any(n in prompt[k].get("inputs", {}) and
                                                 not is_link(prompt[k]["inputs"][n]) for n in SEED_INPUTS)]
    if seed_input:
        seed = check_ref(prompt, parse_ref(seed_input, "seed input"), "seed input")
    else:
        node = (tagged(prompt, "seed") or [None])[0] or one(
            samplers, f"sampler upstream of output node {output}", "give --seed-input NODE.INPUT or tag its "
            "title [eval:seed]")
        seed = input_named(prompt, node, SEED_INPUTS, "seed")

    if guidance_input == "none":
        guidance = None
    elif guidance_input:
        guidance = check_ref(prompt, parse_ref(guidance_input, "guidance input"), "guidance input")
    else:
        node = (tagged(prompt, "guidance") or [seed.node])[0]
        inputs = prompt[node].get("inputs", {})
        guidance = InputRef(node, "cfg") if "cfg" in inputs and not is_link(inputs["cfg"]) else None

    if prompt_input:
        text = check_ref(prompt, parse_ref(prompt_input, "prompt input"), "prompt input")
    else:
        node = (tagged(prompt, "prompt") or [None])[0]
        if node is None:
            positive = prompt[seed.node].get("inputs", {}).get("positive")
            node = positive_text_node(prompt, positive[0]) if is_link(positive) else None
        if node is None:
            raise WorkflowError(f"cannot tell the prompt text input: sampler {seed.node} has no linked 'positive' "
                                "conditioning that leads to a node with a 'text' input; give --prompt-input "
                                "NODE.INPUT or tag its title [eval:prompt]")
        text = input_named(prompt, node, ("text", "text_g", "prompt"), "prompt text")
    return Marks(text, seed, guidance, output)


def positive_text_node(prompt: dict, node: str) -> str | None:
    """The node with a literal text that conditioning `node` comes from (following conditioning links)."""
    seen = set()
    while node in prompt and node not in seen:
        seen.add(node)
        inputs = prompt[node].get("inputs", {})
        if any(n in inputs and not is_link(inputs[n]) for n in ("text", "text_g", "prompt")):
            return node
        nxt = [v[0] for n, v in inputs.items() if is_link(v) and "cond" in n.lower()]
        if len(nxt) != 1:
            return None
        node = nxt[0]
    return None


# ---------------------------------------------------------------------------- filling

def parse_override(text: str) -> tuple[InputRef, object]:
    """``NODE.INPUT=VALUE``: VALUE as JSON when it parses (numbers, true/false, quoted strings), else text."""
    target, eq, raw = text.partition("=")
    if not eq:
        raise WorkflowError(f"--set: expected NODE.INPUT=VALUE; got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return parse_ref(target.strip(), "--set"), value


def override(prompt: dict, settings: list[str]) -> dict:
    """A copy of `prompt` with each ``NODE.INPUT=VALUE`` of `settings` applied (the node must exist; a new
    input name is allowed, for optional inputs)."""
    out = copy.deepcopy(prompt)
    for text in settings:
        ref, value = parse_override(text)
        if ref.node not in out:
            raise WorkflowError(f"--set {text}: the workflow has no node {ref.node!r} (nodes: {sorted(out)[:20]})")
        out[ref.node].setdefault("inputs", {})[ref.input] = value
    return out


def fill(template: dict, marks: Marks, text: str, seed: int, guidance: float | None, filename_prefix: str) -> dict:
    """A copy of `template` with the prompt text, seed and (when both are given) guidance set, and the
    output node's file name prefix (when it has one) set to `filename_prefix`."""
    prompt = copy.deepcopy(template)
    for ref in (marks.prompt, *marks.echoes):
        prompt[ref.node]["inputs"][ref.input] = text
    prompt[marks.seed.node]["inputs"][marks.seed.input] = int(seed)
    if marks.guidance is not None and guidance is not None:
        prompt[marks.guidance.node]["inputs"][marks.guidance.input] = float(guidance)
    if "filename_prefix" in prompt[marks.output]["inputs"]:
        prompt[marks.output]["inputs"]["filename_prefix"] = filename_prefix
    return prompt


def fingerprint(template: dict) -> str:
    """A stable text of the template (what the results store compares a resumed configuration against)."""
    return json.dumps(template, sort_keys=True, separators=(",", ":"))
