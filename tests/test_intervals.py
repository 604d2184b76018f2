"""Denoiser.intervals: bands for the clean signal around transform's values, NaN where
none is estimated, and their coverage of a known clean signal near the stated level."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser import Denoiser
from mamba_denoiser.errors import ConfigError
from tests.helpers import make_small_panel, train_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return train_sweep(tmp_path_factory.mktemp("intervals"), directions=("causal",))


def _coverage(lower, upper, clean, rows, features):
    lo, hi = lower[features].to_numpy()[rows], upper[features].to_numpy()[rows]
    s = clean[features].to_numpy()[rows]
    ok = np.isfinite(lo) & np.isfinite(s)
    return float(((s[ok] >= lo[ok]) & (s[ok] <= hi[ok])).mean()), int(ok.sum())


def test_intervals_bracket_transform_and_cover_the_clean_signal(sweep):
    """On the rows after the train split (no fit read them; the gate read the validation
    ones), the 90 % bands of the Kalman-served AR(1) and random-walk features with Gaussian
    noise cover the clean values at about 90 %: the filter's exact posterior variance."""
    frame, clean = make_small_panel(n_rows=600)
    den = Denoiser.from_run(sweep["root"] / "causal", candidates=["kalman"])
    lower, upper = den.intervals(frame)
    mean = den.transform(frame)
    assert list(lower.columns) == list(frame.columns) and lower.index.equals(frame.index)
    pd.testing.assert_series_equal(lower["D1"], frame["D1"])  # other columns as given
    banded = np.isfinite(lower[den.features].to_numpy())
    assert banded.mean() > 0.5
    m, lo, hi = (t[den.features].to_numpy() for t in (mean, lower, upper))
    assert (lo[banded] < m[banded]).all() and (m[banded] < hi[banded]).all()
    np.testing.assert_allclose((lo + hi)[banded] / 2, m[banded], rtol=1e-9, atol=1e-12)
    # no band where the input is missing (M2's early rows) or the feature stayed raw
    assert np.isnan(lower["M2"].to_numpy()[frame["M2"].isna().to_numpy()]).all()
    raw = [f for f in den.features if np.array_equal(mean[f], frame[f], equal_nan=True)]
    assert all(lower[f].isna().all() for f in raw)
    after = slice(den.bounds["train"][1], None)
    cov, n = _coverage(lower, upper, clean, after, den.features)
    assert n > 300 and 0.8 <= cov <= 0.97, (cov, n)
    # a wider level covers more, and the bands nest
    lo99, hi99 = den.intervals(frame, level=0.99)
    cov99, _ = _coverage(lo99, hi99, clean, after, den.features)
    assert cov99 >= cov
    a, b = lo99[den.features].to_numpy(), lower[den.features].to_numpy()
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert (a[banded] < b[banded]).all()


def test_intervals_of_every_candidate_nest_the_mean_and_refuse_a_bad_level(sweep):
    """Default candidates (the learned heads' divergences probed where not exact): the band
    holds transform's value wherever it exists; a level outside (0, 1) is refused."""
    frame, _ = make_small_panel(n_rows=600)
    den = Denoiser.from_run(sweep["root"] / "causal")
    mean = den.transform(frame)
    lower, upper = den.intervals(frame)
    m, lo, hi = (t[den.features].to_numpy() for t in (mean, lower, upper))
    ok = np.isfinite(lo)
    assert ok.any() and (lo[ok] <= m[ok]).all() and (m[ok] <= hi[ok]).all()
    again = Denoiser.from_run(sweep["root"] / "causal")
    lo2, _ = again.intervals(frame)  # decisions fitted by intervals itself: the same bands
    pd.testing.assert_frame_equal(lo2, lower, check_exact=True)
    with pytest.raises(ConfigError, match="level=1.5"):
        den.intervals(frame, level=1.5)
