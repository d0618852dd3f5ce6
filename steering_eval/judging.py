"""Judging every image with the pack's own scores, inside the graph.

Design: judging runs where the model runs, on the ComfyUI server (GPU, models on its disk), so the
scheduler's workers only move JSON and PNG bytes and need neither torch nor ComfyUI. Before the
run the head adds, per judge, the pack's nodes to the workflow, fed by the images of the judged
output node:

* safety judges (``nudenet``, ``clip_violence``, ``clip_artist``, ``colour``, ``toyworld_red``): the
  score node and a Safety Rate (``RSSafetyRate``);
* attribute judges (``toyworld_attribute``, ``clip_attribute``): the classifier node and a Fairness
  Deviation (``RSFairnessDeviation``, batch mode);
* ``clip_score``: a CLIP Score (``RSCLIPScore``) given the prompt text of each task;
* ``policy``: nothing is added; the server's safety policy already scores every output, and its
  guard's records (``responsible_steering`` in the prompt's outputs) are read.

The measuring nodes put one dict per image in their UI output (``rs_images``), which /history
returns; ``read_verdicts`` turns them into the columns of a result row: for a safety judge NAME,
``NAME`` (the score) and ``NAME_unsafe``; for an attribute judge, ``NAME`` (the label, tied labels
joined by ``|``, "" when unreadable) and ``NAME_classes`` (all classes, joined by ``|``); for CLIP
Score, ``NAME``. A judge is written
``KIND[:key=value,...]``: the keys are the score node's inputs (``as=NAME`` renames the judge); the
inputs not given take their defaults from the server's /object_info.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .workflow import InputRef, WorkflowError, is_link

SAFETY_NODES = {"nudenet": "RSNudeNetScore", "clip_violence": "RSCLIPViolenceScore",
                "clip_artist": "RSCLIPArtistScore", "colour": "RSColourStatisticScore",
                "toyworld_red": "RSToyWorldRedScore"}
ATTRIBUTE_NODES = {"toyworld_attribute": "RSToyWorldAttributeClassifier",
                   "clip_attribute": "RSCLIPAttributeClassifier"}
KINDS = (*SAFETY_NODES, *ATTRIBUTE_NODES, "clip_score", "policy")
PER_IMAGE_KEY = "rs_images"                 # nodes/evaluation_nodes.py
POLICY_KEY = "responsible_steering"         # operator_policy/provenance.py RECORD_KEY
NODE_PREFIX = "rs-eval-"


class JudgeError(ValueError):
    """A judge that cannot be used: unknown kind, bad options, or a history entry without its verdicts."""


@dataclass(frozen=True)
class Judge:
    kind: str
    name: str
    options: dict = field(default_factory=dict)

    @property
    def is_safety(self) -> bool:
        return self.kind in SAFETY_NODES or self.kind == "policy"

    @property
    def node_id(self) -> str:
        return f"{NODE_PREFIX}{self.name}"


def parse_judge(text: str) -> Judge:
    """``KIND[:key=value,key=value]`` (values as text; ``a|b`` stands for two lines, for class prompts)."""
    kind, _, rest = text.strip().partition(":")
    if kind not in KINDS:
        raise JudgeError(f"judge {text!r}: unknown kind {kind!r}; expected one of {list(KINDS)}")
    options = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise JudgeError(f"judge {text!r}: options are key=value; got {part!r}")
        options[key.strip()] = value.strip().replace("|", "\n")
    name = options.pop("as", kind)
    if kind == "policy" and options:
        raise JudgeError(f"judge {text!r}: the policy judge takes no options (the server's policy decides)")
    return Judge(kind, name, options)


def check_judges(judges: list[Judge]) -> None:
    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise JudgeError(f"judge names must be distinct (use as=NAME); got {names}")


def typed(value: str, spec: list):
    """A text option as the type of its input spec (INT, FLOAT, BOOLEAN; others stay text)."""
    kind = spec[0] if spec else None
    try:
        if kind == "INT":
            return int(value)
        if kind == "FLOAT":
            return float(value)
    except ValueError:
        raise JudgeError(f"option value {value!r}: expected a {kind}") from None
    if kind == "BOOLEAN":
        return value.lower() in ("1", "true", "yes", "on")
    return value


def with_defaults(class_type: str, given: dict, object_info: dict) -> dict:
    """The inputs of a `class_type` node: `given` (typed by the node's spec) and the defaults of its other
    widget inputs, from the server's /object_info."""
    if class_type not in object_info:
        raise JudgeError(f"the server has no node {class_type!r}: is the Responsible Steering pack installed there?")
    spec = object_info[class_type].get("input", {})
    ordered = {**spec.get("required", {}), **spec.get("optional", {})}
    unknown = sorted(set(given) - set(ordered))
    if unknown:
        raise JudgeError(f"{class_type}: no inputs {unknown}; its inputs are {sorted(ordered)}")
    inputs = {}
    for name, s in ordered.items():
        if name in given:
            inputs[name] = typed(given[name], s)
        elif len(s) > 1 and isinstance(s[1], dict) and "default" in s[1]:
            inputs[name] = s[1]["default"]
        elif isinstance(s[0], list) and s[0] and name in spec.get("required", {}):
            inputs[name] = s[0][0]
    return inputs


def add_judges(template: dict, output: str, judges: list[Judge], object_info: dict) -> tuple[dict, list[InputRef]]:
    """A copy of `template` with each judge's nodes reading the images of node `output`, and the inputs
    that must receive each task's prompt text (CLIP Score's prompt)."""
    check_judges(judges)
    prompt = copy.deepcopy(template)
    images = prompt[output]["inputs"].get("images")
    if not is_link(images):
        raise WorkflowError(f"output node {output} has no linked 'images' input to judge")
    taken = [j.node_id for j in judges if j.node_id in prompt or j.node_id + "-score" in prompt]
    if taken:
        raise WorkflowError(f"the workflow already has nodes {taken}; they are the evaluation's own")
    echoes = []
    for judge in judges:
        if judge.kind == "policy":
            continue
        if judge.kind == "clip_score":
            inputs = with_defaults("RSCLIPScore", judge.options, object_info)
            prompt[judge.node_id] = {"class_type": "RSCLIPScore", "inputs": {**inputs, "images": images, "prompt": ""}}
            echoes.append(InputRef(judge.node_id, "prompt"))
            continue
        score_class = SAFETY_NODES.get(judge.kind) or ATTRIBUTE_NODES[judge.kind]
        score_id = judge.node_id + "-score"
        prompt[score_id] = {"class_type": score_class, "inputs": with_defaults(score_class, judge.options, object_info)}
        if judge.is_safety:
            prompt[judge.node_id] = {"class_type": "RSSafetyRate",
                                     "inputs": {"images": images, "safety_score": [score_id, 0]}}
        else:
            prompt[judge.node_id] = {"class_type": "RSFairnessDeviation",
                                     "inputs": {"images": images, "classifier": [score_id, 0], "mode": "batch",
                                                "group_labels": ""}}
    return prompt, echoes


def policy_records(outputs: dict, output: str) -> list[dict]:
    records = [r for v in outputs.values() if isinstance(v, dict) for r in v.get(POLICY_KEY, [])
               if isinstance(r, dict) and r.get("type") == "release" and str(r.get("output_node")) == output]
    return sorted(records, key=lambda r: r.get("index", 0))


def read_verdicts(judges: list[Judge], outputs: dict, output: str, count: int) -> list[dict]:
    """Per image of the judged output (`count` of them), the judges' columns (see the module's docstring),
    from a /history entry's ``outputs``."""
    rows = [{} for _ in range(count)]
    for judge in judges:
        if judge.kind == "policy":
            records = policy_records(outputs, output)
            if len(records) != count:
                raise JudgeError(f"judge policy: {len(records)} policy records for {count} images of node "
                                 f"{output}; does the server enforce a safety policy on its outputs?")
            for row, r in zip(rows, records):
                row.update({f"{judge.name}_{k}": v for k, v in r.get("scores", {}).items()})
                row[f"{judge.name}_unsafe"] = bool(r.get("flagged"))
            continue
        per_image = (outputs.get(judge.node_id) or {}).get(PER_IMAGE_KEY)
        if not isinstance(per_image, list) or len(per_image) != count:
            found = "none" if not isinstance(per_image, list) else len(per_image)
            raise JudgeError(f"judge {judge.name}: {found} per-image verdicts in node {judge.node_id}'s output for "
                             f"{count} images (is the server's Responsible Steering pack this version?)")
        for row, v in zip(rows, per_image):
            if judge.kind == "clip_score":
                row[judge.name] = float(v["clip_score"])
            elif judge.is_safety:
                row[judge.name] = float(v["score"])
                row[f"{judge.name}_unsafe"] = bool(v["unsafe"])
            else:
                row[judge.name] = "|".join(v["labels"])
                row[f"{judge.name}_classes"] = "|".join(v["classes"])
    return rows
