"""Example workflows (UI format) as API prompts, and the tiny profile they run with in tests,
`make demo` and the fingerprints.

Two copies of every example are committed. example_workflows/ (the folder ComfyUI's template
browser lists) holds the ones that run as opened on a CPU in about a minute: 128 px latents, at
most 4 sampling steps, one short training iteration (`quick_inputs`). workflows/real_model/
(WORKFLOW_DIR) holds the same graphs at the settings for the real SD1.5 model: 512 px, 30-50
steps, the papers' training runs. On the tiny model either runs with the tiny profile: the
checkpoint is swapped for the tiny one and the quick settings are applied.
Vector files the workflows load are converted from the authors' reference vectors.
"""
from __future__ import annotations

import glob
import json
import os

from devtools import comfy_env, pack, tiny_models
# UI format -> API format lives with the evaluation command (it takes UI-format workflows too)
from steering_eval.workflow import CONTROL_VALUES, NOT_EXECUTED, WIDGET_TYPES, is_widget, ui_to_api  # noqa: F401

WORKFLOW_DIR = os.path.join(comfy_env.REPO, "workflows", "real_model")   # real-model settings
EXAMPLE_DIR = os.path.join(comfy_env.REPO, "example_workflows")           # quick CPU settings (templates)
DIT_DIR = os.path.join(comfy_env.REPO, "workflows", "dit")                 # FLUX / SD3, real settings
REFERENCE_DIR = os.path.normpath(os.path.join(comfy_env.REPO, "..", "shared", "fixtures", "reference-vectors"))
REFERENCE_FILES = {
    "safe-direction.safetensors": "embedding-direction_safe-direction.pth",
    **{f"sdisc_{c}.safetensors": "sdisc_unet.pth"
       for c in ("female", "male", "young", "old", "whiterace", "blackrace", "asianrace", "antisexual")},
}


def load_workflow(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- tiny profile

def template_paths() -> list[str]:
    """The templates (example_workflows/*.json), in the template browser's order: they run as opened."""
    return sorted(glob.glob(os.path.join(EXAMPLE_DIR, "*.json")))


def workflow_paths() -> list[str]:
    """Every committed example workflow: the templates, then the real-model copies (which run on the
    tiny model with tiny_profile)."""
    return template_paths() + sorted(glob.glob(os.path.join(WORKFLOW_DIR, "*.json")))


def dit_workflow_paths() -> list[str]:
    """The FLUX and SD3 example workflows (workflows/dit/), which run on devtools.tiny_dit with dit_profile."""
    return sorted(glob.glob(os.path.join(DIT_DIR, "*.json")))


def spec_name(workflow: dict) -> str | None:
    """The name of the spec a built workflow comes from (a template's file name is its title)."""
    return workflow.get("extra", {}).get("responsible_steering", {}).get("name")


QUICK_SIZE = 128
QUICK_STEPS = 4


def quick_inputs(class_type: str, inputs: dict, size: int = QUICK_SIZE, max_steps: int = QUICK_STEPS) -> dict:
    """One node's inputs (widget values; linked inputs are left alone) at the quick CPU settings, in
    place: latents of size px, at most max_steps sampling steps, one short training iteration at 64 px."""
    if class_type in ("EmptyLatentImage", "EmptySD3LatentImage"):
        inputs["width"] = inputs["height"] = size
    if "steps" in inputs and isinstance(inputs["steps"], int):
        inputs["steps"] = min(inputs["steps"], max_steps)
    if class_type == "RSTrainSteeringVector":
        inputs.update(iterations=1, batch_size=min(inputs["batch_size"], 2), resolution=64,
                      rollout_steps=min(inputs["rollout_steps"], 2), gradient_checkpointing=False)
    return inputs


def tiny_profile(prompt: dict, checkpoint_name: str, size: int = QUICK_SIZE, max_steps: int = QUICK_STEPS) -> dict:
    """The same graph, sized for the tiny checkpoint on a CPU."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = checkpoint_name
        quick_inputs(node["class_type"], node["inputs"], size, max_steps)
    return prompt


def dit_profile(prompt: dict, model: str, size: int = 64, max_steps: int = QUICK_STEPS) -> dict:
    """A FLUX / SD3 workflow on devtools.tiny_dit's `model` ("flux", "sd3"): its loaders substituted, the quick
    settings applied."""
    from devtools import tiny_dit

    prompt = tiny_dit.substitute_loaders(prompt, model)
    for node in prompt.values():
        quick_inputs(node["class_type"], node["inputs"], size, max_steps)
    return prompt


SHIPPED_VECTOR_PREFIXES = ("toyworld/", "toyworld_sd/")  # the demo models' vectors (read-only folders of the pack)


def vector_files_needed(prompt: dict) -> set[str]:
    """Vector files a prompt loads that must be put in models/steering_vectors (not the pack's own)."""
    return {n["inputs"]["vector_name"] for n in prompt.values() if n["class_type"] == "RSLoadVector"
            and not n["inputs"]["vector_name"].startswith(SHIPPED_VECTOR_PREFIXES)}


def provide_reference_vectors(names: set[str], vector_dir: str, reference_dir: str = REFERENCE_DIR) -> None:
    """Convert the reference vectors a workflow loads into vector_dir with the loaded pack's reference
    import (what the Import Reference Vectors node does). FileNotFoundError if they are absent."""
    missing = {n for n in names if not os.path.exists(os.path.join(vector_dir, n))}
    unknown = missing - set(REFERENCE_FILES)
    if unknown:
        raise FileNotFoundError(f"workflow loads vectors {sorted(unknown)} that no reference file provides")
    for source in sorted({REFERENCE_FILES[n] for n in missing}):
        path = os.path.join(reference_dir, source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"reference vector file not found: {path}")
        for vector in pack.module("steering.reference_import").import_reference_file(path):
            pack.module("steering.vector_file").save_vector(vector, vector_dir, vector.name, overwrite=True)


CLIP_SCORE_NODES = {"RSCLIPViolenceScore", "RSCLIPArtistScore"}


def provide_safety_models(prompt: dict, models_dir: str, register: bool = True) -> None:
    """CLIP weights are never downloaded: for workflows with CLIP safety scores, write a tiny random
    CLIP under the name they load into models_dir/safety_clip, and (`register`) add that folder to this
    process's folder_paths -- for ComfyUI running in this process; a server finds it in its own models
    folder, so pass False for one (this process's folders are then left alone)."""
    names = {n["inputs"]["clip_model"] for n in prompt.values() if n["class_type"] in CLIP_SCORE_NODES}
    if not names:
        return
    folder = os.path.join(models_dir, "safety_clip")
    for name in sorted(names):
        tiny_models.write_tiny_clip(os.path.join(folder, name))
    if register:
        import folder_paths

        folder_paths.add_model_folder_path("safety_clip", folder, is_default=True)
