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

# None: set comfy.model_management.in_training in gradient passes where ComfyUI has it; True: set it
# even where it does not exist; False: never. Only tests and benchmarks change it.
IN_TRAINING_OVERRIDE: bool | None = None


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
    docstring); ``IN_TRAINING_OVERRIDE`` decides whether ``in_training`` is set."""
    mm = _model_management()
    use = in_training_supported() if IN_TRAINING_OVERRIDE is None else IN_TRAINING_OVERRIDE
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
