"""The SURE gate: it accepts a candidate where it helps and rejects it where it hurts."""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from mamba_denoiser.inference.gate import choose, sure_gain_db


def _ar1(phi, n, rng):
    return lfilter([1.0], [1.0, -phi], rng.standard_normal(n)) * np.sqrt(1 - phi**2)


def test_gate_accepts_a_helpful_filter_and_rejects_a_harmful_one():
    rng = np.random.default_rng(0)
    n, alpha = 20_000, 0.3
    slow = _ar1(0.98, n, rng)  # a slow signal under heavy noise: an EMA helps
    fast = _ar1(-0.5, n, rng)  # a fast signal under light noise: an EMA hurts
    sigma = np.array([0.7, 0.1])
    clean = np.column_stack([slow, fast])
    y = clean + sigma * rng.standard_normal((n, 2))
    ema = lfilter([alpha], [1.0, alpha - 1.0], y, axis=0)
    div = np.full_like(y, alpha)  # an EMA's exact weight on the current row
    rows = slice(100, None)
    gain = sure_gain_db(y[rows], ema[rows], div[rows], sigma)
    true = 10 * np.log10(((y - clean)[rows] ** 2).mean(0) / ((ema - clean)[rows] ** 2).mean(0))
    np.testing.assert_allclose(gain, true, atol=0.15)
    assert gain[0] > 1.0 and gain[1] < -1.0
    # two candidates (the EMA, and an identity that gains nothing): the EMA for the slow
    # feature, raw for the fast one
    gains = np.vstack([gain, sure_gain_db(y[rows], y[rows], np.ones_like(y[rows]), sigma)])
    np.testing.assert_array_equal(choose(gains, margin_db=0.1), [0, -1])
