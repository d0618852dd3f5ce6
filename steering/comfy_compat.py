"""Every ComfyUI call whose form depends on the ComfyUI version, in one place.

The pack runs on the ComfyUI users have: the tests pin 0.3.75 (the newest installable
offline), users run upstream 0.38.x. Each function below feature-detects (``hasattr`` /
signature) instead of comparing version strings, and its comment names the upstream file
it was read from. No other module of the pack may branch on the ComfyUI version.

Gradient passes (STG's embedding gradient, the training loop, the differentiable VAE
decode) run inside :func:`gradient_pass`:

* upstream sets ``comfy.model_management.in_training`` around its own trainer
  (comfy_extras/nodes_train.py); model code and ``comfy/ops.py`` then take out-of-place
  paths instead of in-place kernels and reused cast buffers, which autograd cannot save.
  We set it for the block and put the previous value back after it, also on errors and
  on interrupts (``InterruptProcessingException`` is a ``BaseException`` upstream);
* ComfyUI's FLUX blocks (comfy/ldm/flux/layers.py, 0.3.75 and upstream 0.38) add residuals in place
  (``img += ...``, ``x += ...``) to tensors a norm layer saved for backward, so autograd refuses
  the backward pass. Within the block, ``+=`` on a tensor autograd tracks is computed out of place
  (:func:`tracked_adds_out_of_place`): the same sum, a new tensor; untracked tensors (every
  no-grad forward) keep the in-place kernel;
* with dynamic VRAM (upstream's default on CUDA: weights are cast per layer into reused
  buffers, ``ModelPatcherDynamic``) the gradient still flows through the activations --
  the pack never needs weight gradients -- so nothing else changes; if autograd still
  meets an inference tensor it cannot save, the error names the flags that turn dynamic
  VRAM off (:class:`CompatError`).

The UNet bottleneck hook (h-space vectors, applied and trained) is :func:`bottleneck_patch`:
upstream's middle-block-after patch where it exists, else the first output block's patch
on ``h`` (ComfyUI 0.3.75 has no middle hook); both see the same ``h``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Protocol

import torch

# ModelPatcher.set_model_output_block_patch hands patches this block index
# (comfy/ldm/modules/diffusionmodules/openaimodel.py, 0.3.75 and 0.38).
FIRST_OUTPUT_BLOCK = ("output", 0)
DYNAMIC_VRAM_FLAGS = "--disable-dynamic-vram (or --highvram)"


class CompatError(RuntimeError):
    """This ComfyUI configuration cannot run the requested gradient pass."""


def _model_management():
    import comfy.model_management

    return comfy.model_management


# ---------------------------------------------------------------- dynamic VRAM

def is_dynamic(patcher) -> bool:
    """Whether ComfyUI casts this model's weights per layer on demand (dynamic VRAM).
    Upstream comfy/model_patcher.py: ``ModelPatcher.is_dynamic()``; absent in 0.3.75."""
    probe = getattr(patcher, "is_dynamic", None)
    return bool(probe()) if callable(probe) else False


def in_training_supported() -> bool:
    """Upstream comfy/model_management.py has ``in_training`` (training state); 0.3.75 has not."""
    return hasattr(_model_management(), "in_training")


_tensor_iadd = torch.Tensor.__iadd__


def _iadd_keeping_autograd(self: torch.Tensor, other):
    if torch.is_grad_enabled() and (self.requires_grad or (isinstance(other, torch.Tensor) and other.requires_grad)):
        return self + other
    return _tensor_iadd(self, other)


@contextlib.contextmanager
def tracked_adds_out_of_place() -> Iterator[None]:
    """Within the block, ``a += b`` rebinds ``a`` to ``a + b`` when autograd tracks either tensor (the
    in-place add would overwrite a tensor saved for backward); otherwise it stays in place. Nested
    blocks are fine; the original operator is back after the outermost one."""
    previous = torch.Tensor.__iadd__
    torch.Tensor.__iadd__ = _iadd_keeping_autograd
    try:
        yield
    finally:
        torch.Tensor.__iadd__ = previous


@contextlib.contextmanager
def gradient_pass(*patchers) -> Iterator[None]:
    """The block runs a forward/backward pass through the models of `patchers` (see the module
    docstring); ``in_training`` is set where this ComfyUI has it."""
    mm = _model_management()
    use = in_training_supported()
    missing = object()
    previous = getattr(mm, "in_training", missing)
    if use:
        mm.in_training = True
    try:
        with tracked_adds_out_of_place():
            yield
    except RuntimeError as e:
        if "Inference tensors cannot be saved for backward" in str(e) and any(is_dynamic(p) for p in patchers):
            raise CompatError(
                "this ComfyUI casts model weights on demand (dynamic VRAM) in a way the gradient pass cannot follow; "
                f"start ComfyUI with {DYNAMIC_VRAM_FLAGS} to use this node") from e
        raise
    finally:
        if use:
            if previous is missing:
                delattr(mm, "in_training")
            else:
                mm.in_training = previous


# ---------------------------------------------------------------- UNet bottleneck hook

def has_middle_block_hook(patcher) -> bool:
    """Upstream comfy/model_patcher.py ``set_model_middle_block_after_patch`` (0.38); absent in 0.3.75."""
    return callable(getattr(patcher, "set_model_middle_block_after_patch", None))


class Bottleneck(Protocol):
    """What acts on the UNet bottleneck: ``shift(h, transformer_options) -> h`` (and optionally
    ``to(device)``, which ComfyUI calls on model patches when it moves the model)."""

    def shift(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor: ...


class MiddleBlockPatch:
    """A Bottleneck as upstream's middle-block-after patch: called with one dict (h, x, emb, context,
    y, timesteps, transformer_options) after the middle block; returns it with the new "h"."""

    def __init__(self, bottleneck: Bottleneck):
        self.bottleneck = bottleneck

    def to(self, device):
        move = getattr(self.bottleneck, "to", None)
        if callable(move):
            move(device)
        return self

    def __call__(self, args: dict) -> dict:
        return {**args, "h": self.bottleneck.shift(args["h"], args["transformer_options"])}


class FirstOutputBlockPatch(MiddleBlockPatch):
    """A Bottleneck as an output-block patch acting once, before output block 0, on `h`: the middle
    block's output before the skip connection is concatenated (ComfyUI 0.3.75 has no middle hook)."""

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        if transformer_options.get("block") != FIRST_OUTPUT_BLOCK:
            return h, hsp
        return self.bottleneck.shift(h, transformer_options), hsp


def bottleneck_patch(patcher, bottleneck: Bottleneck, prefer_hook: bool = True) -> tuple[str, MiddleBlockPatch]:
    """(transformer_options patch kind, patch) that applies `bottleneck` on `patcher`'s UNet: upstream's
    middle-block hook where it exists (and `prefer_hook`), else the first output block's patch."""
    if prefer_hook and has_middle_block_hook(patcher):
        return "middle_block_after_patch", MiddleBlockPatch(bottleneck)
    return "output_block_patch", FirstOutputBlockPatch(bottleneck)


def set_bottleneck_patch(patcher, bottleneck: Bottleneck, prefer_hook: bool = True) -> str:
    """Install `bottleneck` on `patcher` (a clone the caller owns); returns the patch kind used."""
    kind, patch = bottleneck_patch(patcher, bottleneck, prefer_hook)
    patcher.set_model_patch(patch, kind)  # ModelPatcher.set_model_patch: 0.3.75 and 0.38
    return kind


# ---------------------------------------------------------------- memory

def free_memory(patcher, device) -> int:
    """Bytes free for a pass of `patcher`'s model on `device`, as ComfyUI's sampler counts them before it batches
    a model call: upstream comfy/samplers.py ``_calc_cond_batch`` asks the patcher
    (``ModelPatcher.get_free_memory``, comfy/model_patcher.py, 0.38: with dynamic VRAM, memory held by inactive
    models counts as free); 0.3.75 asks ``comfy.model_management.get_free_memory(device)`` (on the CPU: the
    system's available RAM)."""
    own = getattr(patcher, "get_free_memory", None)
    if callable(own):
        return int(own(device))
    return int(_model_management().get_free_memory(device))


# ---------------------------------------------------------------- models

def latent_downscale(base_model) -> int:
    """Image pixels per latent pixel: the latent format's ``spacial_downscale_ratio`` (comfy/latent_formats.py
    of newer ComfyUI, and models built outside comfy.supported_models), else SD's VAE factor 8 (0.3.75)."""
    return int(getattr(base_model.latent_format, "spacial_downscale_ratio", 8))


def model_options_for_call(patcher, device) -> dict:
    """A copy of `patcher`'s model options with its patches' weights cast for a call on `device` in the model's
    dtype, as the samplers prepare them before sampling (upstream comfy/samplers.py ``CFGGuider.outer_sample``:
    ``comfy.model_patcher.create_model_options_clone`` then ``comfy.samplers.cast_to_load_options``; 0.3.75 and
    0.38). Training calls the model outside a sampler, so it prepares them itself."""
    import comfy.model_patcher
    import comfy.samplers

    options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
    comfy.samplers.cast_to_load_options(options, device=device, dtype=patcher.model_dtype())
    return options


def prompt_model_conds(base_model, conditioning: list, width: int, height: int, noise: torch.Tensor, device) -> dict:
    """The model's own inputs (``model_conds``: cross-attention, SDXL's ADM vector ...) for the first entry of a
    CONDITIONING at an image of width x height, as the samplers build a positive prompt's
    (``comfy.sampler_helpers.convert_cond``, then ``comfy.samplers.process_conds`` with the model's extra_conds;
    0.3.75 and 0.38)."""
    import comfy.sampler_helpers
    import comfy.samplers

    cond = comfy.sampler_helpers.convert_cond(conditioning[:1])
    cond[0].update(width=width, height=height)
    cond[0]["model_conds"] = {}  # the model's inputs come from this model's extra_conds only
    return comfy.samplers.process_conds(base_model, noise, {"positive": cond}, device,
                                        seed=0)["positive"][0]["model_conds"]


def model_config_classes(names) -> tuple[type, ...]:
    """The comfy.supported_models classes of `names` that this ComfyUI has (the list grows with versions)."""
    import comfy.supported_models as sm

    return tuple(getattr(sm, name) for name in names if hasattr(sm, name))


# ---------------------------------------------------------------- V3 schema

def schema_options(**options) -> dict:
    """The keyword arguments among `options` that this ComfyUI's ``io.Schema`` accepts; the others are left
    out instead of raising TypeError. ``search_aliases`` (words the node search also matches) is a Schema
    field in upstream comfy_api/latest/_io.py (0.38), not in 0.3.75."""
    from comfy_api.v0_0_2 import io

    known = {f.name for f in dataclasses.fields(io.Schema)}
    return {name: value for name, value in options.items() if name in known}


# ---------------------------------------------------------------- the server (prompt handlers, previews)

def prompt_server():
    """ComfyUI's running PromptServer (server.py ``PromptServer.instance``, 0.3.75 and 0.38), or None when
    ComfyUI runs without one (in-process tools and tests)."""
    try:
        import server
    except ImportError:
        return None
    return getattr(getattr(server, "PromptServer", None), "instance", None)


def add_prompt_handler(server_instance, handler) -> None:
    """Register ``handler(json_data) -> json_data`` for every POST /prompt, before validation
    (server.py ``add_on_prompt_handler``, 0.3.75 and 0.38). ComfyUI logs and ignores an exception in a
    handler, so a handler that must fail closed catches its own."""
    server_instance.add_on_prompt_handler(handler)


def preview_event_types() -> dict[int, str]:
    """The websocket event types that carry a live preview image (``BinaryEventTypes``: protocol.py in 0.38,
    server.py in 0.3.75): PREVIEW_IMAGE (encoded bytes), UNENCODED_PREVIEW_IMAGE ((format, PIL image, max
    size)) and, where it exists (0.3.75 and 0.38), PREVIEW_IMAGE_WITH_METADATA (((format, PIL image, max
    size), metadata))."""
    try:
        from protocol import BinaryEventTypes as kinds
    except ImportError:
        from server import BinaryEventTypes as kinds

    return {getattr(kinds, name): name for name in ("PREVIEW_IMAGE", "UNENCODED_PREVIEW_IMAGE",
                                                    "PREVIEW_IMAGE_WITH_METADATA") if hasattr(kinds, name)}


def preview_prompt_id(server_instance, event: int, data) -> str | None:
    """The prompt a preview belongs to: its metadata's prompt_id (PREVIEW_IMAGE_WITH_METADATA), else the
    prompt the server is executing (``last_prompt_id``, set by main.py's prompt worker before each prompt)."""
    if preview_event_types().get(event) == "PREVIEW_IMAGE_WITH_METADATA":
        try:
            return data[1]["prompt_id"]
        except (TypeError, KeyError, IndexError):
            pass
    return getattr(server_instance, "last_prompt_id", None)


def map_preview_image(event: int, data, transform):
    """The preview `data` with its PIL image replaced by ``transform(image)``; None where the preview holds
    no PIL image (already encoded bytes)."""
    name = preview_event_types().get(event)
    if name == "UNENCODED_PREVIEW_IMAGE":
        fmt, image, size = data
        return fmt, transform(image), size
    if name == "PREVIEW_IMAGE_WITH_METADATA":
        (fmt, image, size), metadata = data
        return (fmt, transform(image), size), metadata
    return None


def filter_server_messages(server_instance, keep) -> None:
    """Every websocket message the server sends passes ``keep(event, data, sid)`` first: it returns the
    data to send (maybe changed) or None to drop the message. Wraps ``send_sync`` (server.py, 0.3.75 and
    0.38: the one method the executor, the progress hook and the progress registry send through)."""
    original = server_instance.send_sync

    def send_sync(event, data, sid=None):
        data = keep(event, data, sid)
        if data is not None:
            original(event, data, sid)

    send_sync.__wrapped__ = original
    server_instance.send_sync = send_sync


def add_get_route(server_instance, path: str, handler) -> None:
    """An aiohttp GET route on the server (``PromptServer.instance.routes``, 0.3.75 and 0.38); main.py adds
    these routes to the app after the custom nodes are loaded."""
    server_instance.routes.get(path)(handler)


def node_class(class_type):
    """The registered node class of a prompt's ``class_type`` (nodes.py ``NODE_CLASS_MAPPINGS``), or None."""
    import nodes

    return nodes.NODE_CLASS_MAPPINGS.get(class_type) if isinstance(class_type, str) else None


def apply_node_replacements(server_instance, prompt: dict) -> None:
    """Replace a prompt's unregistered node classes by their registered replacements now, as upstream
    server.py does only after the prompt handlers ran (``node_replace_manager.apply_replacements``,
    app/node_replace_manager.py, 0.38): so the handlers see the classes that will run. 0.3.75 has no
    replacements."""
    manager = getattr(server_instance, "node_replace_manager", None)
    if manager is not None and callable(getattr(manager, "apply_replacements", None)):
        manager.apply_replacements(prompt)


# ---------------------------------------------------------------- node classes and prompts as ComfyUI reads them

@dataclasses.dataclass(frozen=True)
class NodeFacts:
    """What ComfyUI declares about a node class, read the same way for V1 and V3 classes: input name ->
    (type, category, raw_link), output types, whether it is an output node (OUTPUT_NODE) and whether its
    results are shown while it is not one (upstream's HAS_INTERMEDIATE_OUTPUT), and the class itself."""
    inputs: dict
    outputs: tuple
    output_node: bool
    intermediate_output: bool
    cls: type


def _type_name(kind) -> str:
    return kind if isinstance(kind, str) else "COMBO"


def node_facts(class_type) -> NodeFacts | None:
    """The facts of a registered node class (nodes.py ``NODE_CLASS_MAPPINGS``), or None. Reads the V1 surface
    ComfyUI itself validates and runs prompts with (execution.py: ``INPUT_TYPES()``, ``RETURN_TYPES``,
    ``OUTPUT_NODE``; V3 classes expose it too, comfy_api/latest/_io.py, 0.3.75 and 0.38)."""
    cls = node_class(class_type)
    if cls is None:
        return None
    spec = cls.INPUT_TYPES()
    inputs = {}
    for category in ("required", "optional", "hidden"):
        for name, entry in (spec.get(category) or {}).items():
            kind = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
            extra = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) \
                else {}
            inputs[name] = (_type_name(kind), category, bool(extra.get("rawLink", False)))
    outputs = tuple(_type_name(t) for t in (getattr(cls, "RETURN_TYPES", ()) or ()))
    return NodeFacts(inputs, outputs, getattr(cls, "OUTPUT_NODE", False) is True,
                     getattr(cls, "HAS_INTERMEDIATE_OUTPUT", False) is True, cls)


def is_link(value) -> bool:
    """ComfyUI's own test of whether a prompt input is a link (comfy_execution/graph_utils.py ``is_link``,
    0.3.75 and 0.38): what its executor follows."""
    from comfy_execution.graph_utils import is_link as comfy_is_link

    return comfy_is_link(value)


def wrap_node_expansions(rewrite) -> None:
    """Every node expansion passes ``rewrite(subgraphs)`` before ComfyUI adds its nodes: `subgraphs` is the list of
    (new graph or None, results) that execution.py's ``get_output_from_returns`` returns for a node that
    expands (0.3.75 and 0.38); `rewrite` changes it in place or raises (the node then fails)."""
    import execution

    original = getattr(execution.get_output_from_returns, "__wrapped__", execution.get_output_from_returns)

    def get_output_from_returns(return_values, obj):
        output, ui, has_subgraph = original(return_values, obj)
        if has_subgraph:
            rewrite(output)
        return output, ui, has_subgraph

    get_output_from_returns.__wrapped__ = original
    execution.get_output_from_returns = get_output_from_returns


def unwrap_node_expansions() -> None:
    import execution

    execution.get_output_from_returns = getattr(execution.get_output_from_returns, "__wrapped__",
                                                execution.get_output_from_returns)


def executing_prompt_id(server_instance) -> str | None:
    """The prompt the server's worker is running (``last_prompt_id``, set by main.py's prompt worker before each
    prompt; 0.3.75 and 0.38: one prompt runs at a time)."""
    return getattr(server_instance, "last_prompt_id", None)


def filter_history(server_instance, keep) -> None:
    """Every finished prompt's history passes ``keep(prompt_id, history_result, messages)`` (which changes them in
    place) before ComfyUI stores it: wraps ``PromptQueue.task_done(item_id, history_result, status, ...)``
    (execution.py, 0.3.75 and 0.38; the running item is (number, prompt_id, prompt, extra_data, outputs, ...);
    `messages` is the status's list of (event, data), or [] without a status)."""
    queue = server_instance.prompt_queue
    original = queue.task_done

    def task_done(item_id, history_result, *args, **kwargs):
        item = queue.currently_running.get(item_id)
        status = args[0] if args else kwargs.get("status")
        messages = getattr(status, "messages", None)
        if item is not None and isinstance(history_result, dict):
            keep(item[1], history_result, messages if isinstance(messages, list) else [])
        return original(item_id, history_result, *args, **kwargs)

    task_done.__wrapped__ = original
    queue.task_done = task_done


def add_middleware(server_instance, middleware) -> None:
    """An aiohttp middleware on the server's app (server.py creates ``self.app`` with its middlewares before the
    custom nodes load, 0.3.75 and 0.38; the app freezes them when it starts)."""
    server_instance.app.middlewares.append(middleware)


def text_event_type() -> int | None:
    """The websocket event type of a node's progress text (``BinaryEventTypes.TEXT``: protocol.py in 0.38,
    server.py in 0.3.75), or None where it does not exist."""
    try:
        from protocol import BinaryEventTypes as kinds
    except ImportError:
        from server import BinaryEventTypes as kinds

    return getattr(kinds, "TEXT", None)


def preview_image_of(event: int, data):
    """The PIL image a preview message holds (decoded from PREVIEW_IMAGE's bytes: a 4-byte type, then the encoded
    image, server.py ``send_image``), or None when it holds none that can be read."""
    name = preview_event_types().get(event)
    if name == "UNENCODED_PREVIEW_IMAGE":
        return data[1]
    if name == "PREVIEW_IMAGE_WITH_METADATA":
        return data[0][1]
    if name == "PREVIEW_IMAGE" and isinstance(data, (bytes, bytearray)) and len(data) > 4:
        import io

        from PIL import Image

        try:
            image = Image.open(io.BytesIO(bytes(data[4:])))
            image.load()
            return image
        except Exception:   # noqa: BLE001 - not an image this filter can read: the caller drops it
            return None
    return None


# ---------------------------------------------------------------- V3 node classes

def own_method(cls, name: str):
    """The plain function behind the first override of V3 method `name` below ComfyUI's base classes, or None
    (comfy_api/internal ``first_real_override``, 0.3.75 and 0.38)."""
    from comfy_api.internal import first_real_override

    method = first_real_override(cls, name)
    return getattr(method, "__func__", None)


def schema_input_fields(inp) -> dict:
    """What a V3 schema input declares, read the same on every version: id, io type, optional, default, min, max,
    options, multiselect (comfy_api/latest/_io.py ``Input`` subclasses: the fields a kind lacks are None)."""
    options = getattr(inp, "options", None)
    return {"id": inp.id, "io_type": str(inp.get_io_type()), "optional": bool(inp.optional),
            "default": getattr(inp, "default", None), "min": getattr(inp, "min", None),
            "max": getattr(inp, "max", None), "options": tuple(options) if options is not None else None,
            "multiselect": bool(getattr(inp, "multiselect", False))}
