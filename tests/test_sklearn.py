"""DenoiserTransformer (mamba_denoiser/sklearn.py): a bundle or run as a scikit-learn step
whose transform of new rows equals Denoiser.update's, causally after the fit history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline

from mamba_denoiser import Denoiser
from mamba_denoiser.errors import PanelError
from mamba_denoiser.sklearn import DenoiserTransformer
from tests.helpers import make_small_frame, train_sweep

TARGETS = ["forward_returns", "risk_free_rate", "market_forward_excess_returns"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("sk")
    sweep = train_sweep(root, directions=("causal",))
    den = Denoiser.from_run(sweep["root"] / "causal")
    den.transform(make_small_frame(n_rows=620).iloc[:600])  # the panel fixture's history
    return {"bundle": den.save(root / "bundle"), "run": sweep["root"] / "causal"}


@pytest.fixture(scope="module")
def panel():
    """(X: 620 rows without the targets, y); the first 600 rows are the fit history."""
    frame = make_small_frame(n_rows=620)
    X, y = frame.drop(columns=TARGETS), frame["forward_returns"]
    return X, y


def _reference(bundle, X) -> pd.DataFrame:
    den = Denoiser.load(bundle["bundle"])
    first = den.transform(X.iloc[:600])
    days = [den.update(X.iloc[i : i + 1]) for i in range(600, len(X))]
    return pd.concat([first, *days])


def test_fit_is_the_history_and_transform_of_new_rows_is_update(bundle, panel):
    X, _ = panel
    ref = _reference(bundle, X).drop(columns="date_id")
    tr = DenoiserTransformer(bundle=bundle["bundle"])
    fitted = tr.fit_transform(X.iloc[:600])
    np.testing.assert_array_equal(fitted, ref.iloc[:600].to_numpy())
    new = tr.transform(X.iloc[600:])
    np.testing.assert_array_equal(new, ref.iloc[600:].to_numpy())
    np.testing.assert_array_equal(tr.transform(X.iloc[600:]), new)  # pure: history not grown
    tail = tr.transform(X.iloc[590:])  # rows over the history's tail, then new ones
    np.testing.assert_array_equal(tail, ref.iloc[590:].to_numpy())
    assert list(tr.get_feature_names_out()) == [c for c in X.columns if c != "date_id"]
    by_run = DenoiserTransformer(run=bundle["run"]).fit(X.iloc[:600])
    np.testing.assert_array_equal(by_run.transform(X.iloc[600:]), new)


def test_in_a_pipeline_with_pandas_output_and_clone(bundle, panel):
    X, y = panel
    # M2 starts with missing history, which stays missing: an imputer before the model
    den = DenoiserTransformer(bundle=bundle["bundle"])
    pipe = make_pipeline(den, SimpleImputer(), LinearRegression())
    pipe.set_output(transform="pandas")
    pipe.fit(X.iloc[:600], y.iloc[:600])
    pred = pipe.predict(X.iloc[600:])
    step = pipe[0]
    out = step.transform(X.iloc[600:])
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["D1", "E1", "E2", "M1", "M2"]
    pd.testing.assert_index_equal(out.index, X.index[600:])
    ref = _reference(bundle, X).drop(columns="date_id")
    pd.testing.assert_frame_equal(out, ref.iloc[600:], check_exact=True)
    manual = make_pipeline(SimpleImputer(), LinearRegression()).fit(ref.iloc[:600], y.iloc[:600])
    np.testing.assert_allclose(pred, manual.predict(ref.iloc[600:]), rtol=1e-12)
    fresh = clone(step)
    assert fresh.get_params() == step.get_params() and not hasattr(fresh, "denoiser_")
    with pytest.raises(Exception, match="not fitted"):
        fresh.transform(X.iloc[600:])


def test_a_revised_or_unknown_row_and_arrays_are_refused(bundle, panel):
    X, _ = panel
    tr = DenoiserTransformer(bundle=bundle["bundle"]).fit(X.iloc[:600])
    revised = X.iloc[595:605].copy()
    revised.loc[597, "M1"] += 1.0
    with pytest.raises(PanelError, match="row 597, column M1 differs from the warm-up history"):
        tr.transform(revised)
    with pytest.raises(PanelError, match=r"missing \['E2'\]"):
        tr.transform(X.iloc[600:].drop(columns="E2"))
    with pytest.raises(PanelError, match="X must be a DataFrame"):
        tr.transform(X.iloc[600:].to_numpy())
    gap = X.iloc[600:].assign(date_id=X["date_id"].iloc[600:] - 700)  # before the history
    with pytest.raises(PanelError, match="neither in the warm-up history"):
        tr.transform(gap)
