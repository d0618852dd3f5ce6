"""The pack's model folders in ComfyUI's folder_paths, and every look-up of a file in them.

* ``models/steering_vectors``: vector files (.safetensors) and reference files to import;
* ``models/nudenet``: NudeNet ONNX detectors (320n.onnx also comes with the nudenet package);
* ``models/safety_clip``: local CLIP model folders (Hugging Face layout, never downloaded);
* the vectors learned on ToyWorld and ToyWorld-SD, the pack's demo models, shipped in
  ``toyworld/steering_vectors`` and ``toyworld_sd/steering_vectors``: read-only steering_vectors folders
  listed after the user's, so their files appear as ``toyworld/<name>.safetensors`` and
  ``toyworld_sd/<name>.safetensors`` and new vectors are never written there.

:func:`register_model_folders` adds them all; the pack's entry point calls it once. The
maths (steering/) receives the paths found here.
"""
from __future__ import annotations

import os

import folder_paths

from ..steering.safety.clip_scores import CLIPModelNotFound
from ..steering.safety.nudenet import MODEL_FILE as NUDENET_MODEL_FILE
from ..steering.safety.nudenet import NudeNetModelNotFound, package_model_path
from ..toyworld.model import VECTOR_ROOT as TOYWORLD_VECTOR_ROOT
from ..toyworld_sd.model import VECTOR_ROOT as TOYWORLD_SD_VECTOR_ROOT

FOLDER = "steering_vectors"
EXTENSIONS = {".safetensors"}
REFERENCE_EXTENSIONS = (".pth", ".pt", ".bin")
NUDENET_FOLDER = "nudenet"
SAFETY_CLIP_FOLDER = "safety_clip"
MODEL_FOLDERS = {FOLDER: EXTENSIONS, NUDENET_FOLDER: {".onnx"}, SAFETY_CLIP_FOLDER: {".json", ".safetensors"}}


NUDENET_RELEASES_URL = "https://github.com/notAI-tech/NudeNet/releases"
CLIP_MODEL_EXAMPLE = "openai/clip-vit-large-patch14"
CLIP_DOWNLOAD_HINT = (
    f"Download a Hugging Face CLIP model folder (config.json, model.safetensors and the tokenizer files), e.g. "
    f"{CLIP_MODEL_EXAMPLE} from https://huggingface.co/{CLIP_MODEL_EXAMPLE}, into ComfyUI's "
    f"models/{SAFETY_CLIP_FOLDER}/<name>/ folder (e.g. models/{SAFETY_CLIP_FOLDER}/clip-vit-large-patch14/) "
    f"and pick <name>. CLIP weights are never downloaded by the pack.")
"""What to download, from where and where to put it, when a safety CLIP model is missing."""
TAESD_URL = "https://github.com/madebyollin/taesd"


def nudenet_download_hint(name: str = NUDENET_MODEL_FILE) -> str:
    """What to install or download, and where to put it, when the NudeNet detector `name` is missing."""
    download = (f"a NudeNet detector (.onnx) from {NUDENET_RELEASES_URL} into ComfyUI's models/{NUDENET_FOLDER}/ "
                f"folder as {name}.")
    if name != NUDENET_MODEL_FILE:
        return f"Download {download}"
    return (f"Install the nudenet package, which brings {NUDENET_MODEL_FILE}: the pack's install.py does it (ComfyUI-"
            f"Manager runs it when it installs the pack; by hand: `python install.py` in the pack's folder, or "
            f"`pip install --no-deps nudenet==3.4.2`), or download {download}")


def register_model_folder(name: str, extensions: set[str], folder: str | None = None) -> None:
    """Add `folder` (default models/<name>) to ComfyUI's folders for `name`, after the paths already
    there (users' extra_model_paths.yaml entries are kept, and stay first)."""
    folder = folder or os.path.join(folder_paths.models_dir, name)
    paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
    paths = list(paths)
    if folder not in paths:
        paths.append(folder)
    folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def register_model_folders() -> None:
    """Add every model folder of the pack (:data:`MODEL_FOLDERS`), then the demo models' vectors (last, so
    that the first folder, where vectors are saved, is the user's); the node dropdowns list them."""
    for name, extensions in MODEL_FOLDERS.items():
        register_model_folder(name, extensions)
    register_model_folder(FOLDER, EXTENSIONS, TOYWORLD_SD_VECTOR_ROOT)
    register_model_folder(FOLDER, EXTENSIONS, TOYWORLD_VECTOR_ROOT)


def vector_folders() -> list[str]:
    return folder_paths.get_folder_paths(FOLDER)


def save_folder() -> str:
    """Where new vectors are written: the first configured folder."""
    return vector_folders()[0]


def list_vector_files() -> list[str]:
    vector_folders()
    return folder_paths.get_filename_list(FOLDER)


def vector_file_path(name: str) -> str:
    return folder_paths.get_full_path_or_raise(FOLDER, name)


def nudenet_folders() -> list[str]:
    return folder_paths.get_folder_paths(NUDENET_FOLDER)


def list_nudenet_models() -> list[str]:
    """Detector names for a dropdown: 320n.onnx (the package's, or models/nudenet's) first, then every
    other .onnx file in the models/nudenet folders."""
    found = set()
    for folder in nudenet_folders():
        if os.path.isdir(folder):
            found |= {n for n in os.listdir(folder) if n.lower().endswith(".onnx")}
    return [NUDENET_MODEL_FILE, *sorted(found - {NUDENET_MODEL_FILE})]


def nudenet_model_path(name: str = NUDENET_MODEL_FILE) -> str:
    """Where a detector is looked for, in order: the models/nudenet folders, then (for 320n.onnx) the
    nudenet package. NudeNetModelNotFound lists every place looked at."""
    if os.sep in name or "/" in name or name.startswith("."):
        raise NudeNetModelNotFound(f"NudeNet model name {name!r}: expected a file name in models/{NUDENET_FOLDER}")
    candidates = [os.path.join(folder, name) for folder in nudenet_folders()]
    if name == NUDENET_MODEL_FILE:
        package = package_model_path()
        candidates.append(package or "<the nudenet package (pip install --no-deps nudenet): not installed>")
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise NudeNetModelNotFound(
        f"NudeNet detector {name} not found; looked in: {candidates}. {nudenet_download_hint(name)}")


def safety_clip_folders() -> list[str]:
    return folder_paths.get_folder_paths(SAFETY_CLIP_FOLDER)


def list_clip_models() -> list[str]:
    """CLIP model folders (containing config.json) in the models/safety_clip folders."""
    found = []
    for folder in safety_clip_folders():
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if os.path.isfile(os.path.join(folder, name, "config.json")):
                found.append(name)
    return sorted(set(found))


def clip_model_path(name: str) -> str:
    """The folder of the CLIP model `name` (a folder in models/safety_clip, or an absolute path)."""
    if os.path.isabs(name) and os.path.isfile(os.path.join(name, "config.json")):
        return name
    looked = []
    for folder in safety_clip_folders():
        candidate = os.path.realpath(os.path.join(folder, name))
        looked.append(candidate)
        if candidate.startswith(os.path.realpath(folder) + os.sep) and os.path.isfile(
                os.path.join(candidate, "config.json")):
            return candidate
    raise CLIPModelNotFound(
        f"CLIP model {name!r} not found; looked in {looked or '(no safety_clip folder configured)'} for a folder "
        f"with config.json and model.safetensors. {CLIP_DOWNLOAD_HINT}")


def check_clip_model(name: str) -> bool | str:
    """True when the CLIP model is found, else the message naming the folders searched."""
    try:
        clip_model_path(name)
    except CLIPModelNotFound as e:
        return str(e)
    return True


def list_reference_files() -> list[str]:
    """Pickled reference vectors (.pth/.pt) placed in the vector folders, for import."""
    found = []
    for folder in vector_folders():
        if not os.path.isdir(folder):
            continue
        for root, _dirs, files in os.walk(folder, followlinks=True):
            for f in files:
                if f.lower().endswith(REFERENCE_EXTENSIONS):
                    found.append(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/"))
    return sorted(set(found))


def reference_file_path(name: str) -> str:
    for folder in vector_folders():
        candidate = os.path.realpath(os.path.join(folder, name))
        if candidate.startswith(os.path.realpath(folder) + os.sep) and os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"reference file {name!r} not found in {vector_folders()}")


# ---------------------------------------------------------------------------- TAESD decoders (STG)

class TAESDNotFound(FileNotFoundError):
    """No TAESD decoder file for the model's architecture in the vae_approx folders."""


def taesd_decoder_path(arch: str) -> str:
    """The vae_approx file of the architecture's TAESD decoder (``<name>.safetensors`` or ``.pth``)."""
    from ..steering.architectures import ARCHITECTURES, ArchitectureError, get_architecture

    spec = get_architecture(arch)
    if spec.taesd_decoder is None:
        known = [a.label for a in ARCHITECTURES.values() if a.taesd_decoder]
        raise ArchitectureError(f"no TAESD decoder for {spec.label}; TAESD decoders exist for {known}")
    names = [n for n in folder_paths.get_filename_list("vae_approx") if n.startswith(spec.taesd_decoder + ".")]
    if not names:
        raise TAESDNotFound(
            f"TAESD decoder {spec.taesd_decoder}.safetensors (or .pth) not found in the vae_approx folders "
            f"{folder_paths.get_folder_paths('vae_approx')}. Download {spec.taesd_decoder}.pth from "
            f"{TAESD_URL} into ComfyUI's models/vae_approx/ folder, or use decoder = vae.")
    return folder_paths.get_full_path_or_raise("vae_approx", names[0])
