"""The operator's safety policy: its file, its schema, strict validation and the decisions it makes.

An operator who runs ComfyUI for other people writes a JSON file (``policy.json`` in
``<user directory>/responsible-steering/``, or the path in ``RESPONSIBLE_STEERING_POLICY``);
the pack's server glue (nodes/policy_server.py) enforces it for every prompt. This module has
no ComfyUI import: it reads and checks the file and answers questions about texts.

* :data:`SCHEMA` is the published JSON Schema (``policy.schema.json`` at the repository root is
  this dict written out); :func:`validate` checks a parsed document against it with a small
  interpreter of the keywords the schema uses, so the schema and the checks cannot drift apart.
* :func:`read_policy` fails closed: a file that is not a regular file (a directory, a device, a
  FIFO), too large, not UTF-8, not JSON, nested too deeply, with duplicate keys, NaN/Infinity,
  unknown keys or wrong types raises :class:`PolicyError` naming the file, the field and the
  problem. A missing file at the default place means "no policy"; a missing file named by the
  environment variable is an error (the operator asked for a policy).
* :func:`match_words` / :func:`rewrite_text` are the word-list prompt detector: whole words or
  phrases, case-insensitive.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

ENV_VAR = "RESPONSIBLE_STEERING_POLICY"
POLICY_DIR = "responsible-steering"
POLICY_FILE = "policy.json"
AUDIT_FILE = "audit.jsonl"

MAX_POLICY_BYTES = 256 * 1024
MAX_CHECKED_TEXT = 20000
"""Longest text the word list is run on; a longer text that reaches a text encoder is refused (the check runs
in the server's request handler, so its cost is bounded)."""
MAX_DEPTH = 8
"""Deepest nesting of arrays/objects a policy may have (the schema needs 4)."""

SCORE_KINDS = ("colour", "toyworld_red", "nudenet", "clip_violence")
CENSOR_MODES = ("blur", "pixelate", "black", "replace")
INPUT_ACTIONS = ("reject", "rewrite", "log")
DETECTORS = ("word_list", "nearest_neighbour")
DETECTOR_OPTIONS = {"word_list": {"unsafe_words"},
                    "nearest_neighbour": {"clip_model", "unsafe_concepts", "safe_concepts", "k", "threshold"}}
DETECTOR_REQUIRED = {"word_list": "unsafe_words", "nearest_neighbour": "clip_model"}
PREVIEW_MODES = ("allow", "suppress", "blur")
PREVIEW_WHEN = ("flagged", "always")
COLOUR_STATISTIC_NAMES = ("brightness", "red", "green", "blue", "redness")   # steering/safety/colour.py
NUDENET_PRESETS = ("stg_nudity", "all_exposed", "all")

_THRESHOLD = {"type": "number", "minimum": -100, "maximum": 100,
              "description": "An image is unsafe when this score is strictly above the threshold."}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Responsible Steering server policy",
    "description": "What the Responsible Steering pack enforces in the ComfyUI server for every prompt.",
    "type": "object",
    "additionalProperties": False,
    "required": ["version"],
    "properties": {
        "version": {"type": "integer", "enum": [1], "description": "Format version of this file."},
        "name": {"type": "string", "maxLength": 200, "description": "Shown to users: which policy is active."},
        "operator_token_sha256": {
            "type": "string", "pattern": "^[0-9a-f]{64}$",
            "description": "sha256 (hex) of the token that grants the operator view of the policy panel "
                           "(sent as the X-RS-Operator-Token header). Without it nobody gets the operator "
                           "view over HTTP."},
        "input": {
            "type": "object", "additionalProperties": False, "required": ["action"],
            "description": "The prompt detector run on every text that reaches a text encoder: a word list, or "
                           "the Dual-Latent Input Detector's nearest-neighbour classifier on a local CLIP.",
            "properties": {
                "detector": {"type": "string", "enum": list(DETECTORS)},
                "unsafe_words": {"type": "array", "minItems": 1, "maxItems": 1000,
                                 "items": {"type": "string", "minLength": 1, "maxLength": 100},
                                 "description": "word_list: words or phrases (whole words, any case)."},
                "clip_model": {"type": "string", "minLength": 1, "maxLength": 255,
                               "description": "nearest_neighbour: a CLIP folder in models/safety_clip."},
                "unsafe_concepts": {"type": "array", "minItems": 1, "maxItems": 256,
                                    "items": {"type": "string", "minLength": 1, "maxLength": 200}},
                "safe_concepts": {"type": "array", "minItems": 1, "maxItems": 256,
                                  "items": {"type": "string", "minLength": 1, "maxLength": 200}},
                "k": {"type": "integer", "minimum": 1, "maximum": 100},
                "threshold": {"type": "number", "minimum": 0, "maximum": 0.99,
                              "description": "nearest_neighbour: unsafe when the unsafe share of the vote exceeds it."},
                "action": {"type": "string", "enum": list(INPUT_ACTIONS)},
                "safe_suffix": {"type": "string", "maxLength": 200,
                                "description": "Appended to a rewritten text."},
            },
        },
        "output": {
            "type": "object", "additionalProperties": False, "required": ["scores"],
            "description": "Every image that reaches an output node is scored; flagged images are censored.",
            "properties": {
                "scores": {
                    "type": "array", "minItems": 1, "maxItems": 8,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["kind"],
                        "properties": {
                            "kind": {"type": "string", "enum": list(SCORE_KINDS)},
                            "threshold": _THRESHOLD,
                            "statistic": {"type": "string", "enum": list(COLOUR_STATISTIC_NAMES)},
                            "temperature": {"type": "number", "minimum": 0.0001, "maximum": 10},
                            "labels": {"type": "string", "enum": list(NUDENET_PRESETS)},
                            "detection_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                            "clip_model": {"type": "string", "minLength": 1, "maxLength": 255,
                                           "description": "clip_violence: a CLIP folder in models/safety_clip."},
                            "texts": {"type": "array", "minItems": 1, "maxItems": 64,
                                      "items": {"type": "string", "minLength": 1, "maxLength": 200},
                                      "description": "clip_violence: the unsafe texts (default: the pack's)."},
                        },
                    },
                },
                "censor": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "mode": {"type": "string", "enum": list(CENSOR_MODES)},
                        "strength": {"type": "integer", "minimum": 1, "maximum": 256},
                    },
                },
            },
        },
        "previews": {
            "type": "object", "additionalProperties": False,
            "description": "Live latent previews sent to the browser while sampling.",
            "properties": {
                "mode": {"type": "string", "enum": list(PREVIEW_MODES)},
                "when": {"type": "string", "enum": list(PREVIEW_WHEN)},
                "blur_radius": {"type": "integer", "minimum": 1, "maximum": 64},
            },
        },
        "steering": {
            "type": "object", "additionalProperties": False,
            "description": "Steering applied to every sampler of every prompt, by the architecture of its prompt.",
            "properties": {
                "embedding_direction": {
                    "type": "object", "maxProperties": 32,
                    "description": "Architecture name (sd1, sdxl, toyworld, ...) -> an embedding-direction vector "
                                   "added to every sampler's positive conditioning.",
                    "additionalProperties": {
                        "type": "object", "additionalProperties": False, "required": ["vector"],
                        "properties": {
                            "vector": {"type": "string", "minLength": 1, "maxLength": 255,
                                       "description": "A file in models/steering_vectors."},
                            "strength": {"type": "number", "minimum": -20, "maximum": 20},
                            "start_percent": {"type": "number", "minimum": 0, "maximum": 1},
                            "end_percent": {"type": "number", "minimum": 0, "maximum": 1},
                        },
                    },
                },
            },
        },
        "audit": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "path": {"type": "string", "minLength": 1, "maxLength": 4096,
                         "description": "JSON Lines log; relative paths are relative to the policy file."},
                "pnginfo": {"type": "boolean", "description": "Embed the per-image record in saved PNGs."},
            },
        },
    },
}


class PolicyError(ValueError):
    """The policy file cannot be enforced as written: names the file, the field and the problem."""

    def __init__(self, path: str, field_name: str, problem: str):
        self.path, self.field, self.problem = path, field_name, problem
        super().__init__(f"responsible-steering policy {path}: {field_name}: {problem}")


# ---------------------------------------------------------------- the schema interpreter

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def _type_ok(value: Any, expected: str) -> bool:
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, _TYPES[expected])


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else _json_type(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(document: Any, path: str, schema: dict = SCHEMA, where: str = "(top level)") -> None:
    """Raise :class:`PolicyError` at the first place `document` breaks `schema` (the keywords SCHEMA uses)."""
    expected = schema.get("type")
    if expected and not _type_ok(document, expected):
        raise PolicyError(path, where, f"expected {'a finite ' if expected == 'number' else ''}{expected}; "
                                       f"got {_json_type(document)} {_short(document)}")
    if "enum" in schema and document not in schema["enum"]:
        raise PolicyError(path, where, f"expected one of {schema['enum']}; got {_short(document)}")
    if "minimum" in schema and document < schema["minimum"] or "maximum" in schema and document > schema["maximum"]:
        raise PolicyError(path, where, f"expected a value in [{schema.get('minimum')}, {schema.get('maximum')}]; "
                                       f"got {document}")
    if isinstance(document, str):
        if len(document) < schema.get("minLength", 0) or len(document) > schema.get("maxLength", math.inf):
            raise PolicyError(path, where, f"expected a text of {schema.get('minLength', 0)} to "
                                           f"{schema.get('maxLength')} characters; got {len(document)}")
        if "pattern" in schema and not re.fullmatch(schema["pattern"], document):
            raise PolicyError(path, where, f"expected a text matching {schema['pattern']}; got {_short(document)}")
    if isinstance(document, list):
        if len(document) < schema.get("minItems", 0) or len(document) > schema.get("maxItems", math.inf):
            raise PolicyError(path, where, f"expected {schema.get('minItems', 0)} to {schema.get('maxItems')} "
                                           f"items; got {len(document)}")
        for i, item in enumerate(document):
            validate(item, path, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(document, dict):
        properties = schema.get("properties", {})
        prefix = "" if where == "(top level)" else where + "."
        if len(document) > schema.get("maxProperties", math.inf):
            raise PolicyError(path, where, f"expected at most {schema['maxProperties']} keys; got {len(document)}")
        extra = schema.get("additionalProperties")
        for key in document:
            if key not in properties and extra is False:
                raise PolicyError(path, prefix + key, f"unknown key; expected one of {sorted(properties)}")
        for key in schema.get("required", []):
            if key not in document:
                raise PolicyError(path, prefix + key, "required but missing")
        for key, value in document.items():
            validate(value, path, properties.get(key, extra if isinstance(extra, dict) else {}), prefix + key)


# ---------------------------------------------------------------- reading the file

def _nesting_depth(text: str) -> int:
    """Deepest [ / { nesting of a JSON text (outside strings), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_duplicates(path: str):
    def hook(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise PolicyError(path, key, "appears twice in one object")
            seen[key] = value
        return seen
    return hook


def _no_constant(path: str):
    def hook(name):
        raise PolicyError(path, "(value)", f"{name} is not a JSON number")
    return hook


def file_problem(path: str) -> str | None:
    """What keeps `path` from being read as a file (checked without opening it, so a FIFO never blocks),
    or None for a regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, FIFO or socket)"
    return None


def read_regular_file(path: str, limit: int, error) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes; else ``error(problem)`` is raised.
    Checked on the opened descriptor (no race between the check and the read); a FIFO or device is never
    read (O_NONBLOCK on open, so a FIFO without writer does not block)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error("no such file") from None
    except IsADirectoryError:
        raise error("is a directory, not a file") from None
    except OSError as e:
        raise error(f"cannot be opened: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error("is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise error("is not a regular file (a device, FIFO or socket)")
        if info.st_size > limit:
            raise error(f"is {info.st_size} bytes; at most {limit} are read")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise error(f"grew past {limit} bytes while being read")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)


def parse_json_bytes(data: bytes, path: str, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON: UTF-8, nesting at most `max_depth`, no duplicate keys, no NaN/Infinity."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(path, "(file)", f"is not UTF-8 text (byte {e.start})") from None
    depth = _nesting_depth(text)
    if depth > max_depth:
        raise PolicyError(path, "(file)", f"nests arrays/objects {depth} deep; at most {max_depth} allowed")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(path), parse_constant=_no_constant(path))
    except json.JSONDecodeError as e:
        raise PolicyError(path, "(file)", f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise PolicyError(path, "(file)", "nests too deeply to parse") from None


@dataclass(frozen=True)
class ScoreSpec:
    kind: str
    threshold: float
    options: dict = field(default_factory=dict)

    def label(self) -> str:
        extra = self.options.get("statistic") or self.options.get("labels")
        return f"{self.kind}:{extra}" if extra else self.kind


DEFAULT_THRESHOLDS = {"colour": 0.0, "toyworld_red": 0.03, "nudenet": 0.0, "clip_violence": 0.2}


@dataclass(frozen=True)
class Policy:
    path: str
    sha256: str
    document: dict
    audit_path: str

    @property
    def name(self) -> str:
        return self.document.get("name", os.path.basename(self.path))

    # input
    @property
    def input(self) -> dict | None:
        return self.document.get("input")

    @property
    def detector(self) -> str | None:
        return self.input.get("detector", "word_list") if self.input else None

    @property
    def unsafe_words(self) -> list[str]:
        return list((self.input or {}).get("unsafe_words", []))

    @property
    def input_action(self) -> str | None:
        return self.input["action"] if self.input else None

    @property
    def safe_suffix(self) -> str:
        return (self.input or {}).get("safe_suffix", "")

    # output
    @property
    def scores(self) -> list[ScoreSpec]:
        specs = []
        for s in (self.document.get("output") or {}).get("scores", []):
            options = {k: v for k, v in s.items() if k not in ("kind", "threshold")}
            specs.append(ScoreSpec(s["kind"], float(s.get("threshold", DEFAULT_THRESHOLDS[s["kind"]])), options))
        return specs

    @property
    def censor_mode(self) -> str:
        return ((self.document.get("output") or {}).get("censor") or {}).get("mode", "blur")

    @property
    def censor_strength(self) -> int:
        return ((self.document.get("output") or {}).get("censor") or {}).get("strength", 16)

    # previews
    @property
    def preview_mode(self) -> str:
        return (self.document.get("previews") or {}).get("mode", "suppress")

    @property
    def preview_when(self) -> str:
        return (self.document.get("previews") or {}).get("when", "flagged")

    @property
    def preview_blur_radius(self) -> int:
        return (self.document.get("previews") or {}).get("blur_radius", 8)

    @property
    def embedding_directions(self) -> dict[str, dict]:
        """Architecture -> {vector, strength, start_percent, end_percent} (defaults filled in)."""
        table = (self.document.get("steering") or {}).get("embedding_direction") or {}
        return {arch: {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, **entry}
                for arch, entry in table.items()}

    @property
    def pnginfo(self) -> bool:
        return (self.document.get("audit") or {}).get("pnginfo", True)

    @property
    def operator_token_sha256(self) -> str | None:
        return self.document.get("operator_token_sha256")

    def summary(self) -> dict:
        """What any user may see: that a policy is active and what it enforces (no words, no token)."""
        return {
            "active": True, "name": self.name, "sha256": self.sha256,
            "input": {"detector": self.detector, "action": self.input_action, "words": len(self.unsafe_words)}
            if self.input else None,
            "output": {"scores": [s.label() for s in self.scores], "censor": self.censor_mode} if self.scores else None,
            "previews": {"mode": self.preview_mode, "when": self.preview_when},
            "steering": sorted(self.embedding_directions) or None,
        }


def _semantic_checks(document: dict, path: str) -> None:
    """What the schema cannot say: options that only make sense for one score kind."""
    allowed = {"colour": {"statistic"}, "toyworld_red": {"temperature"}, "nudenet": {"labels", "detection_threshold"},
               "clip_violence": {"clip_model", "texts"}}
    detector_input = document.get("input")
    if detector_input is not None:
        detector = detector_input.get("detector", "word_list")
        if DETECTOR_REQUIRED[detector] not in detector_input:
            raise PolicyError(path, f"input.{DETECTOR_REQUIRED[detector]}", f"required for detector {detector!r}")
        for key in detector_input:
            other = {o for d, options in DETECTOR_OPTIONS.items() if d != detector for o in options}
            if key in other:
                raise PolicyError(path, f"input.{key}", f"not an option of detector {detector!r}; its options are "
                                                        f"{sorted(DETECTOR_OPTIONS[detector])}")
    for arch, entry in ((document.get("steering") or {}).get("embedding_direction") or {}).items():
        if entry.get("start_percent", 0.0) > entry.get("end_percent", 1.0):
            raise PolicyError(path, f"steering.embedding_direction.{arch}.start_percent",
                              "must not be after end_percent")
    for i, s in enumerate((document.get("output") or {}).get("scores", [])):
        if s["kind"] == "clip_violence" and "clip_model" not in s:
            raise PolicyError(path, f"output.scores[{i}].clip_model", "required for score kind 'clip_violence'")
        for key in s:
            if key not in ("kind", "threshold") and key not in allowed[s["kind"]]:
                raise PolicyError(path, f"output.scores[{i}].{key}",
                                  f"not an option of score kind {s['kind']!r}; expected one of "
                                  f"{sorted(allowed[s['kind']])}")


def default_policy_path(user_directory: str) -> str:
    return os.path.join(user_directory, POLICY_DIR, POLICY_FILE)


def policy_path(user_directory: str, environ=os.environ) -> tuple[str, bool]:
    """(the policy file's path, whether the operator named it explicitly through the environment)."""
    named = environ.get(ENV_VAR)
    if named is not None:
        if not named.strip():
            raise PolicyError(f"${ENV_VAR}", "(path)", "is set but empty")
        return os.path.abspath(named), True
    return default_policy_path(user_directory), False


def read_policy(path: str, required: bool = False) -> Policy | None:
    """The policy at `path`, validated; None when the file does not exist and is not `required`."""
    if not required and not os.path.lexists(path):
        return None
    data = read_regular_file(path, MAX_POLICY_BYTES, lambda problem: PolicyError(path, "(file)", problem))
    document = parse_json_bytes(data, path)
    validate(document, path)
    _semantic_checks(document, path)
    audit = (document.get("audit") or {}).get("path", AUDIT_FILE)
    audit_path = audit if os.path.isabs(audit) else os.path.join(os.path.dirname(path), audit)
    return Policy(path, hashlib.sha256(data).hexdigest(), document, os.path.abspath(audit_path))


def load_policy(user_directory: str, environ=os.environ) -> Policy | None:
    path, named = policy_path(user_directory, environ)
    return read_policy(path, required=named)


# ---------------------------------------------------------------- the word-list detector

@functools.lru_cache(maxsize=4096)
def _word_pattern(word: str) -> re.Pattern:
    parts = [re.escape(p) for p in word.lower().split()]
    return re.compile(r"(?<![\w])" + r"\s+".join(parts) + r"(?![\w])", re.IGNORECASE)


def match_words(text: str, words: list[str]) -> list[str]:
    """The words (or phrases) of `words` that occur in `text` as whole words, case-insensitive, in list order."""
    return [w for w in words if w.strip() and _word_pattern(w).search(text)]


def rewrite_text(text: str, matched: list[str], safe_suffix: str) -> str:
    """`text` without the matched words or phrases (and the connectors they leave dangling), plus `safe_suffix`."""
    from .input_detector import safe_prompt

    words = [w for w in matched if len(w.split()) == 1]
    for phrase in matched:
        if len(phrase.split()) > 1:
            text = _word_pattern(phrase).sub(" ", text)
    return safe_prompt(re.sub(r"\s{2,}", " ", text).strip(), words, safe_suffix)
