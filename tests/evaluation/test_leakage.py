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
    linear_innovations,
    lookahead_check,
    lookahead_tstats,
    serves_linearly,
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


@pytest.fixture(scope="module")
def outlier_panel():
    """(raw, train rows, honest robust filter, honest Kalman filter, nonlinear innovations)
    of four noisy series with outlier noise (5 % of cells at 10x the Gaussian noise): the
    case where a nonlinear causal filter legitimately predicts the linear innovations."""
    from mamba_denoiser.classical import kalman_filters, state_space_fits
    from mamba_denoiser.evaluation.leakage import nonlinear_innovations
    from mamba_denoiser.robust import apply_robust, fit_robust

    rng = np.random.default_rng(5)
    n, train = 3000, (0, 2100)
    e = rng.standard_normal((n, 4))
    clean = np.column_stack(
        [
            np.cumsum(e[:, 0]),
            np.cumsum(lfilter([1.0], [1.0, -0.9], e[:, 1])) * 0.3,
            lfilter([1.0], [1.0, -0.98], e[:, 2]),
            np.cumsum(e[:, 3]),
        ]
    )
    noise = 2.0 * rng.standard_normal((n, 4))
    noise += (rng.random((n, 4)) < 0.05) * rng.choice([-20.0, 20.0], (n, 4))
    raw = clean + noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        robust = apply_robust(raw, *fit_robust(raw, train))
        kalman = kalman_filters(state_space_fits(raw, train), raw)[0]
    return raw, train, robust, kalman, nonlinear_innovations(raw, train)


def test_nonlinear_statistic_passes_an_honest_robust_filter_the_linear_one_flags(outlier_panel):
    """Why the statistic goes by the serving candidate's class: the honest Gaussian-sum
    filter predicts the outlier-contaminated series' LINEAR innovations (the linear
    statistic stops it), not the innovations of a nonlinear predictor fitted on the train
    rows (the nonlinear statistic passes it); the honest Kalman filter passes both."""
    raw, _, robust, kalman, innov = outlier_panel
    _, lin = check_lookahead_panel(raw, robust, raise_on_fail=False)
    assert lin["flagged"] and lin["worst_h"] == 1
    table, nonlin = check_lookahead_panel(raw, robust, innovations=innov)  # raises on a flag
    assert nonlin["max_abs_z"] < LOOKAHEAD_T / 2 and not table["flagged"].any()
    for inn in (None, innov):
        _, p = check_lookahead_panel(raw, kalman, innovations=inn)
        assert p["max_abs_z"] < LOOKAHEAD_T / 2


def test_nonlinear_statistic_catches_a_two_percent_look_ahead_of_the_robust_filter(outlier_panel):
    raw, _, robust, _, innov = outlier_panel
    leaked = inject_lookahead(robust, raw, weight=0.02)
    _, pooled = check_lookahead_panel(raw, leaked, innovations=innov, raise_on_fail=False)
    assert pooled["flagged"] and pooled["worst_h"] == 1
    # evaluate.py's policy: a robust-served output is no longer exempt; it stops the run
    with pytest.raises(LeakageError, match="served by nonlinear candidates"):
        lookahead_check(raw, leaked, list("abcd"), "m: robust alone", False, innov)
    lines = lookahead_check(raw, robust, list("abcd"), "m: robust alone", False, lambda: innov)
    assert len(lines) == 1 and "nonlinear statistic" in lines[0]


def test_each_feature_gets_the_statistic_of_the_candidate_serving_it(outlier_panel):
    """A mix: features 1-3 served by the robust filter (honest), feature 0 by the Kalman
    filter with 10 % of the next raw row mixed in. The linear statistic on feature 0
    stops it; the honest robust features pass their own (nonlinear) statistic, though the
    linear one would stop them."""
    raw, _, robust, kalman, innov = outlier_panel
    mix = robust.copy()
    mix[:, 0] = inject_lookahead(kalman[:, :1], raw[:, :1], weight=0.1)[:, 0]
    classes = [True, False, False, False]
    with pytest.raises(LeakageError, match=r"1 feature\(s\) served by linear candidates"):
        lookahead_check(raw, mix, list("abcd"), "mix", classes, innov)
    honest = robust.copy()
    honest[:, 0] = kalman[:, 0]
    lines = lookahead_check(raw, honest, list("abcd"), "mix", classes, innov)
    assert [("(linear statistic" in x, "(nonlinear statistic" in x) for x in lines] == [
        (True, False),
        (False, True),
    ]
    with pytest.raises(LeakageError):  # routed by the wrong class, the honest mix stops
        lookahead_check(raw, honest, list("abcd"), "mix", True, innov)


def test_serving_class_of_each_candidate():
    from mamba_denoiser.evaluation.leakage import serves_linearly

    for name in ("kalman", "combiner", "raw", None, "ema", "kalman_level"):
        assert serves_linearly(name), name
    for name in ("robust", "predictive", "diffusion@t=40", "sdedit@t=10"):
        assert not serves_linearly(name), name


def test_evaluate_routes_each_output_feature_by_its_serving_candidate():
    from types import SimpleNamespace as NS

    from mamba_denoiser.evaluate_job import ANCHOR, _served_by
    from mamba_denoiser.evaluation.leakage import serves_group

    feats = {
        "a": {"chosen": "kalman"},
        "b": {"chosen": "diffusion@t=20"},
        "c": {"chosen": "raw"},
        "d": {"chosen": "combiner"},
    }
    res = NS(
        den={"m": NS(clusters={0: NS(info={"features": feats})})},
        anchor=NS(choice=["robust", "ema", "raw", "kalman_ar1"]),
    )
    names = ["a", "b", "c", "d"]

    def classes(key):
        return [(serves_linearly(c), serves_group(c)) for c in _served_by(res, key, names)]

    lin, grp, nonlin, net = (True, False), (True, True), (False, False), (False, True)
    assert classes("m") == [lin, net, lin, grp]  # the networks read the whole cluster
    assert classes("m: predictive alone") == [net] * 4
    assert classes("m: kalman alone") == [lin] * 4
    assert classes("m: combiner alone") == [grp] * 4
    assert classes("m: robust alone") == [nonlin] * 4
    assert classes(ANCHOR) == [nonlin, lin, lin, lin]


def test_evaluate_stops_on_look_ahead_whatever_class_serves_the_output():
    """evaluate.py's policy: no exemption (it used to report, not stop, an output whose
    causal path passed the exact perturbation test): each class's statistic stops it."""
    from mamba_denoiser.evaluation.leakage import nonlinear_innovations

    rng = np.random.default_rng(0)
    raw = np.cumsum(rng.standard_normal((3000, 4)), axis=0) + rng.standard_normal((3000, 4))
    leaky = inject_lookahead(raw, raw, weight=0.3)
    names = ["a", "b", "c", "d"]
    innov = nonlinear_innovations(raw, (0, 2100))
    for linear in (True, False):
        with pytest.raises(LeakageError, match="^m, 4 feature.*predicts future raw innov"):
            lookahead_check(raw, leaky, names, "m", linear, innov)
    assert all("pooled |z|" in x for x in lookahead_check(raw, raw, names, "raw", False, innov))
    with pytest.raises(ValueError, match="need the innovations"):
        lookahead_check(raw, raw, names, "m", False)


def test_a_nonlinear_feature_flag_is_reported_where_the_exact_tests_covered_the_path(
    outlier_panel,
):
    """The nonlinear statistic's per-feature null is approximate, so for an output whose
    causal path passed the exact perturbation tests (``exact``) a single feature above the
    threshold is reported, not stopped; without ``exact`` it stops the run, and a pooled
    excess stops it either way. Built here: +6 % and −6 % of the next raw row in features
    1 and 2 (each flagged alone; their pooled sum cancels)."""
    raw, _, robust, _, innov = outlier_panel
    out = robust.copy()
    out[:, 1] = inject_lookahead(robust[:, 1:2], raw[:, 1:2], weight=0.06)[:, 0]
    out[:, 2] = inject_lookahead(robust[:, 2:3], raw[:, 2:3], weight=-0.06)[:, 0]
    tab, pooled = check_lookahead_panel(raw, out, innovations=innov, raise_on_fail=False)
    assert tab["flagged"].iloc[1] and tab["flagged"].iloc[2] and not pooled["flagged"]
    names = list("abcd")
    with pytest.raises(LeakageError):
        lookahead_check(raw, out, names, "m: robust alone", False, innov)
    (line,) = lookahead_check(raw, out, names, "m: robust alone", False, innov, exact=True)
    assert "ABOVE the threshold (2 feature(s): b |z|=" in line and "not stopped" in line
    leaked = inject_lookahead(robust, raw, weight=0.02)
    with pytest.raises(LeakageError, match="pooled"):
        lookahead_check(raw, leaked, names, "m: robust alone", False, innov, exact=True)


def test_a_group_filter_on_shared_factors_passes_once_the_factors_past_is_removed():
    """Eight AR(1) features sharing one factor (90 % of their variance), heavy noise. An
    honest causal filter that pools the group (each feature's own Kalman-like EWMA plus the
    cross-sectional mean of the current rows) predicts every feature's OWN-history
    innovations, so the statistic on own-AR innovations stops it; against innovations that
    also remove the panel's past (``cross_section``: half the panel's width of components)
    it passes, and a 2 % one-row look-ahead is still caught and stops the run."""
    from mamba_denoiser.evaluation.leakage import cross_section

    rng = np.random.default_rng(11)
    n, F, phi = 4000, 8, 0.97
    f = lfilter([1.0], [1.0, -phi], rng.standard_normal(n) * np.sqrt(1 - phi**2))
    own = lfilter([1.0], [1.0, -phi], rng.standard_normal((n, F)), axis=0) * np.sqrt(1 - phi**2)
    s = np.sqrt(0.9) * f[:, None] + np.sqrt(0.1) * own
    y = s + 1.5 * rng.standard_normal((n, F))
    pooled = lfilter([0.1], [1.0, -0.9], y.mean(1))  # the group's causal level
    d = 0.5 * lfilter([0.1], [1.0, -0.9], y, axis=0) + 0.5 * pooled[:, None]
    _, own_ar = check_lookahead_panel(y, d, raise_on_fail=False)
    cross = cross_section(y, (0, 2800))
    _, with_cross = check_lookahead_panel(y, d, raise_on_fail=False, cross=cross)
    assert own_ar["flagged"] and not with_cross["flagged"], (own_ar, with_cross)
    leaked = inject_lookahead(d, y, weight=0.02)
    _, caught = check_lookahead_panel(y, leaked, raise_on_fail=False, cross=cross)
    assert caught["flagged"] and caught["worst_h"] == 1
    # the group linear class has the linear statistic's strict rule: against the panel's
    # past the honest group filter passes and the leak stops the run, even where the
    # exact tests covered the path (no leniency, unlike the nonlinear classes)
    names = [f"f{j}" for j in range(F)]
    lin = linear_innovations(y, cross)
    kw = dict(linear_innov=lin, group=True)
    (line,) = lookahead_check(y, d, names, "m: combiner alone", True, **kw)
    assert "group (multivariate) linear candidates" in line and "ABOVE" not in line
    for exact in (True, False):
        with pytest.raises(LeakageError, match="predicts future raw innov"):
            lookahead_check(y, leaked, names, "m: combiner alone", True, exact=exact, **kw)
    with pytest.raises(LeakageError):  # own-AR innovations alone: stopped, exact or not
        lookahead_check(y, d, names, "m: combiner alone", True, exact=True, group=True)
