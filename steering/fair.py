"""Fair sampling: which of K attribute vectors each image of a batch gets.

The assignment is a deterministic function of (seed, K, mode) and the image index,
independent of the batch size: image i gets the i-th draw of one fixed sequence, so
a batch of 4 is a prefix of a batch of 8 with the same seed, and the embedding and
h-space fair nodes agree for the same seed.

* ``uniform``: each image independently draws a vector uniformly (the papers' scheme).
* ``balanced``: each consecutive block of K images is a random permutation of the K
  vectors, so every prefix of the batch is as balanced as possible (counts differ
  by at most one) -- lower variance than i.i.d. draws for small batches.
"""
from __future__ import annotations

import random

ASSIGNMENT_MODES = ("uniform", "balanced")


class FairSamplingError(ValueError):
    """Settings fair sampling cannot assign vectors with."""


def fair_assignment(num_vectors: int, batch_size: int, seed: int, mode: str = "uniform") -> list[int]:
    """Index of the vector for each of `batch_size` images."""
    if num_vectors < 1:
        raise FairSamplingError(f"fair sampling needs at least one vector; got {num_vectors}")
    if batch_size < 0:
        raise FairSamplingError(f"batch size must be >= 0; got {batch_size}")
    if mode not in ASSIGNMENT_MODES:
        raise FairSamplingError(f"assignment mode {mode!r}; expected one of {ASSIGNMENT_MODES}")
    rng = random.Random(seed)
    if mode == "uniform":
        return [rng.randrange(num_vectors) for _ in range(batch_size)]
    out: list[int] = []
    while len(out) < batch_size:
        block = list(range(num_vectors))
        rng.shuffle(block)
        out.extend(block)
    return out[:batch_size]
