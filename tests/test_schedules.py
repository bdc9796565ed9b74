"""Per-step EMA momentum and warmup + cosine schedules (spec 2.5, decision 11)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poodle.model import cosine_schedule, ema_momentum, ema_schedule


def test_ema_momentum_known_values():
    assert ema_momentum(0.0) == pytest.approx(0.996, abs=1e-12)
    assert ema_momentum(0.5) == pytest.approx(0.998, abs=1e-12)
    assert ema_momentum(1.0) == pytest.approx(1.0, abs=1e-12)
    # The release stops at 100 of 300 epochs: tau = 1 - 0.004 * (cos(pi / 3) + 1) / 2 = 0.997.
    assert ema_momentum(1 / 3) == pytest.approx(0.997, abs=1e-12)
    assert ema_momentum(0.0, base=0.99) == pytest.approx(0.99)


def test_ema_schedule_array_matches_the_formula_and_truncates():
    total = 300
    tau = ema_schedule(total)
    assert tau.shape == (total,)
    steps = np.arange(total)
    np.testing.assert_allclose(tau, 1 - 0.004 * (np.cos(np.pi * steps / total) + 1) / 2, rtol=0, atol=1e-15)
    assert tau[0] == pytest.approx(0.996) and tau[150] == pytest.approx(0.998)
    assert tau[-1] == pytest.approx(1.0, abs=1e-6) and tau[-1] < 1.0
    assert np.all(np.diff(tau) > 0)
    stopped = ema_schedule(total, stop_step=100)
    assert stopped.shape == (100,)
    np.testing.assert_array_equal(stopped, tau[:100])


def test_cosine_schedule_warmup_and_cosine():
    lr = cosine_schedule(1.0, 0.1, total_steps=110, warmup_steps=10)
    assert lr.shape == (110,)
    # The release's rule lr * t / warmup: 0, 0.1, ..., 0.9, and the full lr first at step 10 (not one step early).
    np.testing.assert_allclose(lr[:10], np.arange(10) / 10)
    assert lr[9] < 1.0 and lr[10] == pytest.approx(1.0)
    assert lr[0] == 0.0
    assert lr[60] == pytest.approx(0.55)  # half-way through the 100 cosine steps: mean of base and final
    assert lr[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr[-1] == pytest.approx(0.1, abs=1e-3)
    assert np.all(np.diff(lr[10:]) < 0)


def test_cosine_schedule_stop_and_validation():
    full = cosine_schedule(5e-4, 0.0, total_steps=300, warmup_steps=20)
    stopped = cosine_schedule(5e-4, 0.0, total_steps=300, warmup_steps=20, stop_step=100)
    assert stopped.shape == (100,)
    np.testing.assert_array_equal(stopped, full[:100])
    assert cosine_schedule(1.0, 0.0, total_steps=5, stop_step=0).shape == (0,)
    np.testing.assert_allclose(cosine_schedule(1.0, 1.0, 4), np.ones(4))
    with pytest.raises(ValueError, match="stop_step"):
        cosine_schedule(1.0, 0.0, total_steps=10, stop_step=11)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(1.0, 0.0, total_steps=0)
