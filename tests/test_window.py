"""steering/window.py: one check of every method's start/end window, and its sigmas."""
from __future__ import annotations

import math

import pytest

from devtools import pure

window = pure.fixture("steering.window")


@pytest.mark.parametrize("start,end", [(0.0, 0.0), (0.0, 1.0), (0.3, 0.3), (0.276, 1.0)])
def test_windows_accepted(window, start, end):
    window.check_window(start, end)
    assert window.window_problem(start, end) is None


@pytest.mark.parametrize("start,end,message", [
    (0.8, 0.2, "start_percent (0.8) must not be after end_percent (0.2)"),
    (-0.1, 0.5, "must lie in [0, 1]"), (0.0, 1.5, "must lie in [0, 1]"),
    (math.nan, 0.5, "must lie in [0, 1]"), (0.0, math.inf, "must lie in [0, 1]")])
def test_windows_refused(window, start, end, message):
    with pytest.raises(window.WindowError) as info:
        window.check_window(start, end, "STG")
    assert str(info.value).startswith("the STG window: ") and message in str(info.value)
    assert message in window.window_problem(start, end)


def test_sigma_window_uses_the_models_schedule(window, tiny):
    sampling = tiny[0].get_model_object("model_sampling")
    w = window.SigmaWindow.of(sampling, 0.25, 0.75)
    assert w.sigma_start == float(sampling.percent_to_sigma(0.25))
    assert w.sigma_end == float(sampling.percent_to_sigma(0.75))
    # ComfyUI's own sigma table: timestep 999 is the noisiest; the window holds the middle of it only
    sigmas = sampling.sigmas
    assert float(sigmas[500]) in w
    assert float(sigmas[999]) not in w and float(sigmas[0]) not in w
    with pytest.raises(window.WindowError):
        window.SigmaWindow.of(sampling, 0.9, 0.1)
