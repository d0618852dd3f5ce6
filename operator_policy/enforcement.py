"""The policy in the running server: the prompt handler, the guards, previews and what leaves the server.

* :func:`on_prompt` (every POST /prompt, before ComfyUI validates it): reads the prompt as ComfyUI will run it
  (operator_policy.graph), runs the prompt detector on every text that reaches a text encoder, refuses what it
  cannot classify or allow, and rewrites the prompt: a **source guard** on every IMAGE where it is made, a
  **sink guard** on every IMAGE a node releases, the policy's steering before every sampler. Any error of its
  own refuses the prompt (ComfyUI ignores exceptions of prompt handlers, so the handler never lets one escape).
* :func:`guard_images` (the guard node): scores (operator_policy.scoring) and censors at sources; at sinks
  scores again unless the images are exactly a source guard's output, and records what leaves, signed
  (operator_policy.provenance), in the audit log, the PNG and the prompt's history.
* :func:`rewrite_expansions`: a node that expands into a subgraph while running gets the same treatment for
  the nodes it adds (and may not reach around a guard); one it cannot allow fails.
* What leaves: :func:`message_filter` (websocket) scores every live preview frame (flagged frames dropped or
  blurred; none sent when the policy scores nothing), drops previews of prompts whose text was flagged, drops
  binary messages it cannot read, and drops the results of nodes that do not release them;
  :func:`history_filter` does the same for /history; :func:`view_guard` serves output and temp files over
  /view only when a released result named them.
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch

from ..steering import comfy_compat
from . import graph, provenance, scoring
from .document import MAX_CHECKED_TEXT, Policy, PolicyError, ScoreSpec

GUARD_NODE = "RSPolicyOutputGuard"
STEER_NODE = "RSPolicySteer"
SCORE_NODE = "RSPolicySafetyScore"
REFUSAL_NODE = "RSPolicyRefusal"
POLICY_NODES = {GUARD_NODE, STEER_NODE, SCORE_NODE}
STG_SAMPLERS = {"KSampler": "RSSTGKSampler", "RSSTGKSampler": "RSSTGKSampler"}
"""Samplers the policy's STG replaces by the STG KSampler (the same inputs, plus STG's)."""
SAMPLER_INPUTS = ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                  "latent_image", "denoise")
"""The inputs of a sampler the policy's STG keeps from the submitted graph: KSampler's. Every STG input is the
policy's: a submitted STG KSampler's own (a TAESD screen that lets images it misreads pass unguided, any input a
later version adds) never reaches the node."""
DECODERS = ("VAEDecode", "VAEDecodeTiled")
RECORD_KEY = provenance.RECORD_KEY
RECENT_RECORDS = 200
KEPT_PROMPTS = 10000
MAX_PROMPT_NODES = 10000
RELEASED_FILES = 100000
MAX_AUDIT_TEXT = 4096
MAX_REFUSALS_SHOWN = 3
FILE_LISTS = ("images", "gifs", "animated", "video", "videos", "audio", "3d", "files")
"""Keys of a node's results that name files it wrote (the frontend fetches them over /view)."""

log = logging.getLogger(__name__)


class PolicyEnforcementError(RuntimeError):
    """The policy could not be enforced on an image or an expansion: nothing more is released for the prompt."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class PromptPlan:
    """What the handler decided for one prompt, and what its guards learn while it runs."""
    prompt_id: str
    client_id: object
    types: dict[str, tuple[str, ...]]            # node id -> output types (guards: IMAGE)
    kinds: dict[tuple[str, int], str]             # every output's kind (graph.IMAGE / CLEAN / UNINSPECTED)
    guard_of: dict[tuple[str, int], str]          # a source output -> its guard
    raw_readers: set[tuple[str, str]]             # measuring inputs left on a source's own output
    releasing: set[str]                           # nodes whose results may leave (output nodes, guards)
    flagged_text: bool = False
    outputs: dict[str, object] = field(default_factory=dict)        # guard id -> its last output batch
    verdicts: dict[str, list[dict]] = field(default_factory=dict)   # source guard id -> per-image verdicts
    lock: threading.Lock = field(default_factory=threading.Lock)


class PolicyState:
    """The policy the server enforces (None: no policy), or the error that stops enforcement."""

    def __init__(self):
        self.policy: Policy | None = None
        self.error: str | None = None
        self.scores: list = []              # (label, ScoreSpec, SafetyScore)
        self.detector = None
        self.steering: dict = {}
        self.audit: provenance.AuditLog | None = None
        self.key: bytes | None = None
        self.plans: collections.OrderedDict[str, PromptPlan] = collections.OrderedDict()
        self.released: collections.OrderedDict = collections.OrderedDict()
        self.recent: collections.deque = collections.deque(maxlen=RECENT_RECORDS)
        self.lock = threading.Lock()
        self.previews = collections.Counter()
        self.server = None
        self._catalog: dict = {}

    def activate(self, policy: Policy | None, paths) -> None:
        """Enforce `policy` (None: no policy); `paths` finds its models and vectors (nodes/paths.py)."""
        from .install import build_detector, build_scores, build_steering

        self.fail(None)
        self.policy = policy
        if policy is not None:
            self.scores = build_scores(policy, paths)
            self.detector = build_detector(policy, paths)
            self.steering = build_steering(policy, paths)
            try:
                self.key = provenance.load_or_create_key(policy.key_path)
                self.audit = provenance.AuditLog(policy.audit_path)
            except provenance.ProvenanceError as e:
                raise PolicyError(policy.path, "audit / provenance", str(e)) from None

    def fail(self, message: str | None) -> None:
        self.policy, self.error, self.scores, self.audit, self.detector, self.key = None, message, [], None, None, None
        self.steering = {}
        with self.lock:
            self.plans.clear()
            self.released.clear()

    @property
    def active(self) -> bool:
        return self.policy is not None or self.error is not None

    def record(self, record: dict) -> dict:
        record = {"time": now(), "policy_sha256": self.policy.sha256, **record}
        self.audit.write(record)
        self.recent.append(record)
        return record

    def remember(self, plan: PromptPlan) -> None:
        with self.lock:
            self.plans[plan.prompt_id] = plan
            while len(self.plans) > KEPT_PROMPTS:
                self.plans.popitem(last=False)

    def plan(self, prompt_id) -> PromptPlan | None:
        with self.lock:
            return self.plans.get(prompt_id) if isinstance(prompt_id, str) else None

    def release_files(self, output: dict) -> None:
        """Remember the files a released result names: /view serves exactly these."""
        with self.lock:
            for key in FILE_LISTS:
                for entry in (output.get(key) or []) if isinstance(output, dict) else []:
                    if isinstance(entry, dict) and isinstance(entry.get("filename"), str):
                        name = (entry.get("type") or "output", entry.get("subfolder") or "", entry["filename"])
                        self.released[name] = True
                        self.released.move_to_end(name)
            while len(self.released) > RELEASED_FILES:
                self.released.popitem(last=False)

    def is_released(self, kind: str, subfolder: str, filename: str) -> bool:
        with self.lock:
            return (kind, subfolder, filename) in self.released

    def catalog(self, class_type: str) -> graph.NodeInfo | None:
        info = self._catalog.get(class_type)
        if info is None:
            facts = comfy_compat.node_facts(class_type)
            if facts is None:
                return None
            info = graph.NodeInfo(
                inputs={name: graph.InputSpec(*spec) for name, spec in facts.inputs.items()},
                outputs=facts.outputs, output_node=facts.output_node,
                releases_ui=facts.output_node or facts.intermediate_output,
                role=getattr(facts.cls, "POLICY_ROLE", None),
                concept_inputs=frozenset(getattr(facts.cls, "POLICY_CONCEPT_INPUTS", ()) or ()))
            self._catalog[class_type] = info
        return info


STATE = PolicyState()


# ---------------------------------------------------------------- the prompt handler

def refusal(json_data, reason: str) -> dict:
    """The request with its prompt replaced by one refusal node: ComfyUI's validation answers 400 with `reason`."""
    kept = {k: v for k, v in json_data.items() if k != "prompt"} if isinstance(json_data, dict) else {}
    return {**kept, "prompt": {"responsible-steering-policy": {"class_type": REFUSAL_NODE, "inputs": {"reason": reason}}}}


def check_text(policy: Policy, text: str) -> tuple[list[str], str, dict]:
    """(what the detector matched: words, or the unsafe concepts among the nearest neighbours; the safe
    rewrite; evidence for the audit) for one text. Nothing matched: ([], text, {})."""
    from .words import match_words, rewrite_text

    if not policy.input or not text.strip():
        return [], text, {}
    if policy.detector == "word_list":
        words = match_words(text, policy.unsafe_words)
        return words, rewrite_text(text, words, policy.safe_suffix) if words else text, {}
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


def guard_node(images_link: list, context: dict) -> dict:
    return {"class_type": GUARD_NODE, "inputs": {"images": images_link, "context": json.dumps(context)},
            "_meta": {"title": f"Responsible Steering policy guard ({context['role']})"}}


def insert_guards(prompt: dict, nodes: dict, found: graph.Classification, plan: PromptPlan, stem: str) -> list[dict]:
    """Put the classification's guards into `prompt` (changed in place) and `plan`; one entry per guard."""
    taken = set(prompt) | set(plan.types)
    entries = []
    for node_id, slot in found.sources:
        guard = graph.fresh_id(taken, f"{stem}source-{node_id}-{slot}")
        context = {"role": "source", "prompt_id": plan.prompt_id, "node": node_id,
                   "class_type": nodes[node_id].class_type, "slot": slot}
        prompt[guard] = guard_node([node_id, slot], context)
        plan.guard_of[(node_id, slot)] = guard
        entries.append({"guard": guard, **{k: context[k] for k in ("role", "node", "class_type", "slot")}})
    for node in nodes.values():
        for name, link in node.links.items():
            guard = plan.guard_of.get((link.node, link.slot))
            if guard is not None and (node.id, name) not in found.raw_readers:
                prompt[node.id]["inputs"][name] = [guard, 0]
    for sink in found.sinks:
        value = prompt[sink.node]["inputs"][sink.input]
        if sink.link is None:
            link, upstream = value, []                  # an image given as a value (a node expansion): scored
        else:
            link = value if sink.direct else [sink.link.node, sink.link.slot]
            upstream = [plan.guard_of[s] for s in graph.upstream_sources(nodes, sink.link, plan.guard_of)]
        guard = graph.fresh_id(taken, f"{stem}sink-{sink.node}-{sink.input}")
        context = {"role": "sink", "prompt_id": plan.prompt_id, "node": sink.node,
                   "class_type": nodes[sink.node].class_type, "input": sink.input,
                   "direct": value[0] if sink.direct else None, "upstream": upstream}
        prompt[guard] = guard_node(link, context)
        prompt[sink.node]["inputs"][sink.input] = [guard, 0]
        entries.append({"guard": guard, **{k: context[k] for k in ("role", "node", "class_type", "input")}})
    for entry in entries:
        plan.types[entry["guard"]] = (graph.IMAGE,)
        plan.kinds[(entry["guard"], 0)] = graph.IMAGE
        plan.releasing.add(entry["guard"])
    return entries


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
    dropped = provenance.scrub_client_pnginfo(extra["extra_pnginfo"])
    prompt = json_data["prompt"]
    comfy_compat.apply_node_replacements(STATE.server, prompt)
    graph.remove_nodes_of(prompt, POLICY_NODES, ("images", "conditioning"), comfy_compat.is_link)
    client_prompt_id = json_data.get("prompt_id")
    if client_prompt_id is not None and (not isinstance(client_prompt_id, str) or STATE.plan(client_prompt_id)):
        return refusal(json_data, f"prompt_id {str(client_prompt_id)[:80]!r} was already used on this server (or is "
                                  f"not a text); the safety policy refuses to run two prompts under one id")
    prompt_id = client_prompt_id or str(uuid.uuid4())
    json_data["prompt_id"] = prompt_id
    client_id = json_data.get("client_id")
    record = {"type": "prompt", "prompt_id": prompt_id, "client_id": client_id}

    def rejected(reason: str, **fields) -> dict:
        STATE.record({**record, **fields, "outcome": "rejected", "reason": reason})
        return refusal(json_data, reason)

    if len(prompt) > MAX_PROMPT_NODES:
        return rejected(f"the server's safety policy reads prompts of at most {MAX_PROMPT_NODES} nodes; this one has "
                        f"{len(prompt)}")
    try:
        nodes = graph.read_prompt(prompt, STATE.catalog, comfy_compat.is_link)
    except (graph.GraphRefused, RecursionError) as e:
        return rejected(f"the server's safety policy cannot read this prompt: {e}")

    texts, matched, rewritten = [], [], []
    detector = policy.detector or "none"
    for node_id, name in graph.encoder_texts(nodes):
        text = nodes[node_id].literals[name]
        if policy.input and len(text) > MAX_CHECKED_TEXT:
            return rejected(f"the server's safety policy checks texts of at most {MAX_CHECKED_TEXT} characters; "
                            f"node {node_id} input '{name}' has {len(text)}", texts=texts)
        found, safe, evidence = check_text(policy, text)
        texts.append({"node": node_id, "input": name, "text": text[:MAX_AUDIT_TEXT], "matched": found, **evidence})
        matched += [w for w in found if w not in matched]
        if found and policy.input_action == "rewrite":
            prompt[node_id]["inputs"][name] = safe
            rewritten.append({"node": node_id, "input": name, "text": safe[:MAX_AUDIT_TEXT]})
    record.update(texts=texts, input={"detector": detector, "matched": matched,
                                      "action": policy.input_action if matched else "none", "rewritten": rewritten})
    if matched and policy.input_action == "reject":
        return rejected(f"the server's safety policy ({policy.name}) refuses this prompt: it names "
                        f"{', '.join(repr(w) for w in matched)}")

    try:
        found = graph.classify(nodes, policy.allow_uninspected, policy.trusted_transforms)
    except (graph.GraphRefused, RecursionError) as e:
        return rejected(f"the server's safety policy cannot read this prompt: {e}")
    if found.refused:
        shown = "; ".join(found.refused[:MAX_REFUSALS_SHOWN])
        more = f" (and {len(found.refused) - MAX_REFUSALS_SHOWN} more)" if len(found.refused) > MAX_REFUSALS_SHOWN else ""
        return rejected(f"the server's safety policy ({policy.name}) refuses this prompt: {shown}{more}",
                        refused=found.refused)

    plan = PromptPlan(prompt_id, client_id, {n.id: n.info.outputs for n in nodes.values()}, dict(found.kinds), {},
                      set(found.raw_readers), {n.id for n in nodes.values() if n.info.releases_ui},
                      flagged_text=bool(matched))
    guards = insert_guards(prompt, nodes, found, plan, "rs-policy-")
    steered = insert_steering(prompt, nodes, plan) if STATE.steering else []
    stg = insert_stg(prompt, nodes, plan, policy) if policy.stg is not None else []
    if policy.pnginfo:
        extra["extra_pnginfo"][RECORD_KEY] = {"policy_sha256": policy.sha256, "prompt_id": prompt_id, "outputs": {}}
    STATE.remember(plan)
    STATE.record({**record, "guards": guards, "steering": steered + stg, "allowed_uninspected": found.allowed,
                  "client_pnginfo_dropped": dropped, "outcome": "queued"})
    for entry in stg:                        # per sampler: steered by STG, or why not
        STATE.record({"type": "steering", "prompt_id": prompt_id, "client_id": client_id, "method": "stg", **entry})
    return json_data


def insert_steering(prompt: dict, nodes: dict, plan: PromptPlan) -> list[dict]:
    taken = set(prompt)
    steered = []
    for node_id, name in graph.sampler_positives(nodes):
        node = prompt[node_id]
        context = {"prompt_id": plan.prompt_id, "client_id": plan.client_id, "node": node_id,
                   "class_type": node["class_type"]}
        link = nodes[node_id].links[name]
        current = node["inputs"][name]
        steer_id = graph.fresh_id(taken, f"rs-policy-steer-{node_id}")
        prompt[steer_id] = {"class_type": STEER_NODE,
                            "inputs": {"conditioning": current if graph.unwrap(current) is current
                                       else [link.node, link.slot], "context": json.dumps(context)},
                            "_meta": {"title": "Responsible Steering policy steering"}}
        node["inputs"][name] = [steer_id, 0]
        steered.append({"steer": steer_id, "node": node_id, "class_type": node["class_type"]})
    return steered


def is_sampler(node: graph.Node) -> bool:
    """A node that samples: it takes a model and a positive prompt and returns latents."""
    return "LATENT" in node.info.outputs and "model" in node.links and "positive" in node.links


def insert_stg(prompt: dict, nodes: dict, plan: PromptPlan, policy: Policy) -> list[dict]:
    """Every KSampler (and STG KSampler) becomes an STG KSampler with the policy's score and settings, decoding
    with the VAE that decodes its latents; other samplers are recorded as not steered, with the reason."""
    settings = policy.stg
    taken = set(prompt) | set(plan.types)
    score_node, entries = None, []
    for node in sorted(nodes.values(), key=lambda n: n.id):
        if not is_sampler(node):
            continue
        entry = {"steer": "stg", "node": node.id, "class_type": node.class_type}
        vae = next((n.links["vae"] for n in nodes.values() if n.class_type in DECODERS and "vae" in n.links
                    and "samples" in n.links and (n.links["samples"].node, n.links["samples"].slot) == (node.id, 0)),
                   None)
        if node.class_type not in STG_SAMPLERS:
            entries.append({**entry, "applied": False, "reason": f"{node.class_type} has no STG counterpart"})
            continue
        if vae is None:
            entries.append({**entry, "applied": False, "reason": "its latents are not decoded by a VAE Decode here"})
            continue
        if score_node is None:
            score_node = graph.fresh_id(taken, "rs-policy-stg-score")
            prompt[score_node] = {"class_type": SCORE_NODE, "inputs": {"context": json.dumps(
                {"prompt_id": plan.prompt_id, "score": settings.score})},
                "_meta": {"title": "Responsible Steering policy score"}}
            plan.types[score_node] = ("SAFETY_SCORE",)
            plan.kinds[(score_node, 0)] = graph.CLEAN
        submitted = prompt[node.id]["inputs"]
        prompt[node.id]["class_type"] = STG_SAMPLERS[node.class_type]
        prompt[node.id]["inputs"] = {key: submitted[key] for key in SAMPLER_INPUTS if key in submitted}
        prompt[node.id]["inputs"].update(
            vae=[vae.node, vae.slot], safety_score=[score_node, 0], rho=settings.rho,
            start_percent=settings.start_percent, end_percent=settings.end_percent, update_ratio=settings.update_ratio,
            prior_weight=0.0, rebase=False, guide_pooled=False, decoder=settings.decoder, autocast=settings.autocast,
            gradient_checkpointing=False, screen="off", hold_margin=0.0)
        plan.types[node.id] = ("LATENT", "STRING")
        plan.kinds[(node.id, 1)] = graph.UNINSPECTED
        entries.append({**entry, "applied": True, "score": STATE.scores[settings.score][0], "rho": settings.rho})
    return entries


def policy_score(context: dict):
    """The policy's output score `context["score"]` (an index), for the STG the policy puts on samplers."""
    if STATE.error is not None or STATE.policy is None:
        raise PolicyEnforcementError(f"{STATE.error or 'no safety policy is active'}; nothing is sampled")
    return STATE.scores[int(context["score"])][2]


def on_prompt(json_data):
    """The prompt handler: never raises (an exception would let the prompt through unguarded)."""
    try:
        return enforce(json_data)
    except Exception as e:   # noqa: BLE001 - fail closed on anything
        log.exception("responsible-steering policy: the prompt handler failed; the prompt is refused")
        return refusal(json_data, f"the server's safety policy could not be applied to this prompt "
                                  f"({type(e).__name__}: {e}); it is refused")


# ---------------------------------------------------------------- the guard

def _image_batch(images, context: dict) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise PolicyEnforcementError(f"the safety policy guards IMAGE batches [B, H, W, 3] at node "
                                     f"{context.get('node')} ({context.get('class_type')}); got {shape}: nothing is "
                                     f"released")
    return images


def guard_images(images, context: dict, extra_pnginfo) -> tuple[object, list[dict]]:
    """The guard node: (the images to pass on, the records to show in the prompt's history)."""
    if STATE.error is not None:
        raise PolicyEnforcementError(f"{STATE.error}; no image is released")
    policy = STATE.policy
    if policy is None:
        return images, []
    plan = STATE.plan(context.get("prompt_id"))
    if plan is None:
        raise PolicyEnforcementError("this guard does not belong to a prompt the policy read; nothing is released")
    images = _image_batch(images, context)
    if context.get("role") == "source":
        return guard_source(images, context, plan, policy), []
    return guard_sink(images, context, plan, policy, extra_pnginfo)


def _verdict_records(verdicts: scoring.Verdicts, policy: Policy) -> list[dict]:
    return [{"flagged": bool(verdicts.flags[i]),
             "action": f"censored ({policy.censor_mode})" if verdicts.flags[i] else "none", **verdicts.per_image[i]}
            for i in range(len(verdicts.per_image))]


def guard_source(images: torch.Tensor, context: dict, plan: PromptPlan, policy: Policy) -> torch.Tensor:
    verdicts = scoring.judge(images, STATE.scores)
    out = scoring.censored(images, verdicts, policy.censor_mode, policy.censor_strength)
    guard = plan.guard_of.get((context["node"], context["slot"]))
    with plan.lock:
        done = plan.verdicts.setdefault(guard, [])
        start = len(done)
        records = _verdict_records(verdicts, policy)
        done.extend(records)
        plan.outputs[guard] = out
    for i, r in enumerate(records):
        STATE.record({"type": "image", "prompt_id": plan.prompt_id, "client_id": plan.client_id,
                      "node": context["node"], "class_type": context["class_type"], "slot": context["slot"],
                      "index": start + i, **r})
    return out


def guard_sink(images: torch.Tensor, context: dict, plan: PromptPlan, policy: Policy, extra_pnginfo):
    direct = context.get("direct")
    with plan.lock:
        reuse = direct is not None and plan.outputs.get(direct) is images
        verdicts = list(plan.verdicts.get(direct, [])) if reuse else None
    if verdicts is not None and len(verdicts) == images.shape[0]:
        out, decided = images, verdicts
    else:
        judged = scoring.judge(images, STATE.scores)
        out = scoring.censored(images, judged, policy.censor_mode, policy.censor_strength)
        decided = _verdict_records(judged, policy)
    entry = None
    if policy.pnginfo and isinstance(extra_pnginfo, dict) and isinstance(extra_pnginfo.get(RECORD_KEY), dict):
        entry = extra_pnginfo[RECORD_KEY].setdefault("outputs", {}).setdefault(
            f"{context.get('node')}.{context.get('input')}", [])
    start = len(entry) if entry is not None else 0
    with plan.lock:
        upstream = [{"guard": g, "flagged": [v["flagged"] for v in plan.verdicts.get(g, [])]}
                    for g in context.get("upstream", [])]
    records = []
    for i, verdict in enumerate(decided):
        record = {"type": "release", "time": now(), "policy_sha256": policy.sha256, "prompt_id": plan.prompt_id,
                  "output_node": context["node"], "class_type": context["class_type"], "input": context["input"],
                  "index": start + i, "rescored": verdicts is None, "upstream": upstream,
                  "pixels_sha256": provenance.pixels_sha256(provenance.quantized(out[i])), **verdict}
        records.append(provenance.sign(record, STATE.key))
    for record in records:
        STATE.audit.write({**record, "client_id": plan.client_id})
        STATE.recent.append(record)
    if entry is not None:
        entry.extend(records)
    return out, records


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


# ---------------------------------------------------------------- node expansions

def rewrite_expansions(subgraphs: list) -> None:
    """Guard what a node adds while running (see the module docstring); raises when it cannot be allowed."""
    if not STATE.active:
        return
    if STATE.error is not None:
        raise PolicyEnforcementError(f"{STATE.error}; nothing is run")
    policy = STATE.policy
    plan = STATE.plan(comfy_compat.executing_prompt_id(STATE.server))
    if plan is None:
        raise PolicyEnforcementError("a node expanded into new nodes in a prompt the safety policy did not read; "
                                     "nothing more is run")
    for index, (new_graph, results) in enumerate(subgraphs):
        if new_graph is None:
            continue
        try:
            nodes = graph.read_prompt(new_graph, STATE.catalog, comfy_compat.is_link, external=plan.types)
            found = graph.classify(nodes, policy.allow_uninspected, policy.trusted_transforms, plan.kinds, plan.types)
        except graph.GraphRefused as e:
            raise PolicyEnforcementError(f"the safety policy cannot allow the nodes a node expanded into: {e}") from None
        if found.refused:
            raise PolicyEnforcementError("the safety policy refuses the nodes a node expanded into: "
                                         + "; ".join(found.refused[:MAX_REFUSALS_SHOWN]))
        plan.types.update({n.id: n.info.outputs for n in nodes.values()})
        plan.kinds.update(found.kinds)
        plan.releasing |= {n.id for n in nodes.values() if n.info.releases_ui}
        plan.raw_readers |= found.raw_readers
        guards = insert_guards(new_graph, nodes, found, plan, f"rs-policy-{uuid.uuid4().hex[:10]}-")
        subgraphs[index] = (new_graph, redirect_results(results, plan))
        STATE.record({"type": "expansion", "prompt_id": plan.prompt_id, "nodes": sorted(nodes), "guards": guards})


def redirect_results(results, plan: PromptPlan):
    """An expanding node's results with every link to a guarded output sent through its guard."""
    if results is None:
        return results
    redirected = []
    for value in results:
        if comfy_compat.is_link(value):
            if isinstance(value[1], float) or not isinstance(value[0], str) or value[0] not in plan.types:
                raise PolicyEnforcementError(f"an expanding node returned the link {value!r}, which the safety "
                                             f"policy cannot follow")
            slot = int(value[1]) % max(1, len(plan.types[value[0]]))
            guard = plan.guard_of.get((value[0], slot))
            value = [guard, 0] if guard is not None else [value[0], slot]
        redirected.append(value)
    return type(results)(redirected) if isinstance(results, (list, tuple)) else results


# ---------------------------------------------------------------- what leaves the server

def _score_preview(image, policy: Policy):
    """The preview image if it may be shown (maybe blurred), or None."""
    from PIL import ImageFilter

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]
    verdicts = scoring.judge(pixels, STATE.scores)
    STATE.previews["scored"] += 1
    if not bool(verdicts.flags.any()):
        return image
    STATE.previews["flagged"] += 1
    if policy.previews.flagged == "blur":
        return image.filter(ImageFilter.GaussianBlur(policy.previews.blur_radius))
    return None


def without_values(error: dict) -> dict:
    """An execution_error message without the failed node's input and output values (ComfyUI prints tensors of
    under 1000 values in full there: a node that fails while holding an image would send it)."""
    return {**error, "current_inputs": {}, "current_outputs": []}


def message_filter(event, data, sid):
    """Every websocket message the server sends: returns the data to send (maybe changed) or None to drop it."""
    if not STATE.active:
        return data
    if event == "execution_error" and isinstance(data, dict):
        return without_values(data)
    if event == "executed" and isinstance(data, dict):
        plan = STATE.plan(data.get("prompt_id"))
        if STATE.error is not None or plan is None or data.get("node") not in plan.releasing:
            return None
        STATE.release_files(data.get("output") or {})
        return data
    if not isinstance(event, int):
        return data
    kinds = comfy_compat.preview_event_types()
    if event not in kinds:
        return data if event == comfy_compat.text_event_type() else None
    policy = STATE.policy
    plan = STATE.plan(comfy_compat.preview_prompt_id(STATE.server, event, data))
    if policy is None or policy.previews.mode == "suppress" or not STATE.scores or plan is None or plan.flagged_text:
        STATE.previews["dropped"] += 1
        return None
    image = comfy_compat.preview_image_of(event, data)
    if image is None:
        STATE.previews["dropped"] += 1
        return None
    shown = _score_preview(image, policy)
    if shown is None:
        STATE.previews["dropped"] += 1
        return None
    if shown is image:
        return data
    changed = comfy_compat.map_preview_image(event, data, lambda _: shown)
    if changed is None:
        STATE.previews["dropped"] += 1
    return changed


def history_filter(prompt_id, history_result: dict, messages: list) -> None:
    """A finished prompt's results as /history keeps them: only those of nodes that release results, and its
    error messages without the failed node's values."""
    for i, message in enumerate(messages):
        if isinstance(message, tuple) and len(message) == 2 and message[0] == "execution_error" and \
                isinstance(message[1], dict):
            messages[i] = (message[0], without_values(message[1]))
    plan = STATE.plan(prompt_id)
    releasing = plan.releasing if plan is not None and STATE.error is None else set()
    for key in ("outputs", "meta"):
        table = history_result.get(key)
        if isinstance(table, dict):
            for node_id in [k for k in table if k not in releasing]:
                del table[node_id]
    for output in (history_result.get("outputs") or {}).values():
        STATE.release_files(output)
    if plan is not None:
        with plan.lock:                   # what the running prompt needed; the plan stays to refuse its id again
            plan.outputs.clear()
            plan.types.clear()
            plan.kinds.clear()
            plan.guard_of.clear()


def view_guard_factory():
    from aiohttp import web

    @web.middleware
    async def view_guard(request, handler):
        if STATE.active and request.path in ("/view", "/api/view"):
            query = request.rel_url.query
            kind = query.get("type", "output")
            if kind != "input" and not STATE.is_released(kind, query.get("subfolder", ""), query.get("filename", "")):
                return web.json_response({"error": "the server's safety policy serves output and temp files only "
                                                   "when a released result named them"}, status=403)
        return await handler(request)

    return view_guard


def prompt_score_labels(specs: list[ScoreSpec]) -> list[str]:
    """One record key per score: its kind (and statistic or labels), numbered when two would share one."""
    labels = []
    for spec in specs:
        label, n = spec.label(), 2
        while label in labels:
            label, n = f"{spec.label()}#{n}", n + 1
        labels.append(label)
    return labels
