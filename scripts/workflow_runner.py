"""Run the example workflows on the tiny generated checkpoint (tests and `make demo`).

The committed workflows are what users load: real checkpoint names and 512 px, 30
steps. On the tiny model the same graphs run with a test profile: the checkpoint is
swapped for the tiny one, latents are 128 px and samplers take at most 4 steps.
Vector files the workflows load are converted from the authors' reference vectors.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW_DIR = os.path.join(REPO, "workflows")
REFERENCE_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "fixtures", "reference-vectors"))
REFERENCE_FILES = {
    "safe-direction.safetensors": "embedding-direction_safe-direction.pth",
    **{f"sdisc_{c}.safetensors": "sdisc_unet.pth"
       for c in ("female", "male", "young", "old", "whiterace", "blackrace", "asianrace", "antisexual")},
}


def workflow_paths() -> list[str]:
    return sorted(glob.glob(os.path.join(WORKFLOW_DIR, "*.json")))


def tiny_profile(prompt: dict, checkpoint_name: str, size: int = 128, max_steps: int = 4) -> dict:
    """The same graph, sized for the tiny checkpoint on a CPU."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint_name
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = size
        if "steps" in inputs and isinstance(inputs["steps"], int):
            inputs["steps"] = min(inputs["steps"], max_steps)
        if node["class_type"] == "RSTrainSteeringVector":  # one short training iteration at 64 px
            inputs.update(iterations=1, batch_size=min(inputs["batch_size"], 2), resolution=64,
                          rollout_steps=min(inputs["rollout_steps"], 2), gradient_checkpointing=False)
    return prompt


def vector_files_needed(prompt: dict) -> set[str]:
    return {n["inputs"]["vector_name"] for n in prompt.values() if n["class_type"] == "RSLoadVector"}


def provide_reference_vectors(names: set[str], vector_dir: str, reference_dir: str = REFERENCE_DIR) -> None:
    """Convert the reference vectors a workflow loads into vector_dir, with the pack's own
    command (`python -m steering.reference_import`). FileNotFoundError if they are absent."""
    missing = {n for n in names if not os.path.exists(os.path.join(vector_dir, n))}
    unknown = missing - set(REFERENCE_FILES)
    if unknown:
        raise FileNotFoundError(f"workflow loads vectors {sorted(unknown)} that no reference file provides")
    for source in sorted({REFERENCE_FILES[n] for n in missing}):
        path = os.path.join(reference_dir, source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"reference vector file not found: {path}")
        subprocess.run([sys.executable, "-m", "steering.reference_import", path, "--out", vector_dir,
                        "--overwrite"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)


CLIP_SCORE_NODES = {"RSCLIPViolenceScore", "RSCLIPArtistScore"}


def provide_safety_models(prompt: dict, models_dir: str) -> None:
    """CLIP weights are never downloaded: for workflows with CLIP safety scores, write a tiny random
    CLIP under the name they load into models_dir/safety_clip and register that folder."""
    names = {n["inputs"]["clip_model"] for n in prompt.values() if n["class_type"] in CLIP_SCORE_NODES}
    if not names:
        return
    import folder_paths
    import tiny_clip

    folder = os.path.join(models_dir, "safety_clip")
    for name in sorted(names):
        tiny_clip.write_tiny_clip(os.path.join(folder, name))
    folder_paths.add_model_folder_path("safety_clip", folder, is_default=True)
