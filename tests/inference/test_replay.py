"""Replayed decisions: the Kalman candidate's held fits make the serving path causal at
cuts inside the train rows it was fitted on (a re-fit would read the perturbed rows)."""

from __future__ import annotations

import json

import numpy as np

from mamba_denoiser.inference.candidates import KalmanCandidate


def _panel(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    level = np.cumsum(0.05 * rng.standard_normal((n, 2)), axis=0)
    return level + 0.3 * rng.standard_normal((n, 2))


def test_held_kalman_fits_ignore_rows_after_a_cut_inside_train():
    raw, train, cut = _panel(), (0, 800), 400
    fitted = KalmanCandidate(raw, train)
    held = json.loads(json.dumps(fitted.decisions()))  # what denoise_summary.json keeps
    base = fitted.run(raw).mean
    bent = raw.copy()
    bent[cut + 1 :] += 5.0 * np.random.default_rng(1).standard_normal(bent[cut + 1 :].shape)

    replayed = KalmanCandidate(bent, train, fits=held).run(bent)
    np.testing.assert_array_equal(replayed.mean[: cut + 1], base[: cut + 1])
    # the same decisions re-fitted on the perturbed train rows do move the early rows:
    # the very leak the held fits close
    refit = KalmanCandidate(bent, train).run(bent).mean
    assert np.abs(refit[: cut + 1] - base[: cut + 1]).max() > 1e-6
