"""Image layout is converted once, explicitly: a ComfyUI IMAGE [B, H, W, C] is channels-last, a score reads
NCHW, and nothing guesses the layout from the shape. The guess read a channels-first batch whose width is 3 or 4
as channels-last (narrow strips were scored on scrambled channels). Every width 1..8 is checked against an
independent numpy computation, through each way images reach a score: Detect Unsafe (IMAGE), a score's own
evaluate (NCHW), the evaluation metrics (IMAGE), ToyWorld's classifiers (either layout, stated)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from devtools import pure

WIDTHS = range(1, 9)
REDNESS = np.array([1.0, -0.5, -0.5])


@pytest.fixture(scope="module")
def safety():
    return pure.module("steering.safety")


def batch(width: int, seed: int) -> np.ndarray:
    """A [2, 5, width, 3] IMAGE batch (channels-last), values in 0..1, each channel different."""
    rng = np.random.default_rng(seed)
    return rng.random((2, 5, width, 3)).astype(np.float32)


def expected_redness(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) @ REDNESS).reshape(images.shape[0], -1).mean(1)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_score_reads_channels_first_batches_of_every_width(safety, width):
    images = batch(width, width)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    score = safety.ColourStatisticScore("redness", threshold=0.0)
    got = score.evaluate(nchw).score.numpy()
    np.testing.assert_allclose(got, expected_redness(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score.score_and_flags(nchw)[0].numpy(), got)


@pytest.mark.parametrize("width", WIDTHS)
def test_detect_unsafe_and_the_metrics_convert_a_comfy_image_once(width):
    censor = pure.module("steering.safety.censor")
    metrics = pure.module("steering.evaluation_metrics")
    colour = pure.module("steering.safety.colour")
    images = batch(width, 100 + width)
    found = censor.detect_unsafe(torch.from_numpy(images), colour.ColourStatisticScore("redness", threshold=0.0))
    np.testing.assert_allclose(found.scores, expected_redness(images), rtol=1e-5, atol=1e-6)
    assert tuple(found.masks.shape) == (2, 5, width)
    rate, _, _, per_image = metrics.safety_rate_report(torch.from_numpy(images),
                                                       colour.ColourStatisticScore("redness", threshold=0.0))
    np.testing.assert_allclose([p["score"] for p in per_image], expected_redness(images), rtol=1e-5, atol=1e-6)


def test_the_layout_is_never_guessed(safety):
    base = pure.module("steering.safety.base")
    nhwc = torch.rand(1, 3, 4, 3)          # an IMAGE 3 high, 4 wide: also shaped like NCHW with 3 channels
    nchw = base.image_to_nchw(nhwc)
    assert tuple(nchw.shape) == (1, 3, 3, 4) and torch.equal(nchw[0, 1], nhwc[0, :, :, 1])
    grey = base.image_to_nchw(torch.rand(2, 6, 5, 1))
    assert tuple(grey.shape) == (2, 3, 6, 5) and torch.equal(grey[:, 0], grey[:, 2])
    rgba = torch.rand(1, 2, 2, 4)
    assert torch.equal(base.image_to_nchw(rgba), rgba[..., :3].permute(0, 3, 1, 2))
    for bad in (torch.rand(2, 5, 5), torch.rand(1, 4, 4, 2), torch.rand(1, 1, 3, 4, 3)):
        with pytest.raises(base.ImageBatchError, match=r"expected a ComfyUI IMAGE batch \[B, H, W, 3\]"):
            base.image_to_nchw(bad)
    with pytest.raises(base.ImageBatchError, match=r"expected an image batch \[B, 3, H, W\] \(NCHW"):
        safety.ColourStatisticScore().evaluate(torch.rand(1, 5, 4, 3))      # channels-last given to a score


@pytest.mark.parametrize("width", WIDTHS)
def test_toyworld_scores_and_classifiers_of_every_width(width):
    world = pure.module("toyworld.world")
    judges = pure.module("toyworld.judges")
    images = batch(width, 200 + width)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    # the red share by hand: softmax over squared distances to the palette, red's probability, pixel mean
    palette = np.array([*world.COLOURS.values(), *world.BACKGROUNDS.values()])
    distance = ((images[..., None, :] - palette) ** 2).sum(-1)
    logits = -distance / 0.02
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    expected = p[..., list(world.COLOURS).index("red")].reshape(2, -1).mean(1)
    got = judges.ToyWorldRedScore(0.03, 0.02).evaluate(nchw).score.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    by_nhwc = world.classify(torch.from_numpy(images))
    by_nchw = world.classify(nchw, layout="nchw")
    assert by_nhwc == by_nchw
