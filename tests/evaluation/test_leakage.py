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
    check_lookahead_panel,
    check_no_targets,
    describe_pooled,
    inject_lookahead,
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


@pytest.fixture(scope="module")
def builtin_panel():
    """(raw, honest causal output) of the built-in default panel's continuous features:
    the raw series passed through (the hardest case for a small leak: its changes are as
    large as the innovations) and a fixed-weight causal EMA on every column."""
    from mamba_denoiser.data.synthetic import make_synthetic_panel

    panel = make_synthetic_panel()  # the built-in default data (9000 rows, noise_scale 1)
    raw = panel.frame[panel.continuous_columns].to_numpy(dtype=np.float64)  # (T, 85)
    ema = np.where(np.isnan(raw), np.nan, pd.DataFrame(raw).ewm(alpha=0.5).mean().to_numpy())
    return raw, ema


@pytest.mark.slow
def test_null_calibrated_check_passes_honest_causal_outputs(builtin_panel):
    raw, ema = builtin_panel
    for out in (raw, ema):
        table, pooled = check_lookahead_panel(raw, out)  # raises on a flag
        assert not table["flagged"].any() and not pooled["flagged"]
        assert pooled["n_features"] == raw.shape[1]
    # the null scale is the N(0, 1) of the theory, up to sampling error, for the EMA
    table, _ = check_lookahead_panel(raw, ema)
    assert 0.7 < table["null_rms"].median() < 1.3


@pytest.mark.slow
@pytest.mark.parametrize("which", ["raw", "ema"])
def test_a_two_percent_one_step_look_ahead_is_stopped_on_the_builtin_panel(builtin_panel, which):
    raw, ema = builtin_panel
    honest = raw if which == "raw" else ema
    leaked = inject_lookahead(honest, raw, weight=0.02)
    # small enough to hide in every single feature of the raw pass-through ...
    table, pooled = check_lookahead_panel(raw, leaked, raise_on_fail=False)
    if which == "raw":
        assert table["max_abs_z"].max() < LOOKAHEAD_T
    # ... and still stopped by the pooled statistic
    assert pooled["flagged"] and pooled["worst_h"] == 1
    with pytest.raises(LeakageError, match="looks ahead"):
        check_lookahead_panel(raw, leaked)
    assert "pooled |z|" in describe_pooled(pooled)


def test_a_centred_filter_is_stopped_by_the_calibrated_check(builtin_panel):
    raw, _ = builtin_panel
    centred = np.where(np.isnan(raw), np.nan, _centred(raw, 2))
    table, pooled = check_lookahead_panel(raw, centred, raise_on_fail=False)
    assert pooled["flagged"] and table["flagged"].mean() > 0.9


def test_perturbation_check_reuses_a_given_base():
    y = _noisy("ou", 0)
    calls = []

    def fn(x):
        calls.append(1)
        return _ema(x, 0.3)

    check_future_perturbation(fn, y, cuts=[100, 2000], base=_ema(y, 0.3))
    assert len(calls) == 2  # the cuts only: the unperturbed output was given
    with pytest.raises(LeakageError):  # a wrong base is a failure, not silently ignored
        check_future_perturbation(fn, y, cuts=[100], base=_ema(y, 0.31))


def test_evaluate_stops_on_look_ahead_unless_the_exact_test_passed(caplog):
    """evaluate.py's policy: the linear statistic stops a run, except for an output whose
    causal path passed the exact future-perturbation test; then it is reported and said
    why (a nonlinear causal filter may predict linear innovations)."""
    from mamba_denoiser.evaluation.leakage import lookahead_check as _lookahead_check

    rng = np.random.default_rng(0)
    raw = np.cumsum(rng.standard_normal((3000, 4)), axis=0) + rng.standard_normal((3000, 4))
    leaky = inject_lookahead(raw, raw, weight=0.3)
    names = ["a", "b", "c", "d"]
    with pytest.raises(LeakageError, match="^m: the output predicts future raw innovations"):
        _lookahead_check(raw, leaky, names, "m", exact_passed=False)
    text = _lookahead_check(raw, leaky, names, "m", exact_passed=True)
    assert "ABOVE the threshold" in text and "exact future-perturbation test" in text
    assert "ABOVE" not in _lookahead_check(raw, raw, names, "raw copy", exact_passed=False)
