"""Leakage checks: they must pass causal outputs and trip on look-ahead ones."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from mamba_denoiser.evaluation.baselines import fit_baseline
from mamba_denoiser.evaluation.leakage import (
    LOOKAHEAD_T,
    LeakageError,
    check_future_perturbation,
    check_lookahead,
    check_no_targets,
    lookahead_tstats,
)

N = 3000


def _ema(y, a):
    return pd.DataFrame(y).ewm(alpha=a, adjust=False).mean().to_numpy().reshape(np.shape(y))


def _centred(y, m):
    frame = pd.DataFrame(y).rolling(2 * m + 1, center=True, min_periods=1).mean()
    return frame.to_numpy().reshape(np.shape(y))


def _noisy(kind, seed):
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(N)
    clean = {
        "random_walk": np.cumsum(e),
        "ou": lfilter([1.0], [1.0, -0.9], e),
        "trend": np.cumsum(lfilter([1.0], [1.0, -0.95], e)),
        "white": e,
    }[kind]
    noise_sd = 0.5 * np.std(np.diff(clean))
    return clean + noise_sd * rng.standard_t(5, N)  # heavy-tailed observation noise


KINDS = ["random_walk", "ou", "trend", "white"]


def test_perturbation_check_passes_causal_and_catches_look_ahead():
    rng = np.random.default_rng(0)
    panel = np.cumsum(rng.standard_normal((500, 3)), axis=0)
    panel[:50, 1] = np.nan
    check_future_perturbation(lambda x: _ema(x, 0.1), panel)  # causal: silent
    with pytest.raises(LeakageError, match="looks ahead"):
        check_future_perturbation(lambda x: _centred(x, 3), panel)
    # The classic leak: standardising with full-sample statistics.
    with pytest.raises(LeakageError, match="row 0"):
        check_future_perturbation(lambda x: (x - np.nanmean(x, 0)) / np.nanstd(x, 0), panel)
    with pytest.raises(ValueError, match="rows"):
        check_future_perturbation(lambda x: x[:-1], panel)


@pytest.mark.parametrize("kind", KINDS)
def test_lookahead_statistic_passes_causal_filters(kind):
    y = _noisy(kind, seed=1)
    outputs = np.column_stack([y, _ema(y, 0.5), _ema(y, 0.1), _ema(y, 0.02)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kalman = fit_baseline("kalman_level", y, (0, 2000))
    outputs = np.column_stack([outputs, kalman.causal(y)])
    table = check_lookahead(np.tile(y[:, None], 5), outputs)  # raises if any is flagged
    assert (table["max_abs_t"] < 3.5).all(), table  # well inside the null, not just < 5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m", [2, 10])
def test_lookahead_statistic_trips_on_centred_averages(kind, m):
    y = _noisy(kind, seed=2)
    t = lookahead_tstats(y, _centred(y, m))
    assert np.nanmax(np.abs(t)) > 1.5 * LOOKAHEAD_T
    with pytest.raises(LeakageError, match="col1"):
        check_lookahead(np.column_stack([y, y]), np.column_stack([_ema(y, 0.1), _centred(y, m)]))


def test_lookahead_catches_a_two_sided_kalman_smoother():
    y = _noisy("random_walk", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smoother = fit_baseline("kalman_level", y, (0, 2000)).two_sided(y)
    table = check_lookahead(y, smoother, names=["x"], raise_on_fail=False)
    assert bool(table.loc["x", "flagged"]) and table.loc["x", "worst_h"] == 1
    assert table.loc["x", "chi2_p"] < 1e-12


def test_lookahead_handles_missing_history_and_empty_columns():
    y = _noisy("ou", seed=4)
    y[:1000] = np.nan
    empty = np.full(N, np.nan)
    table = check_lookahead(np.column_stack([y, empty]), np.column_stack([_ema(y, 0.2), empty]))
    assert not table["flagged"].any()
    assert np.isfinite(table["max_abs_t"].iloc[0]) and np.isnan(table["max_abs_t"].iloc[1])


def test_targets_are_never_features():
    check_no_targets(["M1", "E2"])
    with pytest.raises(LeakageError, match="forward_returns"):
        check_no_targets(["M1", "forward_returns"])
