"""One file format for every steering vector: safetensors with validated metadata.

A file holds one vector (one concept) of one method for one architecture:

=====================  =========================  ====================================
method                 tensors (roles)            shape
=====================  =========================  ====================================
embedding_direction    direction                  [T, D]  (T = 77 tokens for CLIP-chunk models, any
                                                  number for SD3/FLUX; D = text width)
                       or direction_b, direction_a [T, r] and [r, D]  (d = B @ A)
                       + optional pooled          [P]  (P = pooled width: SDXL, SD3, FLUX)
hspace_cvector         c                          [C, H, W] (C = bottleneck channels)
respodiff_ram_sam      ram, sam                   [C, H, W] each, same shape
=====================  =========================  ====================================

Metadata (all strings, as safetensors requires): ``format``, ``format_version``,
``method``, ``arch``, ``tensors`` (JSON: role -> shape and dtype, checked against the
data), ``created_by``, and optional ``name``, ``concept``, ``neutral_prompt``,
``target_prompt``, ``negative_prompt``, ``origin``, ``resolution``, ``training`` (JSON).

Files are only ever read with safetensors (no unpickling) and written atomically.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

from .architectures import ArchitectureError, get_architecture
from .files import atomic_file, file_problem

FORMAT_NAME = "responsible-steering.vector"
FORMAT_VERSION = 1
PACK_VERSION = "0.1.0"
CREATED_BY = f"responsible-steering {PACK_VERSION}"
FILE_EXTENSION = ".safetensors"

# Vectors are small; anything bigger is not a steering vector (e.g. a checkpoint).
MAX_VECTOR_FILE_BYTES = 64 * 1024 * 1024
MAX_SPATIAL = 512
ACCEPTED_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
TEXT_FIELDS = ("name", "concept", "neutral_prompt", "target_prompt", "negative_prompt", "origin")


class VectorFileError(ValueError):
    """A steering vector file (or in-memory vector) is malformed or incompatible."""


@dataclass(frozen=True)
class FileMethod:
    """What a file's ``method`` field stands for: which tensors the file stores and where they act
    (not a training objective: several objectives can write the same file method)."""
    name: str
    label: str
    kind: str  # "embedding" or "hspace"
    role_sets: tuple[tuple[str, ...], ...]  # accepted sets of tensor roles


FILE_METHODS: dict[str, FileMethod] = {
    m.name: m
    for m in (
        FileMethod("embedding_direction", "Embedding direction (arXiv 2505.15427)", "embedding",
                   (("direction",), ("direction_a", "direction_b"), ("direction", "pooled"),
                    ("direction_a", "direction_b", "pooled"))),
        FileMethod("hspace_cvector", "h-space c-vector (CoDSMa / SDisc)", "hspace", (("c",),)),
        FileMethod("respodiff_ram_sam", "RespoDiff RAM + SAM", "hspace", (("ram", "sam"),)),
    )
}


def get_file_method(name: str) -> FileMethod:
    try:
        return FILE_METHODS[name]
    except KeyError:
        raise VectorFileError(f"unknown method {name!r}; expected one of {sorted(FILE_METHODS)}") from None


@dataclass(frozen=True)
class SteeringVector:
    """One validated steering vector: float32 CPU tensors by role, plus its description."""

    method: str
    arch: str
    tensors: Mapping[str, torch.Tensor]
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        validate_vector(self)

    @property
    def kind(self) -> str:
        return FILE_METHODS[self.method].kind

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.info.get("concept") or self.method)

    def embedding_direction(self) -> torch.Tensor:
        """The direction d, [T, D]; low-rank factors are multiplied out."""
        if self.kind != "embedding":
            raise VectorFileError(f"{self.describe()} is an h-space vector, not an embedding direction")
        if "direction" in self.tensors:
            return self.tensors["direction"]
        return self.tensors["direction_b"] @ self.tensors["direction_a"]

    def pooled_direction(self) -> torch.Tensor | None:
        """The direction of the pooled vector, [P], or None when the vector has none."""
        self.embedding_direction()  # the same error for h-space vectors
        return self.tensors.get("pooled")

    def hspace_offset(self) -> torch.Tensor:
        """The total bottleneck offset, [C, H, W] (RAM + SAM for RespoDiff)."""
        if self.kind != "hspace":
            raise VectorFileError(f"{self.describe()} is an embedding direction, not an h-space vector")
        return sum(self.tensors[r] for r in sorted(self.tensors))

    def describe(self) -> str:
        shapes = ", ".join(f"{r} {list(t.shape)}" for r, t in sorted(self.tensors.items()))
        return f"'{self.name}' ({self.method}, {self.arch}: {shapes})"

    def report(self) -> str:
        """:meth:`describe`, then what the vector says about itself (one line per field)."""
        lines = [self.describe()]
        for key in ("concept", "neutral_prompt", "target_prompt", "negative_prompt", "origin", "resolution"):
            if self.info.get(key):
                lines.append(f"{key}: {self.info[key]}")
        if self.info.get("training"):
            lines.append("training: " + json.dumps(self.info["training"], sort_keys=True))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- validation

def _expected_shapes(method: FileMethod, arch_name: str, tensors: Mapping[str, torch.Tensor]) -> None:
    arch = get_architecture(arch_name)
    shapes = {r: tuple(t.shape) for r, t in tensors.items()}
    if method.kind == "embedding":
        if arch.text_width is None:
            raise VectorFileError(f"architecture {arch_name} has no text conditioning for an embedding direction")
        tokens = arch.text_tokens
        if "direction" in shapes:
            shape = shapes["direction"]
            if len(shape) != 2 or shape[1] != arch.text_width or (tokens and shape[0] != tokens) or shape[0] < 1:
                raise VectorFileError(
                    f"tensor 'direction' has shape {list(shape)}; expected "
                    f"[{tokens or 'T'}, {arch.text_width}] for {arch_name}")
        else:
            b, a = shapes["direction_b"], shapes["direction_a"]
            if len(b) != 2 or len(a) != 2 or b[1] != a[0] or b[1] < 1:
                raise VectorFileError(
                    f"low-rank factors direction_b {list(b)} and direction_a {list(a)} do not multiply; "
                    "expected [T, r] and [r, D]")
            if a[1] != arch.text_width or (tokens and b[0] != tokens):
                raise VectorFileError(
                    f"direction_b @ direction_a has shape [{b[0]}, {a[1]}]; expected "
                    f"[{tokens or 'T'}, {arch.text_width}] for {arch_name}")
        if "pooled" in shapes and shapes["pooled"] != (arch.pooled_width,):
            raise VectorFileError(
                f"tensor 'pooled' has shape {list(shapes['pooled'])}; " +
                (f"expected [{arch.pooled_width}] for {arch_name}" if arch.pooled_width
                 else f"{arch_name} has no pooled text vector"))
    else:
        if arch.bottleneck_channels is None:
            raise VectorFileError(f"architecture {arch_name} has no UNet bottleneck for an h-space vector")
        first = None
        for role, shape in sorted(shapes.items()):
            if (len(shape) != 3 or shape[0] != arch.bottleneck_channels
                    or not (1 <= shape[1] <= MAX_SPATIAL and 1 <= shape[2] <= MAX_SPATIAL)):
                raise VectorFileError(
                    f"tensor '{role}' has shape {list(shape)}; expected "
                    f"[{arch.bottleneck_channels}, H, W] for {arch_name} (1 <= H, W <= {MAX_SPATIAL})")
            if first is not None and shape != first:
                raise VectorFileError(f"tensors of one vector differ in shape: {sorted(shapes.items())}")
            first = shape


def validate_vector(vector: SteeringVector) -> None:
    """Raise VectorFileError unless the vector's method, architecture, roles and values are sound."""
    method = get_file_method(vector.method)
    try:
        get_architecture(vector.arch)
    except ArchitectureError as e:
        raise VectorFileError(str(e)) from None
    roles = tuple(sorted(vector.tensors))
    if roles not in method.role_sets:
        raise VectorFileError(
            f"method {vector.method} stores tensors {[list(s) for s in method.role_sets]}; got {list(roles)}")
    for role, tensor in vector.tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise VectorFileError(f"tensor '{role}' is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dtype != torch.float32:
            raise VectorFileError(f"tensor '{role}' must be held as float32 in memory; got {tensor.dtype}")
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise VectorFileError(f"tensor '{role}' contains {bad} NaN/Inf values")
    _expected_shapes(method, vector.arch, vector.tensors)


# ----------------------------------------------------------------------------- reading

def _sniff_non_safetensors(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch.save / .pth file?)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "a Python pickle (a .pt/.pth/.ckpt file?)"
    return None


def read_header(path: str) -> tuple[dict, dict[str, str]]:
    """Parse and check a safetensors header without touching tensor data.

    Returns (tensor entries, metadata)."""
    problem = file_problem(path)
    if problem is not None and problem != "no such file":
        raise VectorFileError(f"cannot read vector file {path}: it {problem}")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise VectorFileError(f"cannot read vector file {path}: {e.strerror}") from None
    if size > MAX_VECTOR_FILE_BYTES:
        raise VectorFileError(
            f"{path} is {size / 2**20:.0f} MiB; steering vectors are at most "
            f"{MAX_VECTOR_FILE_BYTES // 2**20} MiB (is this a model checkpoint?)")
    with open(path, "rb") as f:
        head = f.read(8)
        sniffed = _sniff_non_safetensors(head)
        if sniffed:
            raise VectorFileError(
                f"{path} is {sniffed}, not safetensors; pickled files are never loaded. "
                "Convert the authors' vectors with the Import Reference Vectors node or "
                "`python -m scripts.import_reference`")
        if len(head) < 8:
            raise VectorFileError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
        header_len = int.from_bytes(head, "little")
        if header_len <= 0 or 8 + header_len > size:
            raise VectorFileError(
                f"{path} is not a valid safetensors file (header of {header_len} bytes declared, "
                f"file has {size} bytes: truncated or not safetensors)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise VectorFileError(f"{path} is not a valid safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise VectorFileError(f"{path} is not a valid safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise VectorFileError(f"{path} is not a valid safetensors file (its __metadata__ must be a JSON object of "
                              f"texts; got {type(metadata).__name__} with other values)")
    data_len = size - 8 - header_len
    for role, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise VectorFileError(
                f"{path}: tensor '{role}' lies outside the file's {data_len} data bytes (file truncated?)")
    return header, metadata


def _parse_json_field(path: str, metadata: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError):
        raise VectorFileError(f"{path}: metadata field '{key}' is missing or not valid JSON") from None
    except RecursionError:
        raise VectorFileError(f"{path}: metadata field '{key}' nests too deeply to read") from None


def load_vector(path: str) -> SteeringVector:
    """Read and fully validate one vector file."""
    header, metadata = read_header(path)
    if metadata.get("format") != FORMAT_NAME:
        raise VectorFileError(
            f"{path} is a safetensors file but not a steering vector "
            f"(metadata 'format' is {metadata.get('format')!r}, expected {FORMAT_NAME!r})")
    try:
        version = int(metadata.get("format_version", ""))
    except (TypeError, ValueError):
        version = -1
    if not 1 <= version <= FORMAT_VERSION:
        raise VectorFileError(
            f"{path}: format_version {metadata.get('format_version')!r} is not supported "
            f"(this pack reads versions 1..{FORMAT_VERSION}; update the pack?)")
    method = metadata.get("method", "")
    get_file_method(method)
    declared = _parse_json_field(path, metadata, "tensors")
    if not isinstance(declared, dict) or set(declared) != set(header):
        raise VectorFileError(
            f"{path}: metadata lists tensors {sorted(declared) if isinstance(declared, dict) else declared}, "
            f"file holds {sorted(header)}")
    dtype_names = {v: k for k, v in ACCEPTED_DTYPES.items()}
    for role, entry in header.items():
        if not isinstance(declared[role], dict) or not isinstance(entry.get("shape", []), list):
            raise VectorFileError(f"{path}: tensor '{role}': the header and metadata must describe it as a JSON "
                                  f"object with a shape list; got {declared[role]!r:.80} and "
                                  f"{entry.get('shape')!r:.80}")
        if entry.get("dtype") not in dtype_names:
            raise VectorFileError(
                f"{path}: tensor '{role}' has dtype {entry.get('dtype')}; expected one of "
                f"{sorted(dtype_names)}")
        if list(entry.get("shape", [])) != list(declared[role].get("shape", [])):
            raise VectorFileError(
                f"{path}: tensor '{role}' has shape {entry.get('shape')} but metadata says "
                f"{declared[role].get('shape')}")

    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(path, framework="pt", device="cpu") as f:
            for role in header:
                tensors[role] = f.get_tensor(role).to(torch.float32)
    except Exception as e:  # safetensors raises its own error types
        raise VectorFileError(f"{path} could not be read as safetensors: {e}") from None

    info: dict[str, Any] = {k: metadata[k] for k in TEXT_FIELDS if k in metadata}
    if "training" in metadata:
        info["training"] = _parse_json_field(path, metadata, "training")
    if "resolution" in metadata:
        info["resolution"] = metadata["resolution"]
    info.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    try:
        return SteeringVector(method=method, arch=metadata.get("arch", ""), tensors=tensors, info=info)
    except VectorFileError as e:
        raise VectorFileError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------- writing

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._ -]+")


def sanitize_filename(name: str) -> str:
    """A plain file name (no folders, no leading dots) ending in .safetensors."""
    base = name.replace("\\", "/").split("/")[-1].strip()
    if base.endswith(FILE_EXTENSION):
        base = base[: -len(FILE_EXTENSION)]
    base = _UNSAFE_NAME_CHARS.sub("_", base).strip(" .")
    if not base:
        raise VectorFileError(f"file name {name!r} has nothing usable after sanitising")
    return base[:120] + FILE_EXTENSION


def vector_metadata(vector: SteeringVector) -> dict[str, str]:
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "method": vector.method,
        "arch": vector.arch,
        "created_by": CREATED_BY,
        "tensors": json.dumps({r: {"shape": list(t.shape), "dtype": "F32"}
                               for r, t in sorted(vector.tensors.items())}),
    }
    for key in TEXT_FIELDS:
        if vector.info.get(key):
            meta[key] = str(vector.info[key])
    if vector.info.get("resolution"):
        meta["resolution"] = str(vector.info["resolution"])
    if vector.info.get("training") is not None:
        meta["training"] = json.dumps(vector.info["training"], sort_keys=True)
    return meta


def write_safetensors_atomically(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> str:
    """Write a safetensors file via a temp file in the same folder, fsync and rename: a crash or
    an error never leaves a partial file at `path`."""
    from safetensors.torch import save_file

    with atomic_file(path, 0o644, FILE_EXTENSION) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def write_vector_file(vector: SteeringVector, path: str) -> str:
    """Write atomically (temp file in the same folder, then rename); nothing partial remains."""
    validate_vector(vector)
    tensors = {r: t.detach().to("cpu", torch.float32).contiguous() for r, t in vector.tensors.items()}
    return write_safetensors_atomically(tensors, path, vector_metadata(vector))


def save_vector(vector: SteeringVector, directory: str, name: str, overwrite: bool = False) -> str:
    """Save into `directory` (never outside it) under a sanitised name.

    Without `overwrite`, an existing name gets a numeric suffix instead. Returns the path."""
    directory = os.path.realpath(directory)
    filename = sanitize_filename(name)
    stem = filename[: -len(FILE_EXTENSION)]
    path = os.path.join(directory, filename)
    counter = 1
    while not overwrite and os.path.exists(path):
        path = os.path.join(directory, f"{stem}_{counter:05d}{FILE_EXTENSION}")
        counter += 1
    if os.path.dirname(os.path.realpath(path)) != directory:
        raise VectorFileError(f"refusing to write {path}: outside {directory}")
    return write_vector_file(vector, path)


# ----------------------------------------------------------------------------- combining

def resize_spatial(tensor: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a [C, H, W] (or [K, C, H, W]) h-space tensor to `size`."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    batched = tensor if tensor.dim() == 4 else tensor.unsqueeze(0)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = torch.nn.functional.interpolate(batched.float(), size=tuple(size), mode=mode, **kwargs)
    return out if tensor.dim() == 4 else out.squeeze(0)


def check_compatible(vectors: Sequence[SteeringVector], what: str) -> None:
    """Vectors used together (combined, or a set for fair sampling) must share method and architecture."""
    first = vectors[0]
    for v in vectors[1:]:
        if (v.method, v.arch) != (first.method, first.arch):
            raise VectorFileError(
                f"vectors {what} together must share method and architecture: {first.describe()} vs "
                f"{v.describe()}")


def vector_set(vectors: Sequence[SteeringVector]) -> tuple[SteeringVector, ...]:
    """Attribute vectors for fair sampling (each image gets one): at least one, all compatible."""
    if not vectors:
        raise VectorFileError("a vector set needs at least one vector")
    check_compatible(vectors, "in a set")
    return tuple(vectors)


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` [n, k] with zero rows appended up to `rows`."""
    if tensor.shape[0] == rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], tensor.shape[1])])


def combine_vectors(weighted: Iterable[tuple[SteeringVector, float]], name: str = "combined") -> SteeringVector:
    """Weighted sum of vectors of the same method and architecture.

    Low-rank embedding directions stay exactly low-rank (factors are concatenated);
    h-space vectors of different spatial sizes are resized to the largest first."""
    items = [(v, float(w)) for v, w in weighted]
    if not items:
        raise VectorFileError("nothing to combine")
    check_compatible([v for v, _ in items], "combined")
    first = items[0][0]
    if first.kind == "embedding":
        # T5-style directions may differ in token count: rows a direction lacks leave their tokens as they are,
        # i.e. count as zero rows
        tokens = max((v.tensors.get("direction") if "direction" in v.tensors else v.tensors["direction_b"]).shape[0]
                     for v, _ in items)
        if all("direction_b" in v.tensors for v, _ in items):
            tensors = {
                "direction_b": torch.cat([w * _pad_rows(v.tensors["direction_b"], tokens) for v, w in items], dim=1),
                "direction_a": torch.cat([v.tensors["direction_a"] for v, _ in items], dim=0),
            }
        else:
            tensors = {"direction": sum(w * _pad_rows(v.embedding_direction(), tokens) for v, w in items)}
        if any(v.pooled_direction() is not None for v, _ in items):
            tensors["pooled"] = sum(w * v.pooled_direction() for v, w in items if v.pooled_direction() is not None)
    else:
        height = max(v.tensors[next(iter(v.tensors))].shape[-2] for v, _ in items)
        width = max(v.tensors[next(iter(v.tensors))].shape[-1] for v, _ in items)
        tensors = {role: sum(w * resize_spatial(v.tensors[role], (height, width)) for v, w in items)
                   for role in first.tensors}
    parts = [f"{w:g}*{v.name}" for v, w in items]
    info = {"name": name, "concept": " + ".join(parts), "origin": "combined: " + " + ".join(parts)}
    return SteeringVector(method=first.method, arch=first.arch, tensors=tensors, info=info)

