"""RespoDiff: a responsibility module (RAM) and a semantic module (SAM) at the UNet bottleneck (NeurIPS 2025,
arXiv 2509.15257; shared/papers/respodiff_2509.15257.md).

Both modules are constant tensors of the bottleneck's shape; what is added to h is their sum,
``h <- h + strength * (RAM + SAM)`` (:func:`offset`), on the conditional half of the CFG batch. Vector file kind
``respodiff_ram_sam`` (roles ``ram`` and ``sam``); the authors' published ``unet.pth`` holds one column per
concept of two ``nn.Linear(10 -> 1280*8*8)`` layers (steering/reference_import.py).

Learning them (Train Steering Vector, ``respodiff_ram_sam``), alternately at each batch:

    L_resp = loss_scale * || eps(z_t; h + RAM, neutral) - target ||^2        updates RAM (CoDSMa's objective)
    L_sem  = lambda_sem * || eps(z_t; h + RAM + SAM, neutral) - eps(z_t; h, neutral) ||^2    updates SAM

(RAM held fixed in L_sem), with rollouts that add RAM + SAM to the conditional half (the reference pipeline's
``controlnet_cond_guidance``), and RAM and SAM starting at ``nn.Linear``'s default initialisation of the
reference's 10-concept layers (:func:`linear_default_init`).

Where the pieces are: the losses, the sum and the initialisation here; the patch in steering/hspace.py; the
objective in training/objectives.py ``RespoDiffRamSam``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .codsma import score_matching_loss

CONCEPTS = 10
"""in_features of the reference's RAM / SAM Linear layers (the size of its concept dict)."""


def offset(ram: torch.Tensor, sam: torch.Tensor) -> torch.Tensor:
    """What RespoDiff adds to the bottleneck: RAM + SAM."""
    return ram + sam


def responsibility_loss(prediction: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """L_resp: CoDSMa's score matching of eps(z_t; h + RAM, neutral) to the target."""
    return score_matching_loss(prediction, target, scale)


def semantic_loss(prediction: torch.Tensor, unshifted: torch.Tensor, lambda_sem: float) -> torch.Tensor:
    """L_sem: ``lambda_sem * MSE(eps(z_t; h + RAM + SAM, neutral), eps(z_t; h, neutral))``."""
    return lambda_sem * F.mse_loss(prediction, unshifted)


def linear_default_init(generator: torch.Generator, shape, fan_in: int = CONCEPTS) -> torch.Tensor:
    """``nn.Linear``'s default weight initialisation, kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) per element (std 0.18 for the reference's 10 concepts)."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(*shape, generator=generator) * 2.0 - 1.0) * bound
