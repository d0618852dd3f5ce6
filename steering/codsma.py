"""CoDSMa: Concept Denoising Score Matching in h-space (shared/papers/codsma_hspace.md).

A **c-vector** ``c`` of the bottleneck's shape ([1280, H, W] on SD1.x / SDXL) is added to the UNet bottleneck h
(the middle block's output) at every step of its window, on the conditional half of the CFG batch, as the
reference code does: ``h <- h + strength * c``. Vector file kind ``hspace_cvector``. Fair sampling gives each
image one attribute's c-vector (steering/fair.py); a safety vector may be the sum of several (Combine Steering
Vectors), as the paper sums anti-violence and anti-sexual ones.

Learning c (Train Steering Vector, ``codsma_cvector``): at a step t of a rollout of the neutral prompt,

    L = loss_scale * || eps(z_t; h + c, neutral) - target ||^2

where the target is the target prompt's prediction ("a woman"), or for safety the neutral prompt's prediction
pushed away from the concept by negative prompting (training/objectives.py ``target_from``). Only the decoder
half of the UNet sees c, so only it is differentiated through.

Where the pieces are: the loss here; the patch that adds c (and its window, its resize to other resolutions)
in steering/hspace.py; the objective (defaults, rollouts, phases) in training/objectives.py ``CodsmaCVector``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def score_matching_loss(prediction: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """CoDSMa's objective: ``scale * MSE(eps(z_t; h + c, neutral), target)`` (mean over all elements)."""
    return scale * F.mse_loss(prediction, target)
