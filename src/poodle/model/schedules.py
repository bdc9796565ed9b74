"""Per-step schedules: EMA momentum and warmup + cosine (DINO-style; drives the LR too).

Schedules are numpy arrays indexed by optimiser step. The horizon (`total_steps`, e.g. 300 epochs) and the
stop point (`stop_step`, e.g. 100 epochs) are separate: the array is the full-horizon schedule
truncated at the stop, so a run stopped at 100 of 300 epochs sees exactly the values the release used.
"""

from __future__ import annotations

import math

import numpy as np


def ema_momentum(step_fraction: float, base: float = 0.996) -> float:
    """tau = 1 - (1 - base) * (cos(pi * t / T) + 1) / 2 at t / T = `step_fraction` (base at 0, 1 at T)."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step_fraction) + 1.0) / 2.0


def ema_schedule(total_steps: int, base: float = 0.996, stop_step: int | None = None) -> np.ndarray:
    """Per-step EMA momentum over a horizon of `total_steps` steps (value at step t uses t / total_steps)."""
    return cosine_schedule(base, 1.0, total_steps, warmup_steps=0, stop_step=stop_step)


def cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, stop_step: int | None = None
) -> np.ndarray:
    """Linear warmup 0 -> base, then half-cosine base -> final, on steps (the release's per-iteration rule).

    Warmup is `base * t / warmup_steps` for t < warmup_steps, as the release's `lr * epoch / warmup_epochs` on
    the fractional epoch: the full `base` is first reached at step `warmup_steps`, where the cosine starts (DINO's
    `np.linspace(0, base, warmup_steps)` would reach it one step early). The cosine covers the remaining
    `total_steps - warmup_steps` steps with value final + (base - final) * (1 + cos(pi * i / n)) / 2, i < n,
    so it approaches `final` at the horizon. The result has `stop_step` (default `total_steps`) entries.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    stop = total_steps if stop_step is None else stop_step
    if not 0 <= stop <= total_steps:
        raise ValueError(f"stop_step must be in [0, total_steps={total_steps}], got {stop_step}")
    warmup = base * np.arange(warmup_steps, dtype=np.float64) / max(warmup_steps, 1)
    n = total_steps - warmup_steps
    steps = np.arange(n, dtype=np.float64)
    cosine = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * steps / max(n, 1)))
    return np.concatenate([warmup, cosine])[:stop]
