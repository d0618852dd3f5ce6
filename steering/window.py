"""The steering window: where in the sampling schedule a method acts.

Every method of the pack that acts on part of the schedule takes the same two numbers,
``start_percent`` <= ``end_percent`` in [0, 1], with ComfyUI's meaning: fractions of the
model's noise schedule (0 = the first, noisiest step). They are checked here, and
converted to sigmas here, with the model's own ``percent_to_sigma`` (so a window means
the same noise levels for every sampler, scheduler and step count). A sigma is inside
the window when ``sigma_end <= sigma <= sigma_start`` (sigmas fall as sampling goes on).

No ComfyUI import: the model-sampling object is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class WindowError(ValueError):
    """A start/end pair that is not a window of the schedule."""


class ModelSampling(Protocol):
    def percent_to_sigma(self, percent: float) -> float: ...


def check_window(start_percent: float, end_percent: float, what: str | None = None) -> None:
    """Refuse anything but finite 0 <= start <= end <= 1 (NaN fails every comparison). `what` names
    the method in the message (e.g. "STG")."""
    if not (0.0 <= start_percent <= 1.0 and 0.0 <= end_percent <= 1.0):
        problem = (f"start_percent and end_percent must lie in [0, 1]; got start_percent={start_percent}, "
                   f"end_percent={end_percent}")
    elif start_percent > end_percent:
        problem = f"start_percent ({start_percent}) must not be after end_percent ({end_percent})"
    else:
        return
    raise WindowError(problem if what is None else f"the {what} window: {problem}")


def window_problem(start_percent: float, end_percent: float) -> str | None:
    """The message check_window would raise, or None: for nodes' validate_inputs."""
    try:
        check_window(start_percent, end_percent)
    except WindowError as e:
        return str(e)
    return None


def percent_sigma(model_sampling: ModelSampling, percent: float) -> float:
    """The sigma at a fraction of the model's schedule, as a Python float."""
    return float(model_sampling.percent_to_sigma(percent))


@dataclass(frozen=True)
class SigmaWindow:
    """A checked window converted to sigmas: [sigma_end, sigma_start]."""

    sigma_start: float
    sigma_end: float

    @classmethod
    def of(cls, model_sampling: ModelSampling, start_percent: float, end_percent: float,
           what: str | None = None) -> "SigmaWindow":
        check_window(start_percent, end_percent, what)
        return cls(percent_sigma(model_sampling, start_percent), percent_sigma(model_sampling, end_percent))

    def __contains__(self, sigma: float) -> bool:
        return self.sigma_end <= float(sigma) <= self.sigma_start
