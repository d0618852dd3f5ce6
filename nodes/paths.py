"""The ``steering_vectors`` model folder, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

FOLDER = "steering_vectors"
EXTENSIONS = {".safetensors"}
REFERENCE_EXTENSIONS = (".pth", ".pt", ".bin")


def register_model_folder(name: str, extensions: set[str]) -> None:
    """Add models/<name> to ComfyUI's folders, keeping paths users set in extra_model_paths.yaml."""
    default = os.path.join(folder_paths.models_dir, name)
    paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def register_vector_folder() -> None:
    """Add models/steering_vectors (the loader nodes' dropdowns list it)."""
    register_model_folder(FOLDER, EXTENSIONS)


def vector_folders() -> list[str]:
    if FOLDER not in folder_paths.folder_names_and_paths:
        register_vector_folder()
    return folder_paths.get_folder_paths(FOLDER)


def save_folder() -> str:
    """Where new vectors are written: the first configured folder."""
    return vector_folders()[0]


def list_vector_files() -> list[str]:
    vector_folders()
    return folder_paths.get_filename_list(FOLDER)


def vector_file_path(name: str) -> str:
    return folder_paths.get_full_path_or_raise(FOLDER, name)


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
            f"{folder_paths.get_folder_paths('vae_approx')}; put it there or use decoder = vae")
    return folder_paths.get_full_path_or_raise("vae_approx", names[0])
