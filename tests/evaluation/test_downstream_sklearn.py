"""The downstream folds and designs through scikit-learn give exactly what the hand-written
versions they replaced gave (kept here as the references)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Lasso, RidgeCV
from sklearn.preprocessing import StandardScaler

from mamba_denoiser.evaluation.downstream import (
    RIDGE_ALPHAS,
    design_pipeline,
    purged_walk_forward_splits,
)


def reference_splits(n_rows, *, n_splits, embargo, horizon, test_size=None, min_train=252):
    """The hand-written purged walk-forward folds (before TimeSeriesSplit)."""
    test_size = n_rows // (n_splits + 1) if test_size is None else int(test_size)
    first = n_rows - n_splits * test_size
    if test_size < 1 or first < 0:
        raise ValueError("do not fit")
    splits = []
    for k in range(n_splits):
        a = first + k * test_size
        stop = min(a - embargo, a - horizon + 1)  # train rows are 0..stop-1
        if stop < min_train:
            raise ValueError(f"fold {k}")
        splits.append((np.arange(stop), np.arange(a, a + test_size)))
    return splits


def reference_design(train_x, test_x):
    """The hand-written ridge design (before the Pipeline)."""
    has_obs = np.isfinite(train_x).any(axis=0)
    train_x, test_x = train_x[:, has_obs], test_x[:, has_obs]
    median = np.nanmedian(train_x, axis=0)
    low, high = np.nanmin(train_x, axis=0), np.nanmax(train_x, axis=0)
    gaps = ~np.isfinite(train_x).all(axis=0)

    def design(x):
        miss = ~np.isfinite(x)
        filled = np.clip(np.where(miss, median, x), low, high)
        return np.hstack([filled, miss[:, gaps].astype(np.float64)])

    scaler = StandardScaler().fit(design(train_x))
    return scaler.transform(design(train_x)), scaler.transform(design(test_x))


SETTINGS = list(
    itertools.product(
        [700, 1000, 2500, 9000],  # rows
        [1, 2, 3, 5, 8],  # n_splits
        [0, 1, 20, 60],  # embargo
        [1, 2, 5, 90],  # horizon
        [None, 20, 97, 400],  # test_size
        [1, 252],  # min_train
    )
)


def test_timeseriessplit_folds_equal_the_hand_written_ones_over_many_settings():
    compared = refused = 0
    for n, k, emb, h, ts, mt in SETTINGS:
        kw = dict(n_splits=k, embargo=emb, horizon=h, test_size=ts, min_train=mt)
        try:
            want = reference_splits(n, **kw)
        except ValueError:
            with pytest.raises(ValueError):
                purged_walk_forward_splits(n, **kw)
            refused += 1
            continue
        got = purged_walk_forward_splits(n, **kw)
        assert len(got) == len(want), kw
        for g, (train, test) in zip(got, want):
            assert g.train.dtype == train.dtype and np.array_equal(g.train, train), (n, kw)
            assert np.array_equal(g.test, test), (n, kw)
        compared += 1
    assert compared > 1000 and refused > 100  # both branches are exercised


def _panel(rng, n=600, f=9):
    x = rng.normal(size=(n, f)).cumsum(axis=0)
    x[: rng.integers(50, 300), 0] = np.nan  # history starts late
    x[rng.random((n, f)) < 0.1] = np.nan  # scattered gaps
    x[:400, 1] = np.nan  # no observed train row: dropped for the fold
    x[:, 2] = 3.0  # constant
    x[rng.random(n) < 0.3, 2] = np.nan  # constant with gaps
    x[:, 3] = np.round(x[:, 3])  # ties for the median
    return x


@pytest.mark.parametrize("seed", range(6))
def test_the_design_pipeline_equals_the_hand_written_ridge_design_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    x = _panel(rng)
    y = x[:, 4] * 0.01 + rng.normal(size=len(x))
    y = np.nan_to_num(y)
    train, test = np.arange(400), np.arange(420, 600)
    xtr, xte = reference_design(x[train], x[test])
    pipe = design_pipeline(RidgeCV(alphas=RIDGE_ALPHAS)).fit(x[train], y[train])
    assert np.array_equal(pipe[:-1].transform(x[test]), xte)
    assert np.array_equal(pipe[:-1].transform(x[train]), xtr)
    want = RidgeCV(alphas=RIDGE_ALPHAS).fit(xtr, y[train]).predict(xte)
    assert np.array_equal(pipe.predict(x[test]), want)
    # any other estimator gets the same design
    lasso = design_pipeline(Lasso(alpha=1e-3)).fit(x[train], y[train])
    assert np.array_equal(lasso.predict(x[test]), Lasso(alpha=1e-3).fit(xtr, y[train]).predict(xte))


def test_gradient_boosting_keeps_its_native_nan_handling_on_the_observed_columns():
    rng = np.random.default_rng(1)
    x = _panel(rng)
    y = rng.normal(size=len(x))
    train, test = np.arange(400), np.arange(420, 600)
    keep = np.isfinite(x[train]).any(axis=0)

    def hgb():
        return HistGradientBoostingRegressor(max_iter=20, random_state=0)

    pipe = design_pipeline(hgb()).fit(x[train], y[train])
    want = hgb().fit(x[train][:, keep], y[train]).predict(x[test][:, keep])
    assert np.array_equal(pipe.predict(x[test]), want)
    assert [name for name, _ in pipe.steps] == ["observed", "model"]
