"""The operator's policy in the running server: every prompt, whoever submits it.

``install()`` (called by the pack's entry point) reads the policy (steering/policy.py) and, when
there is one, hooks the server through steering/comfy_compat.py:

* a prompt handler (runs on every POST /prompt before ComfyUI validates it) that
  - runs the prompt detector (a word list, or the Dual-Latent Input Detector's nearest-neighbour
    classifier on a local CLIP) on every text that reaches a text encoder (the STRING inputs of
    nodes that output CONDITIONING, and of the nodes that feed them STRING values): ``reject``
    replaces the prompt by one refusal node whose validation fails with the matched words (the
    client's POST gets HTTP 400, nothing runs), ``rewrite`` puts the safe rewrite in place,
    ``log`` only records;
  - inserts an ``RSPolicyOutputGuard`` on every input of every output node (OUTPUT_NODE: SaveImage,
    PreviewImage, any custom one) that is fed by an IMAGE (or untyped) output, and on every IMAGE input of
    a node that turns images into something else (CreateVideo, VAEEncode), so no graph reaches an output
    with an unscored image: bypassed or missing safety nodes change nothing; a NaN score flags;
  - inserts an ``RSPolicySteer`` before every sampler's positive conditioning when the policy names
    embedding directions (one per architecture, chosen by the conditioning's architecture at run time);
  - writes one audit record for the prompt; any error of its own refuses the prompt (ComfyUI
    ignores exceptions of prompt handlers, so the handler never lets one escape);
* a filter on the server's websocket messages that drops (or blurs) live previews of prompts the
  detector flagged, or of every prompt;
* GET /responsible_steering/policy: the active policy's summary for everyone; the whole policy and
  the latest audit records for an operator (the X-RS-Operator-Token header whose sha256 the policy
  names).

A policy that cannot be read, validated or built stops the server at start-up (SystemExit with the
message): ComfyUI only logs exceptions raised by an entry point and would run without the policy.
The handler is installed first, in refuse-everything mode, for launchers that catch SystemExit.
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import hmac
import json
import logging
import math
import os
import threading
import uuid

import torch

from ..steering import comfy_compat
from ..steering import policy as policy_file
from ..steering.policy import Policy, PolicyError
from ..steering.safety.base import to_nchw
from ..steering.safety.censor import censor, detection_masks

GUARD_NODE = "RSPolicyOutputGuard"
STEER_NODE = "RSPolicySteer"
REFUSAL_NODE = "RSPolicyRefusal"
RECORD_KEY = "responsible_steering"          # extra_pnginfo key (a PNG text chunk) and the guard's ui key
TOKEN_HEADER = "X-RS-Operator-Token"
ROUTE = "/responsible_steering/policy"
RECENT_RECORDS = 200
FLAGGED_PROMPTS = 10000
MAX_AUDIT_TEXT = 4096
REPLACE_GREY = 0.5
# Types a node may turn images into that still hold the pictures (guarded where the images go in).
IMAGE_CARRIERS = {"VIDEO", "LATENT", "*"}
# The pack's output nodes that only measure images (a number and a text come out, no image is shown or
# saved): they see the images as generated, so their numbers stay honest under a policy.
MEASURING_NODES = {"RSSafetyRate", "RSCLIPScore", "RSFairnessDeviation", "RSSemanticDisruption"}
# Text inputs of pack nodes that are concept lists, not prompts (they name the unsafe concepts).
NOT_PROMPT_TEXTS = {("RSDualLatentInputDetector", "unsafe_concepts"), ("RSDualLatentInputDetector", "safe_concepts"),
                    ("RSDualLatentInputDetector", "safe_suffix")}

log = logging.getLogger(__name__)


class PolicyEnforcementError(RuntimeError):
    """The policy could not be enforced on an image: the image is not released."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    """Append-only JSON Lines: the file is opened with O_APPEND once, and every record is one write."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                              | getattr(os, "O_NONBLOCK", 0), 0o600)
        except OSError as e:
            raise PolicyError(path, "audit.path", f"cannot be opened for appending: {e.strerror}") from None
        import stat

        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise PolicyError(path, "audit.path", "is not a regular file")
        self.lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode()
        with self.lock:
            written = os.write(self.fd, line)
        if written != len(line):
            raise OSError(f"audit log {self.path}: short write ({written} of {len(line)} bytes)")


def build_scores(policy: Policy) -> list:
    """(spec, SafetyScore) for every score of the policy, built now so that a bad one fails at start-up."""
    from ..steering.safety import ColourStatisticScore

    built = []
    for i, spec in enumerate(policy.scores):
        try:
            if spec.kind == "colour":
                score = ColourStatisticScore(spec.options.get("statistic", "redness"), spec.threshold)
            elif spec.kind == "toyworld_red":
                from ..toyworld.judges import ToyWorldRedScore

                score = ToyWorldRedScore(spec.threshold, spec.options.get("temperature", 0.02))
            elif spec.kind == "clip_violence":
                from ..steering.safety import clip_scores
                from . import paths

                clip = clip_scores.load_clip(paths.clip_model_path(spec.options["clip_model"]))
                score = clip_scores.CLIPViolenceScore(
                    clip, tuple(spec.options.get("texts", clip_scores.DEFAULT_VIOLENCE_TEXTS)), spec.threshold)
            else:
                from ..steering.safety import nudenet
                from . import paths

                settings = dict(nudenet.NUDENET_PACKAGE_SETTINGS, channel_order="rgb")
                settings["detection_threshold"] = spec.options.get("detection_threshold", settings["detection_threshold"])
                score = nudenet.NudeNetScore(nudenet.resolve_labels(spec.options.get("labels", "stg_nudity"), ""),
                                             settings.pop("detection_threshold"), spec.threshold,
                                             paths.nudenet_model_path(), **settings)
        except Exception as e:
            raise PolicyError(policy.path, f"output.scores[{i}]", f"cannot be built: {e}") from None
        built.append((spec, score))
    return built


def score_labels(specs) -> list[str]:
    """One record key per score: its kind (and statistic or labels), numbered when two would share one."""
    labels = []
    for spec in specs:
        label, n = spec.label(), 2
        while label in labels:
            label, n = f"{spec.label()}#{n}", n + 1
        labels.append(label)
    return labels


class PolicyState:
    """The policy the server enforces (None: no policy), or the error that stops enforcement."""

    def __init__(self):
        self.policy: Policy | None = None
        self.error: str | None = None
        self.scores: list = []
        self.detector = None
        self.steering: dict = {}
        self.audit: AuditLog | None = None
        self.flagged: collections.OrderedDict = collections.OrderedDict()
        self.recent: collections.deque = collections.deque(maxlen=RECENT_RECORDS)
        self.lock = threading.Lock()
        self.previews_dropped = 0
        self.server = None
        self._preview_events: dict | None = None

    def activate(self, policy: Policy | None) -> None:
        self.policy, self.error, self.scores, self.audit, self.detector = policy, None, [], None, None
        self.steering = {}
        if policy is not None:
            self.scores = build_scores(policy)
            self.detector = build_detector(policy)
            self.steering = build_steering(policy)
            self.audit = AuditLog(policy.audit_path)

    def fail(self, message: str) -> None:
        self.policy, self.error, self.scores, self.audit, self.detector = None, message, [], None, None
        self.steering = {}

    def record(self, record: dict) -> None:
        record = {"time": now(), "policy_sha256": self.policy.sha256, **record}
        self.audit.write(record)
        self.recent.append(record)

    def flag(self, prompt_id: str) -> None:
        with self.lock:
            self.flagged[prompt_id] = True
            while len(self.flagged) > FLAGGED_PROMPTS:
                self.flagged.popitem(last=False)

    def is_flagged(self, prompt_id) -> bool:
        with self.lock:
            return prompt_id in self.flagged


STATE = PolicyState()


# ---------------------------------------------------------------- reading the prompt

def is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def declared_types(cls) -> dict[str, str]:
    """Input name -> declared type name (combos as "COMBO") of a node class."""
    try:
        spec = cls.INPUT_TYPES()
    except Exception:
        return {}
    types = {}
    for group in ("required", "optional"):
        for name, entry in (spec.get(group) or {}).items():
            kind = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
            types[name] = kind if isinstance(kind, str) else "COMBO"
    return types


def output_type(prompt: dict, link) -> str | None:
    node = prompt.get(str(link[0]))
    cls = comfy_compat.node_class(node.get("class_type")) if isinstance(node, dict) else None
    try:
        return str(cls.RETURN_TYPES[link[1]]) if cls is not None else None
    except (IndexError, TypeError, AttributeError):
        return None


def encoder_texts(prompt: dict) -> list[tuple[str, str]]:
    """(node id, input name) of every literal STRING input that reaches a text encoder: of nodes that
    output CONDITIONING, and of every node that feeds them a STRING (followed upstream)."""
    found, seen = [], set()
    pending = []
    for node_id, node in prompt.items():
        cls = comfy_compat.node_class(node.get("class_type")) if isinstance(node, dict) else None
        if cls is not None and "CONDITIONING" in [str(t) for t in getattr(cls, "RETURN_TYPES", ())]:
            pending.append(str(node_id))
    while pending:
        node_id = pending.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = prompt.get(node_id)
        cls = comfy_compat.node_class(node.get("class_type")) if isinstance(node, dict) else None
        if cls is None or not isinstance(node.get("inputs"), dict):
            continue
        types = declared_types(cls)
        for name, value in node["inputs"].items():
            if isinstance(value, str) and types.get(name) == "STRING" and (node["class_type"], name) not in NOT_PROMPT_TEXTS:
                found.append((node_id, name))
            elif is_link(value) and output_type(prompt, value) == "STRING":
                pending.append(str(value[0]))
    return sorted(found)


def remove_guards(prompt: dict) -> int:
    """Take out guard and steering nodes the client sent (e.g. a prompt copied from /history): their
    consumers get the node's input back. Only the server's own, placed afterwards, write records."""
    guards = {k: v for k, v in prompt.items() if isinstance(v, dict) and v.get("class_type") in (GUARD_NODE, STEER_NODE)}
    for guard_id in guards:
        del prompt[guard_id]
    guards = {str(k): v for k, v in guards.items()}
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for name, value in (inputs.items() if isinstance(inputs, dict) else ()):
            hops = 0
            while is_link(value) and str(value[0]) in guards and hops <= len(guards):
                inserted = guards[str(value[0])].get("inputs") or {}
                value = inserted.get("images", inserted.get("conditioning"))
                hops += 1
            inputs[name] = value
    return len(guards)


def guarded_image_links(prompt: dict) -> list[tuple[str, str]]:
    """(node id, input name) of every input where an image leaves the image pipeline: every input of an
    output node fed by an IMAGE (or untyped) output or declared IMAGE (except the pack's measuring nodes),
    and every IMAGE-fed input of a node that turns images into video, latents or an untyped value
    (CreateVideo -> SaveVideo, VAEEncode -> SaveLatent: scored before they change type)."""
    found = []
    for node_id, node in prompt.items():
        cls = comfy_compat.node_class(node.get("class_type")) if isinstance(node, dict) else None
        if cls is None or not isinstance(node.get("inputs"), dict) or node.get("class_type") in MEASURING_NODES:
            continue
        is_output = getattr(cls, "OUTPUT_NODE", False) is True
        returns = {str(t) for t in getattr(cls, "RETURN_TYPES", ())}
        if not is_output and ("IMAGE" in returns or not returns & IMAGE_CARRIERS):
            continue
        types = declared_types(cls)
        for name, value in node["inputs"].items():
            if not is_link(value):
                continue
            source = output_type(prompt, value)
            if source == "IMAGE" or is_output and (source == "*" or types.get(name) == "IMAGE"):
                found.append((str(node_id), name))
    return found


def sampler_positives(prompt: dict) -> list[tuple[str, str]]:
    """(node id, "positive") of every sampler or guider (a node with a CONDITIONING input named positive
    that returns no CONDITIONING), where the policy's steering goes in."""
    found = []
    for node_id, node in prompt.items():
        cls = comfy_compat.node_class(node.get("class_type")) if isinstance(node, dict) else None
        if cls is None or not isinstance(node.get("inputs"), dict):
            continue
        value = node["inputs"].get("positive")
        if "CONDITIONING" not in [str(t) for t in getattr(cls, "RETURN_TYPES", ())] and is_link(value) \
                and output_type(prompt, value) == "CONDITIONING":
            found.append((str(node_id), "positive"))
    return found


def insert_node(prompt: dict, taken: set, stem: str, class_type: str, inputs: dict, title: str) -> str:
    node_id = stem
    while node_id in taken:
        node_id += "x"
    taken.add(node_id)
    prompt[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
    return node_id


# ---------------------------------------------------------------- the prompt handler

def refusal(json_data, reason: str) -> dict:
    """The request with its prompt replaced by one refusal node: ComfyUI's validation answers 400 with `reason`."""
    kept = {k: v for k, v in json_data.items() if k != "prompt"} if isinstance(json_data, dict) else {}
    return {**kept, "prompt": {"responsible-steering-policy": {"class_type": REFUSAL_NODE, "inputs": {"reason": reason}}}}


def check_text(policy: Policy, text: str) -> tuple[list[str], str, dict]:
    """(what the detector matched: words, or the unsafe concepts among the nearest neighbours; the safe
    rewrite; evidence for the audit) for one text. Nothing matched: ([], text, {})."""
    if not policy.input or not text.strip():
        return [], text, {}
    if policy.detector == "word_list":
        words = policy_file.match_words(text, policy.unsafe_words)
        return words, policy_file.rewrite_text(text, words, policy.safe_suffix) if words else text, {}
    from ..steering.input_detector import DetectorInputError

    try:
        detection = STATE.detector.detect(text, policy.safe_suffix)
    except DetectorInputError as e:
        return [f"(not checkable: {e})"], "", {}
    evidence = {"unsafe_share": detection.unsafe_share,
                "neighbours": [[n.concept, n.unsafe, round(n.similarity, 4)] for n in detection.neighbours]}
    if not detection.unsafe:
        return [], text, evidence
    concepts = [n.concept for n in detection.neighbours if n.unsafe]
    return concepts, detection.safe_text, {**evidence, "removed_words": detection.flagged_words}


def build_steering(policy: Policy) -> dict:
    """Architecture -> (embedding-direction vector, settings) of the policy, loaded and checked now."""
    from ..steering.vector_file import load_vector
    from . import paths

    table = {}
    for arch, settings in policy.embedding_directions.items():
        where = f"steering.embedding_direction.{arch}"
        try:
            vector = load_vector(paths.vector_file_path(settings["vector"]))
        except Exception as e:
            raise PolicyError(policy.path, f"{where}.vector", f"cannot be loaded: {e}") from None
        if vector.kind != "embedding" or vector.arch != arch:
            raise PolicyError(policy.path, f"{where}.vector", f"is {vector.describe()}; expected an embedding "
                                                             f"direction for {arch}")
        table[arch] = (vector, settings)
    return table


def build_detector(policy: Policy):
    """The nearest-neighbour prompt detector of the policy on its local CLIP (None for a word list)."""
    if policy.detector != "nearest_neighbour":
        return None
    from ..steering import input_detector
    from ..steering.safety import clip_scores
    from . import paths

    options = policy.input
    try:
        clip = clip_scores.load_clip(paths.clip_model_path(options["clip_model"]))
        embedder = input_detector.TextEmbedder(lambda text: clip.text_features([text], torch.device("cpu"))[0])
        return input_detector.InputDetector(
            embedder, options.get("unsafe_concepts", input_detector.DEFAULT_UNSAFE_CONCEPTS),
            options.get("safe_concepts", input_detector.DEFAULT_SAFE_CONCEPTS), options.get("k", 3),
            options.get("threshold", 0.5))
    except Exception as e:
        raise PolicyError(policy.path, "input", f"the nearest-neighbour detector cannot be built: {e}") from None


def rejected(json_data, record: dict, reason: str) -> dict:
    """Audit the prompt as rejected, and refuse it with `reason`."""
    STATE.record({**record, "guards": [], "outcome": "rejected", "reason": reason})
    return refusal(json_data, reason)


def enforce(json_data):
    if STATE.error is not None:
        return refusal(json_data, STATE.error)
    policy = STATE.policy
    if policy is None:
        return json_data
    if not isinstance(json_data, dict) or not isinstance(json_data.get("prompt"), dict):
        return refusal(json_data, "the request has no prompt object; the safety policy refuses it")
    extra = json_data.setdefault("extra_data", {})
    if not isinstance(extra, dict) or not isinstance(extra.setdefault("extra_pnginfo", {}), dict):
        return refusal(json_data, "extra_data and extra_data.extra_pnginfo must be JSON objects")
    prompt = json_data["prompt"]
    comfy_compat.apply_node_replacements(STATE.server, prompt)
    remove_guards(prompt)
    prompt_id = str(json_data.get("prompt_id") or uuid.uuid4())
    json_data["prompt_id"] = prompt_id
    client_id = json_data.get("client_id")

    texts, matched, rewritten = [], [], []
    detector = policy.detector or "none"
    for node_id, name in encoder_texts(prompt):
        text = prompt[node_id]["inputs"][name]
        if policy.input and len(text) > policy_file.MAX_CHECKED_TEXT:
            return rejected(json_data, {"type": "prompt", "prompt_id": prompt_id, "client_id": client_id,
                                        "texts": texts, "input": {"detector": detector, "matched": [],
                                                                  "action": "reject", "rewritten": []}},
                            f"the server's safety policy checks texts of at most {policy_file.MAX_CHECKED_TEXT} "
                            f"characters; node {node_id} input '{name}' has {len(text)}")
        found, safe, evidence = check_text(policy, text)
        texts.append({"node": node_id, "input": name, "text": text[:MAX_AUDIT_TEXT], "matched": found, **evidence})
        matched += [w for w in found if w not in matched]
        if found and policy.input_action == "rewrite":
            prompt[node_id]["inputs"][name] = safe
            rewritten.append({"node": node_id, "input": name, "text": safe[:MAX_AUDIT_TEXT]})
    action = policy.input_action if matched else "none"
    record = {"type": "prompt", "prompt_id": prompt_id, "client_id": client_id, "texts": texts,
              "input": {"detector": detector, "matched": matched, "action": action, "rewritten": rewritten}}
    if matched and policy.input_action == "reject":
        return rejected(json_data, record, f"the server's safety policy ({policy.name}) refuses this prompt: it "
                                           f"names {', '.join(repr(w) for w in matched)}")
    if matched:
        STATE.flag(prompt_id)

    guards, steered = [], []
    taken = set(prompt)
    for n, (node_id, name) in enumerate(guarded_image_links(prompt)):
        node = prompt[node_id]
        context = {"prompt_id": prompt_id, "client_id": client_id, "output_node": node_id,
                   "class_type": node["class_type"], "input": name}
        guard_id = insert_node(prompt, taken, f"rs-policy-guard-{n}", GUARD_NODE,
                               {"images": node["inputs"][name], "context": json.dumps(context)},
                               "Responsible Steering policy guard")
        node["inputs"][name] = [guard_id, 0]
        guards.append({"guard": guard_id, "output_node": node_id, "class_type": node["class_type"], "input": name})
    for n, (node_id, name) in enumerate(sampler_positives(prompt) if STATE.steering else []):
        node = prompt[node_id]
        context = {"prompt_id": prompt_id, "client_id": client_id, "node": node_id, "class_type": node["class_type"]}
        steer_id = insert_node(prompt, taken, f"rs-policy-steer-{n}", STEER_NODE,
                               {"conditioning": node["inputs"][name], "context": json.dumps(context)},
                               "Responsible Steering policy steering")
        node["inputs"][name] = [steer_id, 0]
        steered.append({"steer": steer_id, "node": node_id, "class_type": node["class_type"]})
    if policy.pnginfo:
        extra["extra_pnginfo"][RECORD_KEY] = {"policy_sha256": policy.sha256, "prompt_id": prompt_id, "outputs": {}}
    else:
        extra["extra_pnginfo"].pop(RECORD_KEY, None)
    STATE.record({**record, "guards": guards, "steering": steered, "outcome": "queued"})
    return json_data


def on_prompt(json_data):
    """The prompt handler: never raises (an exception would let the prompt through unguarded)."""
    try:
        return enforce(json_data)
    except Exception as e:
        log.exception("responsible-steering policy: the prompt handler failed; the prompt is refused")
        return refusal(json_data, f"the server's safety policy could not be applied to this prompt "
                                  f"({type(e).__name__}: {e}); it is refused")


# ---------------------------------------------------------------- the output guard

def guard_images(images, context: dict, extra_pnginfo) -> tuple[object, list[dict]]:
    """Score every image of a batch with the policy's scores and censor the flagged ones (each image on its
    own); returns the images and one record per image (also written to the audit log and the PNG info)."""
    if STATE.error is not None:
        raise PolicyEnforcementError(f"{STATE.error}; no image is released")
    policy = STATE.policy
    if policy is None or not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[-1] in (3, 4)):
        return images, []
    nchw = to_nchw(images).float()
    b, _, h, w = nchw.shape
    flags = torch.zeros(b, dtype=torch.bool)
    mask = torch.zeros(b, h, w)
    per_image = [{"scores": {}, "thresholds": {}, "labels": []} for _ in range(b)]
    with torch.no_grad():
        for label, (spec, score) in zip(score_labels([spec for spec, _ in STATE.scores]), STATE.scores):
            result = score.evaluate(nchw)
            unsafe = result.unsafe.detach().cpu().bool() | torch.isnan(result.score.detach().cpu())
            masks = detection_masks(result.detections, b, h, w, unsafe)
            for i in range(b):
                value = float(result.score[i])
                per_image[i]["scores"][label] = value if math.isfinite(value) else str(value)   # JSON: "nan"
                per_image[i]["thresholds"][label] = spec.threshold
                if unsafe[i]:
                    per_image[i]["labels"].append(label)
                    if result.detections:
                        per_image[i]["labels"] += [d.label for d in result.detections[i]]
                    if not bool(masks[i].any()):
                        masks[i] = 1.0          # flagged without a box: the whole image (fail closed)
            flags |= unsafe
            mask = torch.maximum(mask, masks * unsafe.view(-1, 1, 1).float())
    out = images
    if bool(flags.any()):
        if policy.censor_mode == "replace":
            covered = torch.full_like(images, REPLACE_GREY)
        else:
            covered = censor(images, mask.to(images.device), policy.censor_mode, policy.censor_strength)
        out = torch.where(flags.to(images.device).view(-1, 1, 1, 1), covered, images)
    entry = None
    if policy.pnginfo and isinstance(extra_pnginfo, dict) and isinstance(extra_pnginfo.get(RECORD_KEY), dict):
        entry = extra_pnginfo[RECORD_KEY].setdefault("outputs", {}).setdefault(
            f"{context.get('output_node')}.{context.get('input')}", [])
    start = len(entry) if entry is not None else 0
    records = []
    for i in range(b):
        records.append({
            "type": "image", "prompt_id": context.get("prompt_id"), "client_id": context.get("client_id"),
            "output_node": context.get("output_node"), "class_type": context.get("class_type"),
            "input": context.get("input"), "index": start + i, "flagged": bool(flags[i]),
            "action": f"censored ({policy.censor_mode})" if flags[i] else "none", **per_image[i]})
    for record in records:
        STATE.record(record)
    if entry is not None:
        entry.extend({k: v for k, v in r.items() if k not in ("type", "client_id")} for r in records)
    return out, [{"time": now(), "policy_sha256": policy.sha256, **r} for r in records]


def steer(conditioning, context: dict):
    """The policy's embedding direction for the conditioning's architecture added to it (unchanged for an
    architecture the policy names no vector for); one audit record."""
    if STATE.error is not None:
        raise PolicyEnforcementError(f"{STATE.error}; nothing is sampled")
    from ..steering.architectures import ArchitectureError, architecture_of_conditioning
    from ..steering.embedding_direction import apply_embedding_direction

    try:
        arch = architecture_of_conditioning(conditioning[0][0], conditioning[0][1].get("pooled_output"))
    except ArchitectureError:
        arch = None
    entry = STATE.steering.get(arch)
    record = {"type": "steering", "prompt_id": context.get("prompt_id"), "client_id": context.get("client_id"),
              "node": context.get("node"), "class_type": context.get("class_type"), "arch": arch,
              "applied": entry is not None}
    out = conditioning
    if entry is not None:
        vector, settings = entry
        out = apply_embedding_direction(conditioning, [vector.embedding_direction()], arch, settings["strength"],
                                        settings["start_percent"], settings["end_percent"], "every_chunk")
        record.update(vector=settings["vector"], strength=settings["strength"])
    if STATE.policy is not None:
        STATE.record(record)
    return out


# ---------------------------------------------------------------- previews

def preview_filter(event, data, sid):
    """The server's websocket messages: live previews of flagged prompts (or all) are dropped or blurred."""
    if STATE._preview_events is None:
        STATE._preview_events = comfy_compat.preview_event_types()
    if event not in STATE._preview_events:
        return data
    policy = STATE.policy
    if policy is None and STATE.error is None:
        return data
    if policy is not None and policy.preview_mode == "allow":
        return data
    prompt_id = comfy_compat.preview_prompt_id(STATE.server, event, data)
    if policy is not None and policy.preview_when == "flagged" and prompt_id is not None \
            and not STATE.is_flagged(prompt_id):
        return data
    if policy is not None and policy.preview_mode == "blur":
        from PIL import ImageFilter

        blurred = comfy_compat.map_preview_image(
            event, data, lambda image: image.filter(ImageFilter.GaussianBlur(policy.preview_blur_radius)))
        if blurred is not None:
            return blurred
    STATE.previews_dropped += 1
    return None


# ---------------------------------------------------------------- the panel's route

def is_operator(request, policy: Policy) -> bool:
    token = request.headers.get(TOKEN_HEADER, "")
    expected = policy.operator_token_sha256
    return bool(token and expected) and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), expected)


async def policy_route(request):
    from aiohttp import web

    if STATE.error is not None:
        return web.json_response({"active": True, "error": STATE.error})
    policy = STATE.policy
    if policy is None:
        return web.json_response({"active": False})
    answer = policy.summary()
    answer["operator"] = is_operator(request, policy)
    if answer["operator"]:
        answer["document"] = {k: v for k, v in policy.document.items() if k != "operator_token_sha256"}
        answer["path"], answer["audit_path"] = policy.path, policy.audit_path
        answer["previews_dropped"] = STATE.previews_dropped
        answer["recent"] = list(STATE.recent)[-50:]
    return web.json_response(answer)


# ---------------------------------------------------------------- installing

def install() -> None:
    """Read the policy and hook the server (see the module docstring); SystemExit on a policy that cannot
    be enforced."""
    import folder_paths

    server = comfy_compat.prompt_server()
    if server is not None and server is STATE.server:
        return                      # hooks already on this server (the entry point ran twice)
    STATE.server = server
    try:
        STATE.activate(policy_file.load_policy(folder_paths.get_user_directory()))
    except PolicyError as e:
        STATE.fail(str(e))
    if server is not None:
        comfy_compat.add_get_route(server, ROUTE, policy_route)
        if STATE.policy is not None or STATE.error is not None:
            comfy_compat.add_prompt_handler(server, on_prompt)
            comfy_compat.filter_server_messages(server, preview_filter)
    if STATE.error is not None:
        log.error("%s", STATE.error)
        raise SystemExit(f"{STATE.error}\nComfyUI does not start with a safety policy it cannot enforce: fix or "
                         f"remove the file (or ${policy_file.ENV_VAR}).")
    if STATE.policy is not None:
        log.info("responsible-steering policy %s (sha256 %s) enforced; audit log %s", STATE.policy.path,
                 STATE.policy.sha256[:12], STATE.policy.audit_path)
