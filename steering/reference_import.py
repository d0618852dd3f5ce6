"""Convert the methods' published vectors into the pack's vector format.

Supported files (both are torch zip pickles; they are opened with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers, so no code from the file ever runs):

* embedding direction (arXiv 2505.15427) ``safe-direction.pth``:
  ``{'b': [1, 77, 1], 'a': [1, 1, 768]}`` with d = b @ a (SD1.4).
* SDisc (CVPR 2024) ``checkpoints/unet.pth``: ``{'controlnet.fc1.weight': [1280*8*8, K]}``;
  column k, viewed as [1280, 8, 8], is the h-space vector of concept k (SD1.4, 512 px).
  Concept names come from the ``concept_dict.json`` published beside it.

Command line::

    python -m steering.reference_import FILE.pth --out DIR [--concepts concept_dict.json]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Mapping

import torch

from .vector_file import SteeringVector, VectorFileError, save_vector

FORMATS = ("auto", "embedding_direction", "sdisc")
SDISC_KEY = "controlnet.fc1.weight"
SDISC_SHAPE = (1280, 8, 8)


def load_reference_state(path: str) -> Mapping[str, torch.Tensor]:
    """Weights-only load of a reference .pth; never unpickles arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VectorFileError(
            f"{path} could not be loaded as a weights-only torch file ({type(e).__name__}: {e}); "
            "only tensors and plain containers are accepted") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VectorFileError(f"{path} does not hold a dict of tensors (got {type(state).__name__})")
    return state


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    if set(state) == {"a", "b"}:
        return "embedding_direction"
    if SDISC_KEY in state:
        return "sdisc"
    raise VectorFileError(
        f"unrecognised reference file with keys {sorted(state)[:8]}; expected "
        f"{{'a', 'b'}} (embedding direction) or {{'{SDISC_KEY}'}} (SDisc)")


def convert_embedding_direction(state: Mapping[str, torch.Tensor], source: str, arch: str = "sd1"
                                ) -> list[SteeringVector]:
    b, a = state["b"].float(), state["a"].float()
    if b.dim() == 3:
        b = b.squeeze(0)
    if a.dim() == 3:
        a = a.squeeze(0)
    if b.dim() != 2 or a.dim() != 2:
        raise VectorFileError(f"{source}: expected b [1, T, r] and a [1, r, D]; got {list(state['b'].shape)} "
                              f"and {list(state['a'].shape)}")
    info = {
        "name": "safe-direction",
        "concept": "safety (away from SLD's unsafe concepts)",
        "origin": f"imported from {os.path.basename(source)} (embedding direction, arXiv 2505.15427)",
    }
    return [SteeringVector("embedding_direction", arch,
                           {"direction_b": b.contiguous(), "direction_a": a.contiguous()}, info)]


def find_concept_dict(path: str) -> dict[str, int] | None:
    """The SDisc concept dict published beside unet.pth, if any."""
    for candidate in sorted(glob.glob(os.path.join(os.path.dirname(path), "*concept_dict*.json"))):
        with open(candidate) as f:
            data = json.load(f)
        if isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
            return data
    return None


def convert_sdisc(state: Mapping[str, torch.Tensor], source: str, concepts: Mapping[str, int] | None = None,
                  arch: str = "sd1") -> list[SteeringVector]:
    weight = state[SDISC_KEY].float()
    expected_rows = SDISC_SHAPE[0] * SDISC_SHAPE[1] * SDISC_SHAPE[2]
    if weight.dim() != 2 or weight.shape[0] != expected_rows:
        raise VectorFileError(
            f"{source}: {SDISC_KEY} has shape {list(weight.shape)}; expected [{expected_rows}, K]")
    count = weight.shape[1]
    names = {i: f"concept_{i}" for i in range(count)}
    for name, index in (concepts or {}).items():
        if not 0 <= index < count:
            raise VectorFileError(f"concept {name!r} has index {index}; the file holds {count} concepts")
        names[index] = name
    vectors = []
    for index in range(count):
        info = {
            "name": f"sdisc_{names[index]}",
            "concept": names[index],
            "origin": f"imported from {os.path.basename(source)} column {index} (SDisc, CVPR 2024)",
            "resolution": "512",
        }
        c = weight[:, index].reshape(SDISC_SHAPE).contiguous()
        vectors.append(SteeringVector("hspace_cvector", arch, {"c": c}, info))
    return vectors


def import_reference_file(path: str, fmt: str = "auto", concepts: Mapping[str, int] | None = None,
                          arch: str = "sd1") -> list[SteeringVector]:
    """Convert one reference file into SteeringVectors (not yet saved)."""
    if fmt not in FORMATS:
        raise VectorFileError(f"format {fmt!r}; expected one of {FORMATS}")
    state = load_reference_state(path)
    detected = detect_format(state)
    if fmt != "auto" and fmt != detected:
        raise VectorFileError(f"{path} looks like a {detected} file, not {fmt}")
    if detected == "embedding_direction":
        return convert_embedding_direction(state, path, arch)
    return convert_sdisc(state, path, concepts if concepts is not None else find_concept_dict(path), arch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steering.reference_import",
        description="Convert published reference vectors (.pth) into Responsible Steering vector files.")
    parser.add_argument("file", help="reference .pth file (safe-direction.pth or SDisc unet.pth)")
    parser.add_argument("--out", required=True, help="folder to write .safetensors vectors into")
    parser.add_argument("--format", choices=FORMATS, default="auto")
    parser.add_argument("--concepts", help="SDisc concept_dict.json (default: found beside the file)")
    parser.add_argument("--arch", default="sd1", help="architecture the vectors were learned for")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files of the same name")
    args = parser.parse_args(argv)
    concepts = None
    if args.concepts:
        with open(args.concepts) as f:
            concepts = json.load(f)
    try:
        vectors = import_reference_file(args.file, args.format, concepts, args.arch)
        for vector in vectors:
            print(save_vector(vector, args.out, vector.name, overwrite=args.overwrite))
    except VectorFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
