"""The operator's policy file: its models (pydantic), strict reading, and the published JSON Schema.

An operator who runs ComfyUI for other people writes a JSON file (``policy.json`` in
``<user directory>/responsible-steering/``, or the path in ``RESPONSIBLE_STEERING_POLICY``).

* The document is described once, by the pydantic models below (strict: no coercion, unknown keys refused,
  finite numbers only); ``policy.schema.json`` at the repository root is generated from them
  (``python -m devtools.policy_schema``, a test fails when it is stale), so the published schema and the
  reader cannot drift apart.
* :func:`read_policy` fails closed: a file that is not a regular file (a directory, a device, a FIFO), too
  large, not UTF-8, not JSON, nested too deeply, with duplicate keys, NaN/Infinity, unknown keys or wrong
  types raises :class:`PolicyError` naming the file, the field and the problem. A missing file at the
  default place means "no policy"; a missing file named by the environment variable is an error.
* Version 1 files are still read: their ``previews`` section (``mode`` allow / suppress / blur, ``when``
  flagged / always) is mapped to version 2's, where no preview frame leaves the server unscored.

No ComfyUI or torch import.
"""
from __future__ import annotations

import hashlib
import os
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..steering.files import parse_strict_json, read_regular_file

ENV_VAR = "RESPONSIBLE_STEERING_POLICY"
POLICY_DIR = "responsible-steering"
POLICY_FILE = "policy.json"
AUDIT_FILE = "audit.jsonl"
KEY_FILE = "provenance.key"

MAX_POLICY_BYTES = 256 * 1024
MAX_CHECKED_TEXT = 20000
"""Longest text the prompt detector is run on; a longer text that reaches a text encoder is refused (the check
runs in the server's request handler, so its cost is bounded)."""
MAX_DEPTH = 8
"""Deepest nesting of arrays/objects a policy may have (the schema needs 5)."""

SCORE_KINDS = ("colour", "toyworld_red", "nudenet", "clip_violence")
CENSOR_MODES = ("blur", "pixelate", "black", "replace")
COLOUR_STATISTIC_NAMES = ("brightness", "red", "green", "blue", "redness")   # steering/safety/colour.py
NUDENET_PRESETS = ("stg_nudity", "all_exposed", "all")
DEFAULT_THRESHOLDS = {"colour": 0.0, "toyworld_red": 0.03, "nudenet": 0.0, "clip_violence": 0.2}
DEFAULT_WINDOWS = {"colour": 64, "toyworld_red": 32, "nudenet": 512, "clip_violence": 448}
"""Side (px) of the square local windows each score kind is also run on (see operator_policy.scoring)."""

STRICT = ConfigDict(extra="forbid", strict=True)

Name = Annotated[str, Field(min_length=1, max_length=200)]
FileName = Annotated[str, Field(min_length=1, max_length=255)]
NodeType = Annotated[str, Field(min_length=1, max_length=200)]
Percent = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Threshold = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False,
                                   description="An image is unsafe when this score is strictly above it.")]
Window = Annotated[int, Field(ge=8, le=4096, description="Side in pixels of the square local windows the score "
                                                         "is also run on (half-overlapping), besides the whole "
                                                         "image: a small unsafe region on a large canvas is not "
                                                         "diluted away.")]


class PolicyError(ValueError):
    """The policy file cannot be enforced as written: names the file, the field and the problem."""

    def __init__(self, path: str, field_name: str, problem: str):
        self.path, self.field, self.problem = path, field_name, problem
        super().__init__(f"responsible-steering policy {path}: {field_name}: {problem}")


# ---------------------------------------------------------------- the document

class WordListInput(BaseModel):
    """The prompt detector as a word list: whole words or phrases, any case."""
    model_config = STRICT
    detector: Literal["word_list"] = "word_list"
    unsafe_words: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]],
                            Field(min_length=1, max_length=1000)]
    action: Literal["reject", "rewrite", "log"]
    safe_suffix: Annotated[str, Field(max_length=200, description="Appended to a rewritten text.")] = ""


class NearestNeighbourInput(BaseModel):
    """The prompt detector as the Dual-Latent Input Detector's nearest-neighbour vote on a local CLIP."""
    model_config = STRICT
    detector: Literal["nearest_neighbour"]
    clip_model: Annotated[FileName, Field(description="A CLIP folder in models/safety_clip.")]
    unsafe_concepts: Annotated[list[Name], Field(min_length=1, max_length=256)] | None = None
    safe_concepts: Annotated[list[Name], Field(min_length=1, max_length=256)] | None = None
    k: Annotated[int, Field(ge=1, le=100)] = 3
    threshold: Annotated[float, Field(ge=0, le=0.99, allow_inf_nan=False,
                                      description="Unsafe when the unsafe share of the vote exceeds it.")] = 0.5
    action: Literal["reject", "rewrite", "log"]
    safe_suffix: Annotated[str, Field(max_length=200, description="Appended to a rewritten text.")] = ""


class ColourScore(BaseModel):
    model_config = STRICT
    kind: Literal["colour"]
    threshold: Threshold = DEFAULT_THRESHOLDS["colour"]
    statistic: Literal[COLOUR_STATISTIC_NAMES] = "redness"
    window: Window = DEFAULT_WINDOWS["colour"]


class ToyWorldRedScore(BaseModel):
    model_config = STRICT
    kind: Literal["toyworld_red"]
    threshold: Threshold = DEFAULT_THRESHOLDS["toyworld_red"]
    temperature: Annotated[float, Field(ge=0.0001, le=10, allow_inf_nan=False)] = 0.02
    window: Window = DEFAULT_WINDOWS["toyworld_red"]


class NudeNetScore(BaseModel):
    model_config = STRICT
    kind: Literal["nudenet"]
    threshold: Threshold = DEFAULT_THRESHOLDS["nudenet"]
    labels: Literal[NUDENET_PRESETS] = "stg_nudity"
    detection_threshold: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.25
    window: Window = DEFAULT_WINDOWS["nudenet"]


class CLIPViolenceScore(BaseModel):
    model_config = STRICT
    kind: Literal["clip_violence"]
    threshold: Threshold = DEFAULT_THRESHOLDS["clip_violence"]
    clip_model: Annotated[FileName, Field(description="A CLIP folder in models/safety_clip.")]
    texts: Annotated[list[Name], Field(min_length=1, max_length=64,
                                       description="The unsafe texts (default: the pack's).")] | None = None
    window: Window = DEFAULT_WINDOWS["clip_violence"]


Score = Annotated[Union[ColourScore, ToyWorldRedScore, NudeNetScore, CLIPViolenceScore], Field(discriminator="kind")]


class Censor(BaseModel):
    model_config = STRICT
    mode: Literal[CENSOR_MODES] = "blur"
    strength: Annotated[int, Field(ge=1, le=256)] = 16


class Output(BaseModel):
    """Every image is scored where it is made and again where it leaves; flagged images are censored."""
    model_config = STRICT
    scores: Annotated[list[Score], Field(min_length=1, max_length=8)]
    censor: Censor = Censor()
    allow_uninspected: Annotated[list[NodeType], Field(
        max_length=256, description="Output node types (class_type) that may receive data the policy cannot "
                                    "inspect (latents, masks, tensors as text, datasets, ...). Refused by "
                                    "default.")] = []
    trusted_transforms: Annotated[list[NodeType], Field(
        max_length=256, description="Node types (class_type) whose IMAGE outputs are computed only from their "
                                    "IMAGE inputs and settings (no model, no file): their outputs are not "
                                    "scored again where they are made.")] = []


class Previews(BaseModel):
    """Live latent previews sent to the browser while sampling."""
    model_config = STRICT
    mode: Literal["score", "suppress"] = "score"
    flagged: Literal["drop", "blur"] = "drop"
    blur_radius: Annotated[int, Field(ge=1, le=64)] = 8


class EmbeddingDirection(BaseModel):
    model_config = STRICT
    vector: Annotated[FileName, Field(description="A file in models/steering_vectors.")]
    strength: Annotated[float, Field(ge=-20, le=20, allow_inf_nan=False)] = 1.0
    start_percent: Percent = 0.0
    end_percent: Percent = 1.0

    @model_validator(mode="after")
    def _window(self):
        if self.start_percent > self.end_percent:
            raise ValueError("start_percent must not be after end_percent")
        return self


class STGSteering(BaseModel):
    """STG on every KSampler of every prompt, with one of the policy's output scores: flagged content is steered
    away while it is generated, so the censor is the last resort."""
    model_config = STRICT
    score: Annotated[int, Field(ge=0, le=7, description="Which of output.scores guides (its index).")] = 0
    rho: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.5
    start_percent: Percent = 0.1
    end_percent: Percent = 0.9
    update_ratio: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 1.0
    decoder: Literal["vae", "taesd"] = "vae"
    autocast: Literal["none", "fp16", "bf16"] = "none"

    @model_validator(mode="after")
    def _window(self):
        if self.start_percent > self.end_percent:
            raise ValueError("start_percent must not be after end_percent")
        return self


class Steering(BaseModel):
    """Steering applied to every sampler of every prompt."""
    model_config = STRICT
    embedding_direction: Annotated[dict[str, EmbeddingDirection], Field(
        max_length=32, description="Architecture name (sd1, sdxl, toyworld, ...) -> an embedding direction added "
                                   "to every sampler's positive conditioning.")] = {}
    stg: STGSteering | None = None


class Audit(BaseModel):
    model_config = STRICT
    path: Annotated[str, Field(min_length=1, max_length=4096,
                               description="JSON Lines log; relative paths are relative to the policy file.")] \
        = AUDIT_FILE
    pnginfo: Annotated[bool, Field(description="Embed the per-image records in saved PNGs.")] = True


class Provenance(BaseModel):
    model_config = STRICT
    key_path: Annotated[str, Field(min_length=1, max_length=4096, description=(
        "The server's secret for signing image records (32 random bytes, made at first start); relative paths "
        "are relative to the policy file."))] = KEY_FILE


class PolicyDocument(BaseModel):
    """What the Responsible Steering pack enforces in the ComfyUI server for every prompt."""
    model_config = ConfigDict(extra="forbid", strict=True, title="Responsible Steering server policy")
    version: Literal[1, 2] = Field(description="Format version of this file (1 is still read).")
    name: Annotated[str, Field(max_length=200, description="Shown to users: which policy is active.")] | None = None
    operator_token_sha256: Annotated[str, Field(
        pattern="^[0-9a-f]{64}$", description="sha256 (hex) of the token that grants the operator view of the "
                                              "policy panel (header X-RS-Operator-Token).")] | None = None
    input: Annotated[Union[WordListInput, NearestNeighbourInput], Field(discriminator="detector")] | None = None
    output: Output | None = None
    previews: Previews = Previews()
    steering: Steering = Steering()
    audit: Audit = Audit()
    provenance: Provenance = Provenance()

    @model_validator(mode="before")
    @classmethod
    def _defaults_and_version_1(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("input"), dict) and "detector" not in data["input"]:
            data["input"] = {**data["input"], "detector": "word_list"}
        return data


def previews_of_version_1(section: dict) -> dict:
    """A version-1 ``previews`` section in version 2's terms. Version 1 could send frames unscored; version 2
    scores every frame (or suppresses all), so "allow" and "suppress when flagged" become "score, drop the
    flagged", "blur" becomes "score, blur the flagged", "suppress always" stays "suppress"."""
    section = dict(section)
    mode, when = section.pop("mode", "suppress"), section.pop("when", "flagged")
    if mode not in ("allow", "suppress", "blur") or when not in ("flagged", "always"):
        raise ValueError(f"version 1 previews: mode must be allow / suppress / blur and when flagged / always; "
                         f"got mode {mode!r}, when {when!r}")
    if mode == "suppress" and when == "always":
        return {**section, "mode": "suppress"}
    return {**section, "mode": "score", "flagged": "blur" if mode == "blur" else "drop"}


# ---------------------------------------------------------------- errors in the operator's terms

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    import json

    text = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else _json_type(value)
    return text if len(text) <= 60 else text[:57] + "..."


TAGS = {"word_list", "nearest_neighbour", *SCORE_KINDS}
TYPE_NAMES = {"int_type": "integer", "float_type": "number", "string_type": "string", "bool_type": "boolean",
              "list_type": "array", "dict_type": "object", "model_type": "object", "model_attributes_type": "object",
              "int_parsing": "integer", "float_parsing": "number"}


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union, Annotated, list and dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _has_origin(annotation, origin) -> bool:
    return typing.get_origin(annotation) is origin or any(_has_origin(a, origin) for a in typing.get_args(annotation))


def _tag_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind") or model.model_fields.get("detector")
    return typing.get_args(field.annotation)[0] if field is not None else None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model whose keys are checked at `loc` (a pydantic error location: list indices, dict keys and
    union tags included), or None."""
    model, parts = PolicyDocument, list(loc)
    while parts:
        name = parts.pop(0)
        field = model.model_fields.get(name) if model is not None and isinstance(name, str) else None
        if field is None:
            return None
        candidates = _models_in(field.annotation)
        if parts and (isinstance(parts[0], int) or _has_origin(field.annotation, dict)):
            parts.pop(0)                                          # a list index or a dict key
        if parts and parts[0] in TAGS:
            tag = parts.pop(0)
            candidates = [m for m in candidates if _tag_of(m) == tag]
        model = candidates[0] if len(candidates) == 1 else None
    return model


def field_name(loc: tuple) -> str:
    text = ""
    for part in loc:
        if part in TAGS:
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def problem_of(error: dict) -> str:
    """One pydantic error in the words the operator reads."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        model = _model_at(tuple(error["loc"][:-1]))
        return "unknown key" + (f"; expected one of {sorted(model.model_fields)}" if model else "")
    if kind == "missing":
        return "required but missing"
    if kind in ("literal_error", "union_tag_invalid", "enum"):
        expected = ctx.get("expected") or ctx.get("expected_tags")
        return f"expected one of {expected}; got {_short(value if kind != 'union_tag_invalid' else ctx.get('tag'))}"
    if kind in TYPE_NAMES:
        return f"expected {TYPE_NAMES[kind]}; got {_json_type(value)} {_short(value)}"
    if kind == "finite_number":
        return f"expected a finite number; got {_short(value)}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}[kind]
        return f"expected a value {bound} {next(iter(ctx.values()))}; got {_short(value)}"
    if kind in ("string_too_short", "string_too_long"):
        return f"expected a text of {'at least' if kind.endswith('short') else 'at most'} " \
               f"{next(iter(ctx.values()))} characters; got {len(value)}"
    if kind in ("too_short", "too_long"):
        limit = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        actual = ctx.get("actual_length")
        actual = len(value) if actual is None and hasattr(value, "__len__") else actual
        return f"expected {'at least' if kind == 'too_short' else 'at most'} {limit} items; got {actual}"
    if kind == "string_pattern_mismatch":
        return f"expected a text matching {ctx.get('pattern')}; got {_short(value)}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def validate_document(document: Any, path: str) -> PolicyDocument:
    """The validated document, or :class:`PolicyError` for its first problem."""
    if not isinstance(document, dict):
        raise PolicyError(path, "(top level)", f"expected object; got {_json_type(document)} {_short(document)}")
    if document.get("version") == 1 and isinstance(document.get("previews"), dict):
        try:
            document = {**document, "previews": previews_of_version_1(document["previews"])}
        except ValueError as e:
            raise PolicyError(path, "previews", str(e)) from None
    try:
        model = PolicyDocument.model_validate(document)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        raise PolicyError(path, field_name(tuple(error["loc"])), problem_of(error)) from None
    scores = len(model.output.scores) if model.output else 0
    if model.steering.stg is not None and model.steering.stg.score >= scores:
        raise PolicyError(path, "steering.stg.score", f"is {model.steering.stg.score}, but output.scores has {scores} "
                                                      f"score{'s' * (scores != 1)}: STG guides with one of them")
    return model


def json_schema() -> dict:
    """The published JSON Schema (policy.schema.json), generated from the models."""
    schema = PolicyDocument.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "What the Responsible Steering pack enforces in the ComfyUI server for every prompt. "
                           "Generated from operator_policy/document.py.", **schema}


# ---------------------------------------------------------------- the policy as the server uses it

@dataclass(frozen=True)
class ScoreSpec:
    """One output score: its kind, threshold, local window and the kind's own options."""
    kind: str
    threshold: float
    window: int
    options: dict

    def label(self) -> str:
        extra = self.options.get("statistic") or self.options.get("labels")
        return f"{self.kind}:{extra}" if extra else self.kind


@dataclass(frozen=True)
class Policy:
    path: str
    sha256: str
    document: dict            # the file's JSON, as written
    model: PolicyDocument
    audit_path: str
    key_path: str

    @property
    def name(self) -> str:
        return self.model.name or os.path.basename(self.path)

    @property
    def input(self) -> WordListInput | NearestNeighbourInput | None:
        return self.model.input

    @property
    def detector(self) -> str | None:
        return self.input.detector if self.input else None

    @property
    def unsafe_words(self) -> list[str]:
        return list(getattr(self.input, "unsafe_words", []) or [])

    @property
    def input_action(self) -> str | None:
        return self.input.action if self.input else None

    @property
    def safe_suffix(self) -> str:
        return self.input.safe_suffix if self.input else ""

    @property
    def scores(self) -> list[ScoreSpec]:
        specs = []
        for s in (self.model.output.scores if self.model.output else []):
            options = s.model_dump(exclude={"kind", "threshold", "window"}, exclude_none=True)
            specs.append(ScoreSpec(s.kind, float(s.threshold), s.window, options))
        return specs

    @property
    def censor_mode(self) -> str:
        return self.model.output.censor.mode if self.model.output else "blur"

    @property
    def censor_strength(self) -> int:
        return self.model.output.censor.strength if self.model.output else 16

    @property
    def allow_uninspected(self) -> frozenset[str]:
        return frozenset(self.model.output.allow_uninspected if self.model.output else ())

    @property
    def trusted_transforms(self) -> frozenset[str]:
        return frozenset(self.model.output.trusted_transforms if self.model.output else ())

    @property
    def previews(self) -> Previews:
        return self.model.previews

    @property
    def embedding_directions(self) -> dict[str, dict]:
        """Architecture -> {vector, strength, start_percent, end_percent} (defaults filled in)."""
        return {arch: entry.model_dump() for arch, entry in self.model.steering.embedding_direction.items()}

    @property
    def stg(self) -> STGSteering | None:
        return self.model.steering.stg

    @property
    def pnginfo(self) -> bool:
        return self.model.audit.pnginfo

    @property
    def operator_token_sha256(self) -> str | None:
        return self.model.operator_token_sha256

    def summary(self) -> dict:
        """What any user may see: that a policy is active and what it enforces (no words, no token)."""
        return {
            "active": True, "name": self.name, "sha256": self.sha256,
            "input": {"detector": self.detector, "action": self.input_action, "words": len(self.unsafe_words)}
            if self.input else None,
            "output": {"scores": [s.label() for s in self.scores], "censor": self.censor_mode,
                       "allow_uninspected": sorted(self.allow_uninspected)} if self.scores else None,
            "previews": {"mode": self.previews.mode, "flagged": self.previews.flagged},
            "steering": sorted(self.embedding_directions) or None,
            "stg": {"score": self.scores[self.stg.score].label(), "rho": self.stg.rho} if self.stg else None,
        }


def beside(policy_path: str, path: str) -> str:
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(os.path.dirname(policy_path), path))


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
    document = parse_strict_json(data, MAX_DEPTH, lambda problem: PolicyError(path, "(file)", problem))
    model = validate_document(document, path)
    return Policy(path, hashlib.sha256(data).hexdigest(), document, model, beside(path, model.audit.path),
                  beside(path, model.provenance.key_path))


def load_policy(user_directory: str, environ=os.environ) -> Policy | None:
    path, named = policy_path(user_directory, environ)
    return read_policy(path, required=named)


