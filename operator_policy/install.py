"""Putting the policy into a running ComfyUI server: build what it names at start-up, then hook the server.

A policy that cannot be read, validated or built stops the server at start-up (SystemExit with the message:
ComfyUI only logs exceptions raised by an entry point and would run without the policy). The prompt handler
is installed first, in refuse-everything mode, for launchers that catch SystemExit.
"""
from __future__ import annotations

import logging

import torch

from ..steering import comfy_compat
from . import document, enforcement, routes
from .document import Policy, PolicyError

log = logging.getLogger(__name__)


def build_scores(policy: Policy, paths) -> list:
    """(label, ScoreSpec, SafetyScore) for every score of the policy, built now so that a bad one fails at
    start-up; the scores come from the same registry as the score nodes (steering/safety/registry.py).
    `paths` finds model files and vectors (nodes/paths.py)."""
    from ..steering.safety import registry

    specs = policy.scores
    built = []
    for i, (label, spec) in enumerate(zip(enforcement.prompt_score_labels(specs), specs)):
        try:
            built.append((label, spec, registry.build(spec.kind, spec.threshold, spec.options, paths)))
        except Exception as e:   # noqa: BLE001 - any failure names the field
            raise PolicyError(policy.path, f"output.scores[{i}]", f"cannot be built: {e}") from None
    return built


def build_steering(policy: Policy, paths) -> dict:
    """Architecture -> (embedding-direction vector, settings) of the policy, loaded and checked now."""
    from ..steering.vector_file import load_vector

    table = {}
    for arch, settings in policy.embedding_directions.items():
        where = f"steering.embedding_direction.{arch}"
        try:
            vector = load_vector(paths.vector_file_path(settings["vector"]))
        except Exception as e:   # noqa: BLE001
            raise PolicyError(policy.path, f"{where}.vector", f"cannot be loaded: {e}") from None
        if vector.kind != "embedding" or vector.arch != arch:
            raise PolicyError(policy.path, f"{where}.vector", f"is {vector.describe()}; expected an embedding "
                                                             f"direction for {arch}")
        table[arch] = (vector, settings)
    return table


def build_detector(policy: Policy, paths):
    """The nearest-neighbour prompt detector of the policy on its local CLIP (None for a word list)."""
    if policy.detector != "nearest_neighbour":
        return None
    from ..steering import input_detector
    from ..steering.safety import clip_scores

    options = policy.input
    try:
        clip = clip_scores.load_clip(paths.clip_model_path(options.clip_model))
        embedder = input_detector.TextEmbedder(lambda text: clip.text_features([text], torch.device("cpu"))[0])
        return input_detector.InputDetector(
            embedder, options.unsafe_concepts or input_detector.DEFAULT_UNSAFE_CONCEPTS,
            options.safe_concepts or input_detector.DEFAULT_SAFE_CONCEPTS, options.k, options.threshold)
    except Exception as e:   # noqa: BLE001
        raise PolicyError(policy.path, "input", f"the nearest-neighbour detector cannot be built: {e}") from None


def install(paths) -> None:
    """Read the policy and hook the server; SystemExit on a policy that cannot be enforced. `paths` finds model
    files and vectors (nodes/paths.py)."""
    import folder_paths

    state = enforcement.STATE
    server = comfy_compat.prompt_server()
    if server is not None and server is state.server:
        return                      # hooks already on this server (the entry point ran twice)
    state.server = server
    try:
        state.activate(document.load_policy(folder_paths.get_user_directory()), paths)
    except PolicyError as e:
        state.fail(str(e))
    if server is not None:
        comfy_compat.add_get_route(server, routes.ROUTE, routes.policy_route)
        if state.active:
            comfy_compat.add_prompt_handler(server, enforcement.on_prompt)
            comfy_compat.filter_server_messages(server, enforcement.message_filter)
            comfy_compat.filter_history(server, enforcement.history_filter)
            comfy_compat.add_middleware(server, enforcement.view_guard_factory())
            comfy_compat.wrap_node_expansions(enforcement.rewrite_expansions)
    if state.error is not None:
        log.error("%s", state.error)
        raise SystemExit(f"{state.error}\nComfyUI does not start with a safety policy it cannot enforce: fix or "
                         f"remove the file (or ${document.ENV_VAR}).")
    if state.policy is not None:
        log.info("responsible-steering policy %s (sha256 %s) enforced; audit log %s", state.policy.path,
                 state.policy.sha256[:12], state.policy.audit_path)
