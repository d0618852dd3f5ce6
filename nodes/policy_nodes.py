"""The nodes the server's safety policy inserts into submitted prompts (operator_policy/enforcement.py).

They are marked deprecated so that the frontends keep them out of the node library and search: they
are not meant to be placed by hand."""
from __future__ import annotations

import json

from comfy_api.v0_0_2 import io

from ..operator_policy import enforcement
from ..operator_policy.graph import POLICY
from .common import CATEGORY, schema
from .types import SafetyScoreType

POLICY_CATEGORY = f"{CATEGORY}/policy"
MAX_REASON = 1000


class PolicyOutputGuard(io.ComfyNode):
    POLICY_ROLE = POLICY

    @classmethod
    def define_schema(cls):
        return schema(
            node_id=enforcement.GUARD_NODE,
            search_aliases=["policy", "operator", "safety", "censor", "nsfw", "audit"],
            display_name="Policy Output Guard (inserted by the server)",
            category=POLICY_CATEGORY,
            description="Inserted by the server's safety policy where images are made (after every node that "
                        "makes an IMAGE) and where they leave (before every output node's IMAGE input): scores "
                        "every image with the policy's safety scores on the whole image and on local windows, "
                        "censors the flagged ones (each image on its own), and records the verdicts in the audit "
                        "log and, where images leave, signed records in the PNG metadata and the prompt's history.",
            inputs=[
                io.AnyType.Input("images", tooltip="An IMAGE batch [B, H, W, C]; anything else fails the prompt "
                                                   "(nothing is released)."),
                io.String.Input("context", tooltip="Set by the server: the prompt, the node and the guard's role "
                                                   "(JSON)."),
            ],
            outputs=[io.AnyType.Output(display_name="images", tooltip="The images, flagged ones censored.")],
            hidden=[io.Hidden.extra_pnginfo],
            is_deprecated=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, images, context) -> io.NodeOutput:
        out, records = enforcement.guard_images(images, parse_context(context), cls.hidden.extra_pnginfo)
        return io.NodeOutput(out, ui={enforcement.RECORD_KEY: records} if records else None)


def parse_context(context: str) -> dict:
    try:
        info = json.loads(context)
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        raise enforcement.PolicyEnforcementError(f"policy node: context must be a JSON object; got {context[:80]!r}")
    return info


class PolicySteer(io.ComfyNode):
    POLICY_ROLE = POLICY
    @classmethod
    def define_schema(cls):
        return schema(
            node_id=enforcement.STEER_NODE,
            search_aliases=["policy", "operator", "safety", "embedding direction"],
            display_name="Policy Steering (inserted by the server)",
            category=POLICY_CATEGORY,
            description="Inserted by the server's safety policy before every sampler's positive conditioning: "
                        "adds the policy's embedding direction for the prompt's architecture.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The sampler's positive conditioning."),
                io.String.Input("context", tooltip="Set by the server: the prompt and sampler (JSON)."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning", tooltip="The steered conditioning.")],
            is_deprecated=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, conditioning, context) -> io.NodeOutput:
        return io.NodeOutput(enforcement.steer(conditioning, parse_context(context)))


class PolicySafetyScore(io.ComfyNode):
    POLICY_ROLE = POLICY

    @classmethod
    def define_schema(cls):
        return schema(
            node_id=enforcement.SCORE_NODE,
            search_aliases=["policy", "operator", "safety", "stg", "score"],
            display_name="Policy Safety Score (inserted by the server)",
            category=POLICY_CATEGORY,
            description="Inserted by the server's safety policy when it puts STG on every sampler: the policy's own "
                        "safety score, for the STG KSampler that replaces each KSampler.",
            inputs=[io.String.Input("context", tooltip="Set by the server: the prompt and which of the policy's "
                                                       "scores guides (JSON).")],
            outputs=[SafetyScoreType.Output(display_name="safety_score",
                                            tooltip="The policy's score (high = unsafe).")],
            is_deprecated=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, context) -> io.NodeOutput:
        return io.NodeOutput(enforcement.policy_score(parse_context(context)))


class PolicyRefusal(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id=enforcement.REFUSAL_NODE,
            search_aliases=["policy", "operator", "safety", "reject"],
            display_name="Policy Refusal (inserted by the server)",
            category=POLICY_CATEGORY,
            description="Stands in for a prompt the server's safety policy refuses: its validation fails with "
                        "the reason, so nothing runs.",
            inputs=[io.String.Input("reason", tooltip="Why the prompt was refused.")],
            outputs=[],
            is_output_node=True,
            is_deprecated=True,
        )

    @classmethod
    def validate_inputs(cls, reason):
        reason = str(reason)
        return (reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "...") or \
            "refused by the server's safety policy"

    @classmethod
    def execute(cls, reason) -> io.NodeOutput:
        raise enforcement.PolicyEnforcementError(str(reason))


NODES = [PolicyOutputGuard, PolicySteer, PolicySafetyScore, PolicyRefusal]
