"""Is a fitted model going stale? The one-step innovations of each feature's train-fitted
Kalman filter, standardised by the variance the filter expects, have mean square 1 on
rows that behave like the train rows (the fit's own likelihood makes it so). A recent
mean square far above 1 says the noise or the dynamics moved since the fit: σ, the filters
and the gate's choices were made for another regime, and a refit is due."""

from __future__ import annotations

import numpy as np

from mamba_denoiser.robust import NoiseLaw, filter_priors

RECENT = 250  # rows scored as "recent" (about a trading year)
THRESHOLD = 2.0  # a recent / train ratio above this is reported as stale


def innovation_ratio(
    raw: np.ndarray,  # (T, F) native units, NaN missing
    fits: list,  # each column's StateSpaceFit (train rows), or None
    train: tuple[int, int],
    *,
    recent: int = RECENT,
) -> np.ndarray:
    """(F,) mean squared standardised innovation over the last ``recent`` rows divided by
    the same over the train rows; NaN where a column has no fit or no recent observation."""
    laws = [None if f is None else NoiseLaw(0.0, 1.0) for f in fits]  # the Kalman filter
    p = filter_priors(raw, fits, laws)
    h = p.noise_var[:, 0]  # (F,) Gaussian law: core = total
    z2 = (raw - p.mean) ** 2 / (p.var + h)  # (T, F)
    with np.errstate(invalid="ignore"), np.errstate(divide="ignore"):
        base = np.nanmean(z2[train[0] : train[1]], axis=0)
        late = np.nanmean(z2[-recent:], axis=0)
        return late / base
