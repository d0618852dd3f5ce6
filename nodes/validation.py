"""The pack's one validation layer: every input of every node is checked against the node's own V3 schema.

Design
------
* One place. ``harden(cls)`` is applied to every node class when the pack registers its nodes
  (``nodes/__init__.py: all_nodes``); a node needs no code of its own for it, and a new node or
  input is covered the moment it is declared in ``define_schema``.
* What is checked, derived from the schema of each input:
  FLOAT: a finite number (NaN and +-inf are refused: ComfyUI's ``float()`` accepts "NaN" and
  min/max comparisons are false for NaN) within the declared min/max; INT: a whole number within
  min/max; COMBO: one of the declared options (no silent fallback to a default); STRING: not
  blank unless the input may be empty (by default: when its declared default is blank; see
  ``TEXT_RULES``), at most ``max_chars`` characters (default ``MAX_TEXT_CHARS``) and ``max_lines``
  non-blank lines (``MAX_TEXT_LINES``; every line of a prompt list costs a text encoding);
  BOOLEAN: a bool. At execution also: a required input that received nothing (None), an empty
  vector set, a zero-size IMAGE / MASK / LATENT.
* When. At validation (``validate_inputs``, before any node of the prompt runs) for the values
  written in the prompt; linked inputs are not known then (ComfyUI passes None for them), so
  every check runs again on the real values just before ``execute``. A node's own
  ``validate_inputs`` still runs beside the schema checks (its message is added to theirs): at
  validation when all the inputs it declares are known, otherwise (linked inputs) before ``execute``.
* Why it replaces ComfyUI's range checks instead of adding to them: ComfyUI skips its min/max
  (and, for V3 nodes in 0.3.75, its combo) checks for every input a ``validate_inputs`` declares,
  and for all inputs when it takes ``**kwargs``. The layer's ``validate_inputs`` takes
  ``**kwargs`` so that it sees every input, and enforces every declared bound itself; this works
  the same on ComfyUI 0.3.75 and on later versions, which call ``validate_inputs`` the same way.
* Errors: at validation a message string (ComfyUI's documented contract: the prompt is refused
  with "Custom validation failed for node"); at execution ``InputValidationError``. Both name the
  node as the user sees it (its display name), the input, what was expected and what came; long
  values are abbreviated (a 1 MB prompt is never echoed back). Any other error a node raises while
  it runs gets the same prefix (its type is kept), so every message says which node it came from.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from comfy_api.v0_0_2 import io

from ..steering import comfy_compat
from ..steering.prompt_format import WIDGET_TYPES

MAX_TEXT_CHARS = 16384
"""Default cap on the characters of any text input."""
MAX_TEXT_LINES = 256
"""Default cap on the non-blank lines of any text input (one text encoding per prompt/concept line)."""



class InputValidationError(ValueError):
    """An input value that the node's schema does not allow (raised just before execute)."""


@dataclass(frozen=True)
class TextRule:
    may_be_empty: bool | None = None     # None: blank is allowed exactly when the declared default is blank
    max_chars: int = MAX_TEXT_CHARS
    max_lines: int = MAX_TEXT_LINES


def _detector_prompt_chars() -> int:
    from ..steering.input_detector import MAX_PROMPT_CHARS

    return MAX_PROMPT_CHARS


TEXT_RULES: dict[tuple[str, str], TextRule] = {
    # The prompt detector's bounded cost starts with a bounded prompt (steering/input_detector.py).
    ("RSDualLatentInputDetector", "text"): TextRule(max_chars=_detector_prompt_chars()),
    ("RSDualLatentInputDetector", "safe_suffix"): TextRule(may_be_empty=True),   # empty = no suffix
    ("RSCLIPScore", "prompt"): TextRule(may_be_empty=False),                     # scored against it
}
"""Exceptions to the default text rule, keyed by (node_id, input)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    io_type: str
    optional: bool
    default: Any = None
    min: Any = None
    max: Any = None
    options: tuple | None = None
    multiselect: bool = False
    text: TextRule | None = None

    @property
    def widget(self) -> bool:
        return self.io_type in WIDGET_TYPES


def _resolve_text_rule(node_id: str, fields: dict) -> TextRule:
    rule = TEXT_RULES.get((node_id, fields["id"]), TextRule())
    if rule.may_be_empty is None:
        default = fields["default"]
        rule = TextRule(not (isinstance(default, str) and default.strip()), rule.max_chars, rule.max_lines)
    return rule


def node_schema(cls) -> io.Schema:
    """The node's schema, freshly defined (file lists of combos are current)."""
    return cls.define_schema()


def node_label(schema: io.Schema) -> str:
    """The node as the user sees it on the canvas and in the node search: its display name."""
    return schema.display_name or schema.node_id


def name_the_node(error: BaseException, label: str) -> None:
    """Prefix `error`'s message with the node's label (in place, keeping its type), unless it has one."""
    if len(error.args) == 1 and isinstance(error.args[0], str) and not error.args[0].startswith(f"{label}: "):
        error.args = (f"{label}: {error.args[0]}",)


def input_specs(schema: io.Schema) -> list[InputSpec]:
    specs = []
    for inp in schema.inputs:
        fields = comfy_compat.schema_input_fields(inp)
        specs.append(InputSpec(
            name=fields["id"], io_type=fields["io_type"], optional=fields["optional"], default=fields["default"],
            min=fields["min"], max=fields["max"], options=fields["options"], multiselect=fields["multiselect"],
            text=_resolve_text_rule(schema.node_id, fields) if fields["io_type"] == "STRING" else None))
    return specs


def describe(value: Any, limit: int = 60) -> str:
    """A short description of a received value (never the whole of a long text)."""
    if isinstance(value, str):
        if len(value) > limit:
            return f"a text of {len(value)} characters ({value[:limit // 2]!r}...)"
        return repr(value)
    text = repr(value)
    return text if len(text) <= limit else f"{type(value).__name__} {text[:limit]}..."


def _bounds(spec: InputSpec) -> str:
    if spec.min is not None and spec.max is not None:
        return f" in [{spec.min}, {spec.max}]"
    if spec.min is not None:
        return f" >= {spec.min}"
    if spec.max is not None:
        return f" <= {spec.max}"
    return ""


def _number(value: Any, integral: bool) -> float | int | None:
    """The value as a number (strings parsed as ComfyUI does), or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value) if not integral else (int(value) if value.strip().lstrip("+-").isdigit()
                                                        else float(value))
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        return value
    try:  # numpy / torch scalars
        import numbers

        if isinstance(value, numbers.Real):
            return float(value)
    except Exception:
        pass
    return None


def check_widget(spec: InputSpec, value: Any) -> str | None:
    """What is wrong with a widget value (expected ...; got ...), or None when it is fine."""
    kind = spec.io_type
    if kind in ("FLOAT", "INT"):
        integral = kind == "INT"
        what = "a whole number" if integral else "a finite number"
        number = _number(value, integral)
        if number is None or (isinstance(number, float) and not math.isfinite(number)):
            return f"expects {what}{_bounds(spec)}; got {describe(value)}"
        if integral and isinstance(number, float) and not number.is_integer():
            return f"expects {what}{_bounds(spec)}; got {describe(value)}"
        if (spec.min is not None and number < spec.min) or (spec.max is not None and number > spec.max):
            return f"expects {what}{_bounds(spec)}; got {describe(value)}"
        return None
    if kind == "BOOLEAN":
        ok = isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
        return None if ok else f"expects true or false; got {describe(value)}"
    if kind == "COMBO":
        options = list(spec.options or ())
        values = value if spec.multiselect and isinstance(value, list) else [value]
        bad = [v for v in values if not _in_options(v, options)]
        if not bad:
            return None
        if not options:
            problem = f"expects one of its list, but the list is empty (nothing installed); got {describe(bad[0])}"
        else:
            shown = options if len(options) <= 20 else options[:20] + [f"... ({len(options)} options)"]
            problem = f"expects one of {shown}; got {describe(bad[0])}"
        hint = _missing_file_hint(spec.name, bad[0])
        return f"{problem} ({hint})" if hint else problem
    if kind == "STRING":
        if not isinstance(value, str):
            return f"expects a text; got {describe(value)}"
        rule = spec.text or TextRule()
        if len(value) > rule.max_chars:
            return f"expects a text of at most {rule.max_chars} characters; got {describe(value)}"
        lines = sum(1 for line in value.splitlines() if line.strip())
        if lines > rule.max_lines:
            return f"expects at most {rule.max_lines} non-blank lines; got {lines} lines"
        if not value.strip() and not rule.may_be_empty:
            return f"expects a non-empty text; got {describe(value)}"
        return None
    return None


def _clip_model_hint(value: Any) -> str | None:
    from . import paths

    try:
        paths.clip_model_path(str(value))
    except FileNotFoundError as e:
        return str(e)
    return None


def _vector_file_hint(value: Any) -> str | None:
    from . import paths

    return f"not found; looked in {paths.vector_folders()}"


def _nudenet_model_hint(value: Any) -> str | None:
    from . import paths

    return f"not installed. {paths.nudenet_download_hint(str(value))}"


MISSING_FILE_HINTS: dict[str, Callable[[Any], str | None]] = {
    "clip_model": _clip_model_hint, "model_name": _nudenet_model_hint, "vector_name": _vector_file_hint,
    "reference_file": _vector_file_hint}
"""Combo inputs that list files: where the file was looked for, when the value is not among them."""


def _missing_file_hint(name: str, value: Any) -> str | None:
    hint = MISSING_FILE_HINTS.get(name)
    if hint is None or not isinstance(value, str):
        return None
    try:
        return hint(value)
    except Exception:  # noqa: BLE001  a hint never hides the error itself
        return None


def _in_options(value: Any, options: list) -> bool:
    try:
        return value in options
    except Exception:
        return False


def _tensor_shape(value: Any) -> tuple | None:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else None


def check_connected(spec: InputSpec, value: Any) -> str | None:
    """Degenerate values of connected (non-widget) inputs, checked at execution."""
    if value is None:
        return None if spec.optional else "received nothing (None); connect an output that produces a value"
    kind = spec.io_type
    if kind in ("IMAGE", "MASK"):
        shape = _tensor_shape(value)
        if shape is None:
            return f"expects an {kind.lower()} tensor; got {describe(value)}"
        if len(shape) == 0 or 0 in shape:
            return f"expects a non-empty {kind.lower()} batch; got one of size {list(shape)}"
    elif kind == "LATENT":
        shape = _tensor_shape(value.get("samples")) if isinstance(value, dict) else None
        if shape is None:
            return f"expects a latent (a dict with 'samples'); got {describe(value)}"
        if 0 in shape:
            return f"expects a non-empty latent batch; got samples of size {list(shape)}"
    elif kind == "STEERING_VECTOR_SET":
        try:
            size = len(value)
        except TypeError:
            return f"expects a vector set; got {describe(value)}"
        if size == 0:
            return "expects a vector set with at least one vector; got an empty set"
    return None


def schema_problems(specs: Iterable[InputSpec], values: dict, at_execute: bool) -> list[str]:
    problems = []
    for spec in specs:
        if spec.name not in values:
            continue
        value = values[spec.name]
        if spec.widget:
            if value is None:
                if not at_execute:
                    continue  # a linked input: checked before execute
                problem = None if spec.optional else "received nothing (None)"
            else:
                problem = check_widget(spec, value)
        elif at_execute:
            problem = check_connected(spec, value)
        else:
            problem = None
        if problem:
            problems.append(f"input '{spec.name}' {problem}")
    return problems


def _own_check(own: Callable | None, cls, values: dict, tolerate_errors: bool) -> str | None:
    """Run the node's own validate_inputs when the inputs it declares are known (its message is added to the
    schema's; when the schema already refused a value, an exception of the node's check on it is ignored)."""
    if own is None:
        return None
    params = list(inspect.signature(own).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        args = dict(values)
    else:
        names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        args = {n: values[n] for n in names if n in values}
        required = [p.name for p in params if p.default is p.empty and p.kind is not p.VAR_POSITIONAL]
        if any(args.get(n) is None for n in required):
            return None  # not all known yet (linked): runs again before execute
    try:
        result = own(cls, **args)
    except Exception:  # noqa: BLE001
        if tolerate_errors:
            return None
        raise
    if result is True or result is None:
        return None
    return str(result) if result is not False else "the node's own input check failed"


def _message(schema: io.Schema, problems: list[str]) -> str:
    return f"{node_label(schema)}: " + "; ".join(problems)


def harden(cls):
    """Install the schema checks on a node class (idempotent); returns the class."""
    if cls.__dict__.get("_rs_hardened"):
        return cls
    own_validate = comfy_compat.own_method(cls, "validate_inputs")
    execute = comfy_compat.own_method(cls, "execute")
    signature = inspect.signature(execute)
    params = list(signature.parameters.values())[1:]
    execute_signature = signature.replace(parameters=params)

    def validate_inputs(cls, **kwargs):
        schema = node_schema(cls)
        problems = schema_problems(input_specs(schema), kwargs, at_execute=False)
        own = _own_check(own_validate, cls, kwargs, tolerate_errors=bool(problems))
        if own and not any(own in problem for problem in problems):  # e.g. a missing file's hint says it already
            problems.append(own)
        return True if not problems else _message(schema, problems)

    def checked_values(args, kwargs) -> dict:
        bound = execute_signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = {}
        for p in params:
            if p.name not in bound.arguments:
                continue
            if p.kind is p.VAR_KEYWORD:
                values.update(bound.arguments[p.name])
            elif p.kind is not p.VAR_POSITIONAL:
                values[p.name] = bound.arguments[p.name]
        return values

    def check_before_execute(cls, args, kwargs):
        schema = node_schema(cls)
        values = checked_values(args, kwargs)
        problems = schema_problems(input_specs(schema), values, at_execute=True)
        own = _own_check(own_validate, cls, values, tolerate_errors=bool(problems))
        if own and not any(own in problem for problem in problems):
            problems.append(own)
        if problems:
            raise InputValidationError(_message(schema, problems))

    if inspect.iscoroutinefunction(execute):
        async def checked_execute(cls, *args, **kwargs):
            check_before_execute(cls, args, kwargs)
            try:
                return await execute(cls, *args, **kwargs)
            except Exception as e:
                name_the_node(e, node_label(node_schema(cls)))
                raise
    else:
        def checked_execute(cls, *args, **kwargs):
            check_before_execute(cls, args, kwargs)
            try:
                return execute(cls, *args, **kwargs)
            except Exception as e:
                name_the_node(e, node_label(node_schema(cls)))
                raise

    checked_execute.__doc__ = execute.__doc__
    checked_execute.__signature__ = signature
    cls.validate_inputs = classmethod(validate_inputs)
    cls.execute = classmethod(checked_execute)
    cls._rs_hardened = True
    return cls
