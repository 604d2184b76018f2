"""What a denoiser did to a feature, measurable without clean values.

On a user's own data nothing says what the clean signal was, but three things still tell
whether the part removed looks like observation noise:

- the share of the variance removed, Var(y − ŝ) / Var(y), next to the noise share the
  σ estimate implies, σ² / Var(y) (both on the same rows): removing much more than the
  noise share means the signal was cut too;
- the Ljung–Box p-value of the removed part y − ŝ (statsmodels): white observation noise
  gives a large p; a small p says the removed part has structure, i.e. signal;
- the lag of ŝ behind y (cross-correlation peak of levels, evaluation/metrics.lag): a
  smoother that trails its input shows a positive lag.
"""

from __future__ import annotations

import numpy as np

from mamba_denoiser.evaluation.metrics import lag

LJUNG_BOX_LAGS = 10


def removed_part(
    raw: np.ndarray,  # (T,) observed, NaN where missing
    out: np.ndarray,  # (T,) the denoised series
    rows: slice,
    *,
    sigma: float | None = None,
    train: slice | None = None,
) -> dict[str, float | int | None]:
    """Diagnostics of y − ŝ over `rows` (observed cells only; gaps are dropped, so the
    Ljung–Box test sees the observed values in order). `sigma` and `train` give the noise
    share σ² / Var(y) on the train rows, the σ estimate's own claim."""
    from statsmodels.stats.diagnostic import acorr_ljungbox

    y, s = np.asarray(raw, float)[rows], np.asarray(out, float)[rows]
    ok = np.isfinite(y) & np.isfinite(s)
    res: dict[str, float | int | None] = {
        "noise_share": None,
        "removed_share": None,
        "removed_ljung_box_p": None,
        "lag_vs_raw": None,
    }
    if sigma is not None and train is not None:
        yt = np.asarray(raw, float)[train]
        yt = yt[np.isfinite(yt)]
        if len(yt) > 2 and np.var(yt) > 0 and np.isfinite(sigma):
            res["noise_share"] = float(sigma**2 / np.var(yt))
    if ok.sum() <= 2 * LJUNG_BOX_LAGS or np.var(y[ok]) == 0:
        return res
    d = y[ok] - s[ok]
    res["removed_share"] = float(np.var(d) / np.var(y[ok]))
    if not np.any(d):  # left as observed: nothing removed, no whiteness or lag to tell
        return res
    lb = acorr_ljungbox(d, lags=[LJUNG_BOX_LAGS])
    res["removed_ljung_box_p"] = float(lb["lb_pvalue"].iloc[0])
    # observed cells in order (a feature's gaps are its leading history, rarely interior)
    try:
        res["lag_vs_raw"] = lag(s[ok], y[ok], max_lag=min(20, int(ok.sum()) - 3))
    except ValueError:
        pass
    return res
