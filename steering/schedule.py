"""Paper steps <-> ComfyUI schedule fractions (``start_percent`` / ``end_percent``).

The papers' reference code counts denoising steps from 1 and steers "from step k of N" on
diffusers' LMSDiscreteScheduler grid (embedding direction: safety from step 15 of 50,
fairness from step 10 of 50; both to step 50). That grid evaluates step k at timestep
``999 * (1 - (k - 1) / (N - 1))``: N timesteps evenly spaced from 999 down to 0. ComfyUI's
``normal`` scheduler on a 1000-timestep discrete model (SD1.x, SD2.x, SDXL) uses exactly
the same timesteps (its sigmas are interpolated in log sigma instead of sigma, which does
not move any step), so paper step k is ComfyUI's step k (1-based) there.

The window test, derived from ComfyUI 0.3.75:

* ``percent_to_sigma(p) = sigma(999 * (1 - p))`` (0 -> above every sigma, 1 -> 0);
* an evaluation at ``sigma`` is inside the window iff ``sigma_end <= sigma <= sigma_start``,
  inclusive at both ends (conditioning ``start_percent`` / ``end_percent`` ranges, which the
  embedding direction uses, and the h-space patch alike);
* sigma(t) increases with t, so step i (0-based) is steered from ``start_percent = p`` on iff
  ``i / (N - 1) >= p``.

Paper step k is therefore the first steered step iff ``(k - 2) / (N - 1) < p <= (k - 1) / (N - 1)``.
The upper end is a floating-point knife edge (both sides go through float32 interpolation),
so ``paper_step_to_start_percent`` returns the middle of that interval, rounded to the
nodes' widget precision (0.001) when the rounded value stays well inside. The last steered
step m works the same way: ``(m - 1) / (N - 1) <= e < m / (N - 1)``, and ``e = 1`` for m = N.

Other schedulers space the timesteps differently, so the same percent can select a different
step there; the percent always means the same noise level.
"""
from __future__ import annotations


# The papers' steps (lzws/Responsible-Diffusion generate.py / generate_fair.py): 1-based, of 50.
PAPER_STEPS = 50
SAFETY_START_STEP = 15
FAIRNESS_START_STEP = 10
WIDGET_DECIMALS = 3  # the step of the nodes' start/end percent widgets is 0.001


def _check(k: int, steps: int, what: str) -> None:
    if isinstance(k, bool) or isinstance(steps, bool) or not isinstance(k, int) or not isinstance(steps, int):
        raise ValueError(f"{what} and the step count must be integers; got {k!r} of {steps!r}")
    if steps < 1:
        raise ValueError(f"the schedule needs at least 1 step; got {steps}")
    if not 1 <= k <= steps:
        raise ValueError(f"{what} {k} is not a step of a {steps}-step schedule (steps count from 1 to {steps})")


def _inside(lo: float, hi: float, decimals: int | None) -> float:
    """The middle of (lo, hi), rounded to `decimals` if that stays a quarter interval inside."""
    middle = (lo + hi) / 2
    if decimals is None:
        return middle
    rounded = round(middle, decimals)
    margin = (hi - lo) / 4
    return rounded if lo + margin <= rounded <= hi - margin else middle


def paper_step_to_start_percent(k: int, steps: int = PAPER_STEPS, decimals: int | None = WIDGET_DECIMALS) -> float:
    """``start_percent`` at which the window starts at paper step `k` (1-based) of `steps`, on the
    ``normal`` scheduler: safely inside ``((k - 2) / (steps - 1), (k - 1) / (steps - 1)]``.

    k = 1 gives 0.0 (every step). `decimals` None returns the exact middle of the interval."""
    _check(k, steps, "paper step")
    if k == 1:
        return 0.0
    return _inside((k - 2) / (steps - 1), (k - 1) / (steps - 1), decimals)


def paper_step_to_end_percent(m: int, steps: int = PAPER_STEPS, decimals: int | None = WIDGET_DECIMALS) -> float:
    """``end_percent`` at which paper step `m` (1-based) of `steps` is the last steered step, on the
    ``normal`` scheduler: safely inside ``[(m - 1) / (steps - 1), m / (steps - 1))``; m = steps gives 1.0."""
    _check(m, steps, "paper step")
    if m == steps:
        return 1.0
    return _inside((m - 1) / (steps - 1), m / (steps - 1), decimals)


def steered_paper_steps(start_percent: float, end_percent: float, steps: int) -> list[int]:
    """The paper steps (1-based) a window selects on the ``normal`` scheduler, by the rule above
    (exact rational comparison; a percent on a knife edge counts as inside, as the inclusive
    test intends)."""
    if not (0.0 <= start_percent <= end_percent <= 1.0):
        raise ValueError(f"need 0 <= start_percent <= end_percent <= 1; got {start_percent}, {end_percent}")
    if steps < 1:
        raise ValueError(f"the schedule needs at least 1 step; got {steps}")
    if steps == 1:
        return [1] if start_percent <= 0.0 else []
    span = steps - 1
    return [i + 1 for i in range(steps)
            if (start_percent <= 0.0 or i >= start_percent * span - 1e-12)
            and (end_percent >= 1.0 or i <= end_percent * span + 1e-12)]


def step_table(rows: list[tuple[int, int]]) -> str:
    """A Markdown table "paper step k of N <-> start_percent" for (k, N) pairs."""
    lines = ["| paper step k of N | steered steps | start_percent | exact interval for start_percent |",
             "| --- | --- | --- | --- |"]
    for k, n in rows:
        p = paper_step_to_start_percent(k, n)
        interval = "≤ 0" if k == 1 else f"({(k - 2) / (n - 1):.4f}, {(k - 1) / (n - 1):.4f}]"
        lines.append(f"| {k} of {n} | {k}–{n} ({n - k + 1} steps) | {p:g} | {interval} |")
    return "\n".join(lines)


README_ROWS = [(15, 50), (10, 50), (20, 50), (1, 50), (5, 50), (25, 50), (6, 20), (4, 20), (8, 25), (5, 25),
               (9, 30), (6, 30)]


if __name__ == "__main__":  # regenerates the README table
    print(step_table(README_ROWS))
