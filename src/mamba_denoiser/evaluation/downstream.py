"""Downstream test: do (denoised) features forecast the RAW target out of sample?

Public API::

    splits = purged_walk_forward_splits(n_rows, n_splits=5, embargo=60, horizon=1)
    oos = walk_forward_predict(features, target, splits, models=("ridge", "hgb"))
    oos = walk_forward_predict(features, target, splits, models=["ridge", Lasso(alpha=1e-4)])
    position = position_from_prediction(pred, k=0.5)
    table = score_predictions(oos, forward_returns, risk_free_rate)
    result = run_downstream(features, forward_returns, risk_free_rate)  # all of the above

Honesty rules (docs/design.md "Honesty rules", "Evaluation"):

* Purged walk-forward splits: ``n_splits`` chronological test blocks at the end of the
  sample; each fold trains on all rows before its block (expanding window) except the
  last ``embargo`` rows before it, and except rows whose target horizon reaches into the
  block (row i's target is realised over rows i+1..i+horizon, so it is kept only if
  i + horizon <= first test row). Nothing after a test block ever trains its model.
* Everything fitted (imputation medians, scaler, ridge penalty, trees) sees the fold's
  train rows only. Features are NaN-aware without future information: ridge gets the
  train median plus a missing-indicator per column with train gaps, and values clipped
  to the train range (no linear extrapolation of drifting levels); the tree model uses
  its native NaN handling. Columns with no observed train row are dropped for the fold.
* Any other scikit-learn-style estimator (``fit(X, y)``, ``predict(X)``) may be given
  beside the names "ridge" and "hgb": an unfitted estimator (``sklearn.base.clone``-d
  afresh for every fold), a class or zero-argument factory (called for every fold), or a
  ``(name, estimator)`` pair; it is named by its class unless named. It gets ridge's
  design (train medians, gap indicators, train-range clipping, train-fitted scaling),
  which every estimator accepts (no NaN); a HistGradientBoostingRegressor keeps its
  native NaN handling, as "hgb" does.
* The target is the raw ``forward_returns`` (never denoised); target columns among the
  features raise LeakageError.
* Positions use past information only: position_t = clip(1 + k * pred_t / s_{t-1}, 0, 2),
  s_{t-1} the standard deviation of the out-of-sample predictions made before row t
  (expanding; position 1 = the market until ``min_periods`` of them exist). pred_t
  itself uses features known at t, as the competition allows.

Metrics (``score_predictions``): IC and rank IC as mean and t-stat over periods of
``ic_period`` rows (yearly by default), R^2 against the test mean and against zero, hit
rate, the annualised Sharpe of the strategy's excess return, and the competition's
volatility-adjusted Sharpe, with the buy-and-hold market (position 1) alongside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from mamba_denoiser.evaluation.leakage import check_no_targets
from mamba_denoiser.evaluation.metrics import (
    adjusted_sharpe,
    hit_rate,
    information_coefficient,
    r2,
    sharpe,
)
from mamba_denoiser.vocabulary import TARGETS

MODELS = ("ridge", "hgb")
RIDGE_ALPHAS = tuple(np.logspace(-1, 5, 13))  # chosen per fold by efficient LOO (GCV)


@dataclass(frozen=True)
class Split:
    """Row indices of one walk-forward fold (sorted, train entirely before test)."""

    train: np.ndarray
    test: np.ndarray


def purged_walk_forward_splits(
    n_rows: int,
    *,
    n_splits: int = 5,
    embargo: int = 60,
    horizon: int = 1,
    test_size: int | None = None,
    min_train: int = 252,
) -> list[Split]:
    """Expanding-window walk-forward folds with purge and embargo.

    The last ``n_splits * test_size`` rows form the test blocks, in time order
    (test_size defaults to n_rows // (n_splits + 1)). Fold k trains on rows
    i < a_k - embargo with i + horizon <= a_k, a_k the first row of its block, so
    a_k - max(train) > embargo. Raises ValueError if a fold would train on fewer than
    ``min_train`` rows.
    """
    if n_splits < 1 or embargo < 0 or horizon < 1:
        raise ValueError(
            f"need n_splits >= 1, embargo >= 0, horizon >= 1; got {n_splits}, {embargo}, {horizon}"
        )
    test_size = n_rows // (n_splits + 1) if test_size is None else int(test_size)
    first = n_rows - n_splits * test_size
    if test_size < 1 or first < 0:
        raise ValueError(f"{n_splits} test blocks of {test_size} rows do not fit {n_rows} rows")
    splits = []
    for k in range(n_splits):
        a = first + k * test_size
        stop = min(a - embargo, a - horizon + 1)  # train rows are 0..stop-1
        if stop < min_train:
            raise ValueError(
                f"fold {k}: {max(stop, 0)} train rows before row {a} after embargo "
                f"{embargo} / horizon {horizon}, need >= {min_train}; use fewer or "
                f"smaller test blocks"
            )
        splits.append(Split(train=np.arange(stop), test=np.arange(a, a + test_size)))
    return splits


@dataclass
class OOSPredictions:
    """Out-of-sample predictions: one column per model, NaN outside the test blocks;
    ``fold`` (T,) is the fold of each row (-1 outside the test blocks)."""

    predictions: pd.DataFrame
    fold: np.ndarray


def _ridge_design(train_x: np.ndarray, test_x: np.ndarray):
    """Impute with train medians, add train-gap indicators, clip to the train range,
    standardise on train rows."""
    has_obs = np.isfinite(train_x).any(axis=0)
    train_x, test_x = train_x[:, has_obs], test_x[:, has_obs]
    median = np.nanmedian(train_x, axis=0)
    low, high = np.nanmin(train_x, axis=0), np.nanmax(train_x, axis=0)
    gaps = ~np.isfinite(train_x).all(axis=0)  # indicator only where train has gaps

    def design(x):
        miss = ~np.isfinite(x)
        # Clipping to the train range: a random-walk level drifts out of it in the test
        # block, and a linear model would extrapolate it into absurd forecasts (trees
        # saturate the same way by construction).
        filled = np.clip(np.where(miss, median, x), low, high)
        return np.hstack([filled, miss[:, gaps].astype(np.float64)])

    scaler = StandardScaler().fit(design(train_x))
    return scaler.transform(design(train_x)), scaler.transform(design(test_x))


def _make_model(name: str, seed: int):
    if name == "ridge":
        return RidgeCV(alphas=RIDGE_ALPHAS)
    if name == "hgb":
        # Small, shallow and strongly regularised: the target is mostly noise (R^2 ~ 1 %),
        # and this keeps ~15 fits of 9000 x 90 within seconds.
        return HistGradientBoostingRegressor(
            max_iter=150,
            learning_rate=0.05,
            max_depth=3,
            max_leaf_nodes=8,
            min_samples_leaf=200,
            l2_regularization=1.0,
            max_bins=63,
            early_stopping=False,
            random_state=seed,
        )
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


ModelSpec = Any  # "ridge" | "hgb" | estimator | class or factory | (name, one of these)


def resolve_models(models: Sequence[ModelSpec], seed: int = 0) -> dict[str, Callable[[], Any]]:
    """name -> a function returning a fresh, unfitted model for one fold.

    Built-in names make their model; an estimator object is cloned (sklearn.base.clone);
    a class or other callable without ``fit`` is called. Named by the pair's name, else
    the built-in name or the class name. Raises ValueError for an unknown name, an object
    without fit/predict, or two models with one name."""
    out: dict[str, Callable[[], Any]] = {}
    for spec in models:
        name, obj = spec if isinstance(spec, tuple) and len(spec) == 2 else (None, spec)
        if isinstance(obj, str):
            _make_model(obj, seed)  # unknown names fail before any fitting
            make = partial(_make_model, obj, seed)
            label = obj
        elif isinstance(obj, type) or (callable(obj) and not hasattr(obj, "fit")):
            made = obj()
            make, label = obj, type(made).__name__
        else:
            made = obj
            make = partial(clone, obj, safe=False)
            label = type(obj).__name__
        if not isinstance(obj, str) and not (
            callable(getattr(made, "fit", None)) and callable(getattr(made, "predict", None))
        ):
            raise ValueError(f"model {label}: needs fit(X, y) and predict(X) methods")
        name = str(name or label)
        if name == "market":
            raise ValueError('"market" names the buy-and-hold row: give the model another name')
        if name in out:
            raise ValueError(f"two models named {name!r}: give each its own name")
        out[name] = make
    if not out:
        raise ValueError("no model given")
    return out


def walk_forward_predict(
    features: pd.DataFrame,
    target: np.ndarray,
    splits: Sequence[Split],
    *,
    models: Sequence[ModelSpec] = MODELS,
    seed: int = 0,
    target_columns: Sequence[str] = TARGETS,
) -> OOSPredictions:
    """Fit each model on every fold's train rows; predict its test rows.

    features: (T, F) frame of feature columns only (a target column raises LeakageError).
    target: (T,) raw target; train rows with a NaN target are skipped.
    models: see resolve_models; the prediction columns carry their names.
    """
    check_no_targets(features.columns, target_columns)
    makers = resolve_models(models, seed)  # bad models fail before any fitting
    x = features.to_numpy(dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if y.shape != (len(x),):
        raise ValueError(f"target has shape {y.shape}, expected ({len(x)},)")
    preds = pd.DataFrame(np.nan, index=features.index, columns=list(makers))
    fold = np.full(len(x), -1)
    for k, split in enumerate(splits):
        train = split.train[np.isfinite(y[split.train])]
        fold[split.test] = k
        for name, make in makers.items():
            model = make()
            if isinstance(model, HistGradientBoostingRegressor):  # native NaN handling
                keep = np.isfinite(x[train]).any(axis=0)
                xtr, xte = x[train][:, keep], x[split.test][:, keep]
            else:
                xtr, xte = _ridge_design(x[train], x[split.test])
            model.fit(xtr, y[train])
            pred = np.asarray(model.predict(xte), dtype=np.float64).reshape(-1)
            preds.iloc[split.test, preds.columns.get_loc(name)] = pred
    return OOSPredictions(predictions=preds, fold=fold)


def position_from_prediction(
    pred: np.ndarray, *, k: float = 0.5, min_periods: int = 20
) -> np.ndarray:
    """(T,) -> (T,) position in [0, 2] from a return forecast, with past information only.

    position_t = clip(1 + k * pred_t / s_{t-1}, 0, 2), s_{t-1} = std (ddof=1) of the
    finite predictions at rows < t. Rows with fewer than ``min_periods`` earlier
    predictions get position 1 (the market); rows with a NaN prediction get NaN.
    k = 0.5: a prediction one (past) standard deviation above zero adds half the market.
    """
    p = pd.Series(np.asarray(pred, dtype=np.float64))
    past_sd = p.expanding(min_periods=max(min_periods, 2)).std().shift(1).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = 1.0 + k * p.to_numpy() / past_sd
    pos = np.where(np.isfinite(past_sd) & (past_sd > 0), np.clip(raw, 0.0, 2.0), 1.0)
    return np.where(np.isfinite(p.to_numpy()), pos, np.nan)


def score_predictions(
    oos: OOSPredictions,
    forward_returns: np.ndarray,
    risk_free_rate: np.ndarray,
    *,
    k: float = 0.5,
    ic_period: int = 252,
) -> pd.DataFrame:
    """One row per model (plus "market": position 1) of out-of-sample metrics.

    Scored on the test rows where prediction, forward return and risk-free rate are
    finite. IC / rank IC: per block of ``ic_period`` consecutive scored rows, then mean
    and t-stat over blocks.
    """
    fwd = np.asarray(forward_returns, dtype=np.float64)
    rf = np.asarray(risk_free_rate, dtype=np.float64)
    rows = []
    for name in oos.predictions.columns:
        pred = oos.predictions[name].to_numpy()
        position = position_from_prediction(pred, k=k)
        keep = np.isfinite(pred) & np.isfinite(fwd) & np.isfinite(rf)
        p, y, r, pos = pred[keep], fwd[keep], rf[keep], position[keep]
        periods = np.arange(len(p)) // ic_period
        ic = information_coefficient(p, y, periods=periods)
        ric = information_coefficient(p, y, periods=periods, method="spearman")
        strategy = r * (1.0 - pos) + pos * y
        adj = adjusted_sharpe(pos, y, r)
        rows.append(
            {
                "model": name,
                "n_rows": int(keep.sum()),
                "ic_mean": ic.mean,
                "ic_t": ic.t_stat,
                "rank_ic_mean": ric.mean,
                "rank_ic_t": ric.t_stat,
                "r2": r2(p, y),
                "r2_zero": r2(p, y, benchmark="zero"),
                "hit_rate": hit_rate(p, y),
                "mean_position": float(pos.mean()),
                "sharpe": sharpe(strategy - r),
                "adjusted_sharpe": adj.score,
                "vol_penalty": adj.vol_penalty,
                "return_penalty": adj.return_penalty,
            }
        )
    keep = (oos.fold >= 0) & np.isfinite(fwd) & np.isfinite(rf)
    market = adjusted_sharpe(np.ones(int(keep.sum())), fwd[keep], rf[keep])
    rows.append(
        {
            "model": "market",
            "n_rows": int(keep.sum()),
            "mean_position": 1.0,
            "sharpe": sharpe(fwd[keep] - rf[keep]),
            "adjusted_sharpe": market.score,
            "vol_penalty": market.vol_penalty,
            "return_penalty": market.return_penalty,
        }
    )
    return pd.DataFrame(rows).set_index("model")


@dataclass
class DownstreamResult:
    metrics: pd.DataFrame  # score_predictions table
    predictions: OOSPredictions
    splits: list[Split]


def run_downstream(
    features: pd.DataFrame,
    forward_returns: np.ndarray,
    risk_free_rate: np.ndarray,
    *,
    n_splits: int = 5,
    embargo: int = 60,
    horizon: int = 1,
    models: Sequence[ModelSpec] = MODELS,
    k: float = 0.5,
    seed: int = 0,
    target_columns: Sequence[str] = TARGETS,
    test_size: int | None = None,
) -> DownstreamResult:
    """Splits, out-of-sample predictions of the raw forward return, and their metrics.

    ``test_size``: rows per test block (default: purged_walk_forward_splits' choice). To
    score only rows no fit, checkpoint selection or SURE gate has seen (the validation rows
    are seen by the gate), pass (rows from the test split's start) // n_splits, as
    evaluate.py does."""
    splits = purged_walk_forward_splits(
        len(features), n_splits=n_splits, embargo=embargo, horizon=horizon, test_size=test_size
    )
    oos = walk_forward_predict(
        features,
        forward_returns,
        splits,
        models=models,
        seed=seed,
        target_columns=target_columns,
    )
    table = score_predictions(oos, forward_returns, risk_free_rate, k=k)
    return DownstreamResult(metrics=table, predictions=oos, splits=splits)
