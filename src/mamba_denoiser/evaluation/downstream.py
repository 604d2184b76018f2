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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import Pipeline
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
    """Expanding-window walk-forward folds with purge and embargo: scikit-learn's
    ``TimeSeriesSplit(n_splits, test_size=test_size, gap=max(embargo, horizon - 1))``.

    The last ``n_splits * test_size`` rows form the test blocks, in time order
    (test_size defaults to n_rows // (n_splits + 1)). Fold k trains on rows
    i < a_k - embargo with i + horizon <= a_k, a_k the first row of its block, so
    a_k - max(train) > embargo. Raises ValueError if a fold would train on fewer than
    ``min_train`` rows. One block (``n_splits=1``) is the last fold of two.
    """
    from sklearn.model_selection import TimeSeriesSplit

    if n_splits < 1 or embargo < 0 or horizon < 1:
        raise ValueError(
            f"need n_splits >= 1, embargo >= 0, horizon >= 1; got {n_splits}, {embargo}, {horizon}"
        )
    test_size = n_rows // (n_splits + 1) if test_size is None else int(test_size)
    first = n_rows - n_splits * test_size
    if test_size < 1 or first < 0:
        raise ValueError(f"{n_splits} test blocks of {test_size} rows do not fit {n_rows} rows")
    gap = max(embargo, horizon - 1)  # row i trains only if i < a - embargo and i + horizon <= a
    if first - gap < min_train:  # the first fold trains on the fewest rows
        raise ValueError(
            f"fold 0: {max(first - gap, 0)} train rows before row {first} after embargo "
            f"{embargo} / horizon {horizon}, need >= {min_train}; use fewer or "
            f"smaller test blocks"
        )
    # TimeSeriesSplit needs two folds at least: one block is the first fold of two over rows
    # that end test_size later (the same train rows and block)
    k = max(n_splits, 2)
    rows = np.zeros((n_rows + (k - n_splits) * test_size, 1))
    folds = TimeSeriesSplit(n_splits=k, test_size=test_size, gap=gap).split(rows)
    return [Split(train=train, test=test) for train, test in folds][:n_splits]


@dataclass
class OOSPredictions:
    """Out-of-sample predictions: one column per model, NaN outside the test blocks;
    ``fold`` (T,) is the fold of each row (-1 outside the test blocks)."""

    predictions: pd.DataFrame
    fold: np.ndarray


class ObservedColumns(TransformerMixin, BaseEstimator):
    """Keeps the columns with at least one observed (finite) train value: a column with
    none has nothing to fit on, for the imputer or the trees."""

    def fit(self, X, y=None):
        self.keep_ = np.isfinite(np.asarray(X, dtype=np.float64)).any(axis=0)
        return self

    def transform(self, X):
        return np.asarray(X, dtype=np.float64)[:, self.keep_]


class TrainRangeClip(TransformerMixin, BaseEstimator):
    """Clips every column to its train range, NaN kept. A random-walk level drifts out of
    it in the test block, and a linear model would extrapolate it into absurd forecasts
    (trees saturate the same way by construction)."""

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        self.low_, self.high_ = np.nanmin(X, axis=0), np.nanmax(X, axis=0)
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=np.float64), self.low_, self.high_)


def design_pipeline(model) -> Pipeline:
    """``model`` behind the preprocessing every fold fits on its train rows only: the
    columns observed in train; for a HistGradientBoostingRegressor nothing else (its
    native NaN handling), for any other model the NaN-free design: values clipped to the
    train range, gaps filled with the train median plus a missing indicator for each column
    with train gaps, standardised on the train rows."""
    if isinstance(model, HistGradientBoostingRegressor):
        return Pipeline([("observed", ObservedColumns()), ("model", model)])
    return Pipeline(
        [
            ("observed", ObservedColumns()),
            ("clip", TrainRangeClip()),  # before the fill: the median lies in the range
            ("impute", SimpleImputer(strategy="median", add_indicator=True)),
            ("scale", StandardScaler()),
            ("model", model),
        ]
    )


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
            model = design_pipeline(make()).fit(x[train], y[train])
            pred = np.asarray(model.predict(x[split.test]), dtype=np.float64).reshape(-1)
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


def forecast_panel(
    panel,
    names: Sequence[str],
    sets: Mapping[str, np.ndarray],
    *,
    n_splits: int = 5,
    models: Sequence[ModelSpec] = MODELS,
    k: float = 0.5,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """evaluate.py's forecasting: purged walk-forward forecasts of the panel's raw forward
    return from each feature set (name -> (T, F) values of the cluster features ``names``;
    the panel's other non-target columns as they are), every scored block inside the test
    split: no scored feature row was seen by the checkpoint selection, the SURE gate or any
    fit.

    Returns the metrics table, one row per set and model plus the market once (last;
    ``attrs["scored_rows"]`` the rows the folds score), and the strategies' excess returns
    by name (the first model's, "<set> (<model>)", and "market"). Raises ValueError when
    the test split is too short for ``n_splits`` blocks of 20 rows, for a bad model
    ("models: ...") or for folds or a model that refuse the data ("<set> features: ...").
    """
    targets = set(panel.targets)
    T = panel.n_rows
    test0 = panel.bounds["test"][0]
    base_cols = [c for c in panel.frame.columns if c != panel.id_col and c not in targets]
    fwd = panel.frame["forward_returns"].to_numpy(dtype=np.float64)
    rf = panel.frame["risk_free_rate"].to_numpy(dtype=np.float64)
    test_size = (T - test0) // n_splits
    if test_size < 20:
        raise ValueError(
            f"the test split has {T - test0} rows: too few for {n_splits} downstream blocks; "
            "lower downstream.n_splits or give more rows"
        )
    try:
        model0 = next(iter(resolve_models(models, seed)))  # the curves' model
    except ValueError as e:
        raise ValueError(f"models: {e}") from None
    frames, curves = [], {}
    for set_name, arr in sets.items():
        feats = panel.frame[base_cols].copy()
        feats[list(names)] = arr
        try:
            res = run_downstream(
                feats,
                fwd,
                rf,
                n_splits=n_splits,
                embargo=int(panel.split.embargo),
                models=models,
                k=k,
                seed=seed,
                target_columns=list(panel.targets),
                test_size=test_size,
            )
        except ValueError as e:  # folds that do not fit, or a model refusing the data
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{set_name} features: {first}") from None
        t = res.metrics.copy()
        t.insert(0, "features", set_name)
        frames.append(t.reset_index())
        pred = res.predictions.predictions[model0].to_numpy()
        pos = position_from_prediction(pred, k=k)
        curves[f"{set_name} ({model0})"] = rf * (1 - pos) + pos * fwd - rf
    curves["market"] = np.where(np.isfinite(pos), fwd - rf, np.nan)
    # the market row is the same for every feature set: keep it once, last
    market = frames[0][frames[0]["model"] == "market"].assign(features="-")
    table = pd.concat([f[f["model"] != "market"] for f in frames] + [market], ignore_index=True)
    table.attrs["scored_rows"] = (T - n_splits * test_size, T)
    return table, curves
