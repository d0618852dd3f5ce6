"""Gradients through models whose weights are inference tensors, without copying them.

ComfyUI runs every node under ``torch.inference_mode()``, so the weights it loads are
inference tensors: autograd refuses to save them for backward, even inside
``torch.inference_mode(False)`` + ``torch.enable_grad()``. Copying the weights would
cost a full extra model in memory (or a copy per step).

A tensor made *outside* inference mode with ``Tensor.set_`` on the inference tensor's
storage is a normal tensor that shares the same memory: no copy, no extra memory.
:func:`autograd_views` swaps every inference parameter/buffer of the given modules for
such a view for the duration of a ``with`` block and puts the originals back after it
(also on errors). Gradients then flow to the *inputs* (here: the text embedding); the
weights never require grad.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


def normal_view(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) tensor sharing `tensor`'s storage; `tensor` itself if it is normal."""
    if not tensor.is_inference():
        return tensor
    with torch.inference_mode(False):
        view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        view.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
    return view


def _swaps(modules: Iterable[torch.nn.Module]):
    seen: set[int] = set()
    for root in modules:
        if root is None:
            continue
        for module in root.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            for table in (module._parameters, module._buffers):
                for name, value in table.items():
                    if value is not None and value.is_inference():
                        yield table, name, value


@contextlib.contextmanager
def autograd_views(*modules: torch.nn.Module) -> Iterator[int]:
    """Within the block, autograd can pass through `modules` (yields how many tensors were swapped)."""
    swapped = []
    try:
        with torch.inference_mode(False):
            for table, name, value in list(_swaps(modules)):
                view = normal_view(value)
                if isinstance(value, torch.nn.Parameter):
                    view = torch.nn.Parameter(view, requires_grad=False)
                table[name] = view
                swapped.append((table, name, value))
        yield len(swapped)
    finally:
        for table, name, value in swapped:
            table[name] = value


def grad_input(tensor: torch.Tensor) -> torch.Tensor:
    """A normal tensor with the values of `tensor` (a clone made outside inference mode)."""
    with torch.inference_mode(False):
        return tensor.detach().clone()
