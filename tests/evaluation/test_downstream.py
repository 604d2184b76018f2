"""Purged walk-forward forecasting of the raw target: splits, honesty, positions, metrics."""

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.evaluation.downstream import (
    position_from_prediction,
    purged_walk_forward_splits,
    run_downstream,
    score_predictions,
    walk_forward_predict,
)
from mamba_denoiser.evaluation.leakage import LeakageError
from mamba_denoiser.evaluation.metrics import adjusted_sharpe

N = 1500


def _data(n=N, seed=0):
    """Features with missing history; the target loads on two of them (R^2 ~ 20 %)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    fwd = 0.0005 + 0.004 * (x[:, 0] - 0.5 * x[:, 1]) + 0.01 * rng.standard_normal(n)
    features = pd.DataFrame(x, columns=["A", "B", "C", "D"])
    features.loc[: n // 3, "C"] = np.nan  # late starter
    features.loc[[700, 900], "A"] = np.nan  # interior gaps
    rf = np.full(n, 1e-4)
    return features, fwd, rf


@pytest.mark.parametrize("embargo,horizon", [(60, 1), (0, 10), (5, 20)])
def test_splits_are_chronological_purged_and_embargoed(embargo, horizon):
    splits = purged_walk_forward_splits(3000, n_splits=4, embargo=embargo, horizon=horizon)
    assert len(splits) == 4
    assert splits[-1].test[-1] == 2999  # test blocks run to the end
    for k, s in enumerate(splits):
        a = s.test[0]
        np.testing.assert_array_equal(s.test, np.arange(a, a + len(s.test)))  # contiguous
        assert s.train[0] == 0 and np.all(np.diff(s.train) == 1)
        # No training row within the embargo of any test row ...
        assert a - s.train.max() > embargo
        assert np.abs(s.train[:, None] - s.test[None, :]).min() > embargo
        # ... and no training target (rows i+1..i+horizon) reaching into the test block.
        assert s.train.max() + horizon <= a
        assert s.train.max() == a - max(embargo + 1, horizon)  # nothing more is dropped
        if k:
            prev = splits[k - 1]
            assert a == prev.test[-1] + 1  # consecutive blocks, in time order
            assert len(s.train) > len(prev.train)  # expanding window


def test_splits_refuse_too_little_training_data():
    with pytest.raises(ValueError, match="train rows"):
        purged_walk_forward_splits(600, n_splits=5, embargo=60)
    with pytest.raises(ValueError, match="do not fit"):
        purged_walk_forward_splits(100, n_splits=5, test_size=30, min_train=1)


def test_predictions_are_out_of_sample_and_land_on_the_right_rows():
    features, fwd, _ = _data()
    splits = purged_walk_forward_splits(N, n_splits=3, embargo=20)
    oos = walk_forward_predict(features, fwd, splits)
    preds = oos.predictions
    tested = np.concatenate([s.test for s in splits])
    assert list(preds.columns) == ["ridge", "hgb"]
    assert preds.iloc[tested].notna().all().all()
    assert preds.drop(index=tested).isna().all().all()
    np.testing.assert_array_equal(oos.fold[tested], np.repeat([0, 1, 2], len(splits[0].test)))
    assert (np.delete(oos.fold, tested) == -1).all()
    # The signal is real, so both models find it out of sample (row alignment is right).
    for name in preds:
        assert np.corrcoef(preds[name].iloc[tested], fwd[tested])[0, 1] > 0.25


def test_fold_predictions_ignore_test_targets_and_everything_later():
    features, fwd, _ = _data()
    splits = purged_walk_forward_splits(N, n_splits=3, embargo=20)
    base = walk_forward_predict(features, fwd, splits).predictions
    k = 1
    block = splits[k].test
    rng = np.random.default_rng(9)
    fwd2 = fwd.copy()
    fwd2[block[0] :] = rng.standard_normal(N - block[0])  # the block's targets and later
    feats2 = features.copy()
    feats2.iloc[block[-1] + 1 :] = rng.standard_normal((N - block[-1] - 1, 4))  # later rows
    moved = walk_forward_predict(feats2, fwd2, splits).predictions
    upto = block[-1] + 1
    pd.testing.assert_frame_equal(base.iloc[:upto], moved.iloc[:upto])


def test_targets_in_features_raise():
    features, fwd, _ = _data()
    splits = purged_walk_forward_splits(N, n_splits=3, embargo=20)
    with pytest.raises(LeakageError, match="forward_returns"):
        walk_forward_predict(features.assign(forward_returns=fwd), fwd, splits)
    with pytest.raises(ValueError, match="unknown model"):
        walk_forward_predict(features, fwd, splits, models=["lasso"])


def test_position_uses_past_predictions_only():
    rng = np.random.default_rng(4)
    pred = rng.standard_normal(300) * 0.002
    pred[:50] = np.nan  # no prediction outside the test blocks
    pos = position_from_prediction(pred, k=0.5, min_periods=20)
    assert np.isnan(pos[:50]).all()
    assert (pos[50:70] == 1.0).all()  # fewer than 20 earlier predictions: the market
    t = 150
    expected = np.clip(1 + 0.5 * pred[t] / np.std(pred[50:t], ddof=1), 0, 2)
    assert pos[t] == pytest.approx(expected)
    assert np.nanmin(pos) >= 0 and np.nanmax(pos) <= 2
    big = position_from_prediction(np.r_[np.full(30, 0.001), -0.001, 1.0], min_periods=20)
    assert big[-1] == 2.0  # clipped
    later = pred.copy()
    later[t + 1 :] = 100.0
    np.testing.assert_array_equal(position_from_prediction(later)[: t + 1], pos[: t + 1])


def test_scores_and_end_to_end_run():
    features, fwd, rf = _data()
    result = run_downstream(features, fwd, rf, n_splits=3, embargo=20)
    table = result.metrics
    assert list(table.index) == ["ridge", "hgb", "market"]
    for name in ("ridge", "hgb"):
        row = table.loc[name]
        assert row.ic_mean > 0.25 and row.rank_ic_mean > 0.25 and row.ic_t > 3
        assert row.hit_rate > 0.55 and row.r2 > 0.05
        assert row.adjusted_sharpe > table.loc["market", "adjusted_sharpe"]
    tested = result.predictions.fold >= 0
    market = adjusted_sharpe(np.ones(int(tested.sum())), fwd[tested], rf[tested])
    assert table.loc["market", "adjusted_sharpe"] == pytest.approx(market.score)
    again = run_downstream(features, fwd, rf, n_splits=3, embargo=20)
    pd.testing.assert_frame_equal(table, again.metrics)  # deterministic (seeded trees)
    # k = 0: always the market, whatever the prediction.
    flat = score_predictions(result.predictions, fwd, rf, k=0.0)
    assert flat.loc["ridge", "adjusted_sharpe"] == pytest.approx(market.score)


# ---- your own forecaster: any scikit-learn-style estimator ------------------------------


def test_custom_estimators_are_cloned_per_fold_and_named_by_class():
    from sklearn.linear_model import Lasso, LinearRegression

    features, fwd, rf = _data()
    proto = Lasso(alpha=1e-4)
    result = run_downstream(
        features,
        fwd,
        rf,
        n_splits=3,
        embargo=20,
        models=["ridge", proto, ("ols", LinearRegression)],
    )
    table = result.metrics
    assert list(table.index) == ["ridge", "Lasso", "ols", "market"]
    assert not hasattr(proto, "coef_")  # the given object is a prototype, never fitted
    tested = result.predictions.fold >= 0
    assert result.predictions.predictions.loc[tested].notna().all().all()
    for name in ("Lasso", "ols"):  # NaN-free design: the gaps in A and C are no problem
        assert table.loc[name, "ic_mean"] > 0.25


def test_bad_custom_models_fail_before_fitting():
    from sklearn.linear_model import Lasso

    features, fwd, _ = _data()
    splits = purged_walk_forward_splits(N, n_splits=3, embargo=20)
    with pytest.raises(ValueError, match="two models named 'Lasso'"):
        walk_forward_predict(features, fwd, splits, models=[Lasso(), Lasso(alpha=2)])
    with pytest.raises(ValueError, match="fit"):
        walk_forward_predict(features, fwd, splits, models=[object()])
    with pytest.raises(ValueError, match="market"):
        walk_forward_predict(features, fwd, splits, models=[("market", Lasso())])


def _tiny_panel(n=N):
    from types import SimpleNamespace

    features, fwd, rf = _data(n)
    frame = features.assign(forward_returns=fwd, risk_free_rate=rf)
    frame.insert(0, "date_id", np.arange(n))
    test0 = int(n * 0.6)
    return SimpleNamespace(
        frame=frame,
        id_col="date_id",
        targets=["forward_returns", "risk_free_rate"],
        n_rows=n,
        bounds={"train": (0, int(n * 0.4)), "val": (int(n * 0.4), test0), "test": (test0, n)},
        split=SimpleNamespace(embargo=20),
    )


def _evaluate_cfg(models_override: str):
    """conf/evaluate.yaml's downstream block with a command-line downstream.models=..."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose("evaluate", overrides=[models_override, "downstream.n_splits=2"])
    return cfg


def test_a_target_estimator_from_the_command_line_gives_rows_in_the_downstream_table():
    from mamba_denoiser.evaluate_job import _downstream

    cfg = _evaluate_cfg(
        "downstream.models=[ridge,{_target_: sklearn.linear_model.Lasso, alpha: 0.0001},"
        "{_target_: sklearn.linear_model.Lasso, alpha: 0.01, name: lasso_strong}]"
    )
    panel = _tiny_panel()
    names = ["A", "B", "C", "D"]
    raw = panel.frame[names].to_numpy()
    table, curves = _downstream(cfg, panel, names, {"raw": raw, "denoised": raw * 1.0})
    for s in ("raw", "denoised"):
        rows = table[table["features"] == s].set_index("model")
        assert list(rows.index) == ["ridge", "Lasso", "lasso_strong"]
        assert rows.loc["Lasso", "ic_mean"] > 0.25 and rows.loc["Lasso", "n_rows"] > 0
    assert list(table["model"]).count("market") == 1
    assert "raw (ridge)" in curves  # the first model drives the curves


@pytest.mark.parametrize(
    "override, match",
    [
        ("downstream.models=[ridge,{_target_: sklearn.linear_model.NoSuchModel}]", "NoSuchModel"),
        ("downstream.models=[{_target_: sklearn.linear_model.Lasso, alhpa: 1}]", "alhpa"),
        ("downstream.models=[ridge,lasso]", "lasso"),
        ("downstream.models=[{_target_: collections.OrderedDict}]", "fit"),
    ],
)
def test_a_bad_model_option_is_one_line_naming_it(override, match):
    from mamba_denoiser.errors import ConfigError
    from mamba_denoiser.evaluate_job import _downstream

    cfg = _evaluate_cfg(override)
    panel = _tiny_panel()
    raw = panel.frame[["A", "B", "C", "D"]].to_numpy()
    with pytest.raises(ConfigError, match=match) as err:
        _downstream(cfg, panel, ["A", "B", "C", "D"], {"raw": raw})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("downstream.models[")
