"""Mixed precision, one helper for every pass that runs the model with autocast: STG's scoring and gradient
passes (steering/stg.py, steering/guiders.py) and Train Steering Vector's UNet calls (training/unet.py).

Autocast modes are named as the nodes offer them ("none", "fp16", "bf16"); :func:`autocast` takes the dtype.
"""
from __future__ import annotations

import contextlib

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on the device's type at `dtype`; no autocast for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
