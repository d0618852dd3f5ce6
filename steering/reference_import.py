"""Convert the methods' published vectors into the pack's vector format.

Supported files (all are torch zip pickles; they are opened with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers, so no code from the file ever runs):

* embedding direction (arXiv 2505.15427) ``safe-direction.pth``:
  ``{'b': [1, 77, 1], 'a': [1, 1, 768]}`` with d = b @ a (SD1.4).
* SDisc (CVPR 2024) ``checkpoints/unet.pth``: ``{'controlnet.fc1.weight': [1280*8*8, K]}``;
  column k, viewed as [1280, 8, 8], is the h-space vector of concept k (SD1.4, 512 px).
* RespoDiff (arXiv 2509.15257) ``unet.pth``: ``{'controlnet.fc1.weight': [1280*8*8, K],
  'controlnet_residual.fc2.weight': [1280*8*8, K]}``, the weights of the two bias-free
  ``nn.Linear`` modules the reference adds to the bottleneck: RAM (``controlnet``) and SAM
  (``controlnet_residual``). A one-hot concept index selects column k of each, viewed as
  [1280, 8, 8]; the reference adds RAM + SAM. Each concept becomes one ``respodiff_ram_sam``
  file with both tensors. The reference trains one concept per run (K = 10 columns), so only
  the trained concept's column is meaningful: import it by name.

Column names come from the ``concept_dict.json`` published beside the file (name -> column);
a dict that gives two names the same column is refused, because a column holds one concept.
A file is recognised by its exact keys; anything else (an unknown key, SAM without RAM, a
file with no concept columns) is an error that says what was expected.

The command line tool is ``python -m scripts.import_reference`` (scripts/import_reference.py).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .files import file_problem
from .vector_file import SteeringVector, VectorFileError, save_vector

FORMATS = ("auto", "embedding_direction", "sdisc", "respodiff")
SDISC_KEY = "controlnet.fc1.weight"
RAM_KEY = SDISC_KEY  # RespoDiff's target module (RAM) has SDisc's layout
SAM_KEY = "controlnet_residual.fc2.weight"
SDISC_SHAPE = (1280, 8, 8)
EMBEDDING_KEYS = frozenset({"a", "b"})
FORMAT_KEYS = {
    "embedding_direction": EMBEDDING_KEYS,
    "sdisc": frozenset({SDISC_KEY}),
    "respodiff": frozenset({RAM_KEY, SAM_KEY}),
}
FORMAT_DESCRIPTIONS = {
    "embedding_direction": "embedding direction (arXiv 2505.15427): d = b @ a",
    "sdisc": f"SDisc (CVPR 2024): h-space vectors in the columns of {SDISC_KEY}",
    "respodiff": f"RespoDiff (arXiv 2509.15257): RAM = {RAM_KEY}, SAM = {SAM_KEY}, one column per concept",
}


@dataclass
class ReferenceImport:
    """What an import found: the detected format, the vectors and notes for the report."""

    format: str
    vectors: list[SteeringVector]
    notes: list[str] = field(default_factory=list)

    def report_header(self) -> str:
        lines = [f"detected format: {self.format} ({FORMAT_DESCRIPTIONS[self.format]})"]
        return "\n".join(lines + self.notes)


def load_reference_state(path: str) -> Mapping[str, torch.Tensor]:
    """Weights-only load of a reference .pth; never unpickles arbitrary objects."""
    problem = file_problem(path)
    if problem is not None:
        raise VectorFileError(f"{path} cannot be loaded as a reference file: it {problem}")
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
    """The reference format whose exact key set the file has."""
    keys = frozenset(state)
    for name, expected in FORMAT_KEYS.items():
        if keys == expected:
            return name
    expected = "; ".join(f"{sorted(k)} ({name})" for name, k in FORMAT_KEYS.items())
    if SAM_KEY in keys and RAM_KEY not in keys:
        raise VectorFileError(f"the file has RespoDiff's SAM ({SAM_KEY}) but not its RAM ({RAM_KEY}); "
                              f"expected the keys {expected}")
    raise VectorFileError(f"unrecognised reference file with keys {sorted(keys)[:8]}; expected exactly {expected}")


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


def check_concept_dict(concepts: Mapping, source: str = "concept dict") -> dict[str, int]:
    """name -> column, with integer columns and no column named twice (or VectorFileError)."""
    if not isinstance(concepts, Mapping):
        raise VectorFileError(f"{source}: expected a JSON object of concept name -> column index; got "
                              f"{type(concepts).__name__}")
    by_column: dict[int, str] = {}
    for name, index in concepts.items():
        if not isinstance(name, str) or not name.strip():
            raise VectorFileError(f"{source}: concept names must be non-empty strings; got {name!r}")
        if isinstance(index, bool) or not isinstance(index, int):
            raise VectorFileError(f"{source}: concept {name!r} has column {index!r}; expected an integer index")
        if index in by_column:
            raise VectorFileError(
                f"{source} maps both {by_column[index]!r} and {name!r} to column {index}; a column holds one "
                "concept. Keep only the name of the concept that column was trained for")
        by_column[index] = name
    return dict(concepts)


def find_concept_dict(path: str) -> tuple[dict[str, int], str] | None:
    """The concept dict published beside the file, if any: (dict, its path)."""
    for candidate in sorted(glob.glob(os.path.join(os.path.dirname(path), "*concept_dict*.json"))):
        problem = file_problem(candidate)
        if problem is not None:
            raise VectorFileError(f"{candidate} cannot be read as a concept dict: it {problem}")
        try:
            with open(candidate) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise VectorFileError(f"{candidate} is not readable JSON ({e})") from None
        except RecursionError:
            raise VectorFileError(f"{candidate} is not readable JSON (it nests too deeply)") from None
        if isinstance(data, dict):
            return check_concept_dict(data, candidate), candidate
    return None


def concept_columns(state: Mapping[str, torch.Tensor], keys: tuple[str, ...], source: str) -> list[torch.Tensor]:
    """The [1280*8*8, K] weight matrices under `keys`, all of one shape, K >= 1."""
    rows = SDISC_SHAPE[0] * SDISC_SHAPE[1] * SDISC_SHAPE[2]
    weights = []
    for key in keys:
        weight = state[key].float()
        if weight.dim() != 2 or weight.shape[0] != rows:
            raise VectorFileError(f"{source}: {key} has shape {list(weight.shape)}; expected [{rows}, K] "
                                  f"(K concept columns of 1280x8x8)")
        if weight.shape[1] == 0:
            raise VectorFileError(f"{source}: {key} has no concept columns (shape {list(weight.shape)}); "
                                  "nothing to import")
        weights.append(weight)
    if len({tuple(w.shape) for w in weights}) > 1:
        raise VectorFileError(f"{source}: " + " and ".join(f"{k} {list(w.shape)}" for k, w in zip(keys, weights))
                              + " differ in shape; RAM and SAM have one column per concept each")
    return weights


def column_names(count: int, concepts: Mapping[str, int] | None) -> dict[int, str]:
    """Column -> name: the concept dict's columns only when there is one, else every column."""
    if not concepts:
        return {i: f"concept_{i}" for i in range(count)}
    concepts = check_concept_dict(concepts)
    names = {}
    for name, index in concepts.items():
        if not 0 <= index < count:
            raise VectorFileError(f"concept {name!r} has index {index}; the file holds {count} concepts "
                                  f"(columns 0..{count - 1})")
        names[index] = name
    return dict(sorted(names.items()))


def convert_sdisc(state: Mapping[str, torch.Tensor], source: str, concepts: Mapping[str, int] | None = None,
                  arch: str = "sd1") -> list[SteeringVector]:
    (weight,) = concept_columns(state, (SDISC_KEY,), source)
    names = {i: f"concept_{i}" for i in range(weight.shape[1])}
    names.update(column_names(weight.shape[1], concepts))
    vectors = []
    for index, name in names.items():
        info = {
            "name": f"sdisc_{name}",
            "concept": name,
            "origin": f"imported from {os.path.basename(source)} column {index} (SDisc, CVPR 2024)",
            "resolution": "512",
        }
        c = weight[:, index].reshape(SDISC_SHAPE).contiguous()
        vectors.append(SteeringVector("hspace_cvector", arch, {"c": c}, info))
    return vectors


def convert_respodiff(state: Mapping[str, torch.Tensor], source: str, concepts: Mapping[str, int] | None = None,
                      arch: str = "sd1") -> list[SteeringVector]:
    """One respodiff_ram_sam vector per named column (every column when no names are given)."""
    ram, sam = concept_columns(state, (RAM_KEY, SAM_KEY), source)
    vectors = []
    for index, name in column_names(ram.shape[1], concepts).items():
        info = {
            "name": f"respodiff_{name}",
            "concept": name,
            "origin": f"imported from {os.path.basename(source)} column {index} (RespoDiff RAM + SAM, "
                      "arXiv 2509.15257)",
            "resolution": "512",
        }
        tensors = {"ram": ram[:, index].reshape(SDISC_SHAPE).contiguous(),
                   "sam": sam[:, index].reshape(SDISC_SHAPE).contiguous()}
        vectors.append(SteeringVector("respodiff_ram_sam", arch, tensors, info))
    return vectors


def import_reference(path: str, fmt: str = "auto", concepts: Mapping[str, int] | None = None,
                     arch: str = "sd1") -> ReferenceImport:
    """Convert one reference file into SteeringVectors (not yet saved), with the detected format."""
    if fmt not in FORMATS:
        raise VectorFileError(f"format {fmt!r}; expected one of {FORMATS}")
    state = load_reference_state(path)
    detected = detect_format(state)
    if fmt != "auto" and fmt != detected:
        raise VectorFileError(f"{path} looks like a {detected} file ({FORMAT_DESCRIPTIONS[detected]}), not {fmt}")
    if detected == "embedding_direction":
        return ReferenceImport(detected, convert_embedding_direction(state, path, arch))
    notes = []
    if concepts is not None:
        concepts = check_concept_dict(concepts)
        notes.append("concept names: given")
    else:
        found = find_concept_dict(path)
        if found is not None:
            concepts, where = found
            notes.append(f"concept names: {os.path.basename(where)}")
        else:
            notes.append("concept names: none found (no *concept_dict*.json beside the file); columns are "
                         "named concept_<k>")
    convert = convert_sdisc if detected == "sdisc" else convert_respodiff
    vectors = convert(state, path, concepts, arch)
    if not vectors:
        raise VectorFileError(f"{path}: no concepts to import ({FORMAT_DESCRIPTIONS[detected]})")
    return ReferenceImport(detected, vectors, notes)


def import_reference_vectors(path: str, fmt: str = "auto", concept: str = "", save: bool = True
                             ) -> tuple[list[SteeringVector], str]:
    """Convert one reference file, keep only `concept` (when given) and save each vector as .safetensors
    beside the file (when `save`): (the vectors, a report of the detected format and each vector)."""
    imported = import_reference(path, fmt)
    vectors = imported.vectors
    if concept.strip():
        wanted = concept.strip()
        vectors = [v for v in vectors if v.info.get("concept") == wanted]
        if not vectors:
            available = [v.info.get("concept") for v in imported.vectors]
            raise VectorFileError(f"concept {wanted!r} is not in {os.path.basename(path)}; it has {available}")
    lines = [imported.report_header()]
    for v in vectors:
        line = v.describe()
        if save:
            written = save_vector(v, os.path.dirname(path), v.name, overwrite=True)
            line += f" -> {os.path.basename(written)}"
        lines.append(line)
    return vectors, "\n".join(lines)


def import_reference_file(path: str, fmt: str = "auto", concepts: Mapping[str, int] | None = None,
                          arch: str = "sd1") -> list[SteeringVector]:
    """Convert one reference file into SteeringVectors (not yet saved)."""
    return import_reference(path, fmt, concepts, arch).vectors
