"""``DenoiserTransformer``: a finished run or saved bundle as a scikit-learn transformer.

    from sklearn.pipeline import make_pipeline
    from mamba_denoiser.sklearn import DenoiserTransformer

    pipe = make_pipeline(DenoiserTransformer(bundle="bundle/"), Ridge())
    pipe.fit(history, y)             # fit: load the bundle, serve the warm-up history
    pipe.predict(next_days)          # rows after the history: denoised causally with it

Nothing is trained in ``fit``: it wraps what cluster.py + train.py made (a ``bundle`` from
``Denoiser.save``, or a training sweep folder as ``run``; neither: the newest sweep under
outputs/), serves the history ``X`` (which fits the decisions for a run, or checks a
bundle's) and remembers it. ``transform(X)`` then takes rows that continue that history
or replace its tail, and gives each row the value ``Denoiser.transform`` of the history
up to that row gives it, so a live row never sees the future and never changes later.
``transform`` is a pure function of the fitted state (it does not grow the history; use
``Denoiser.update`` for a live loop). Frames only: the id column or DatetimeIndex orders
the rows. Output: every column of ``X`` but the id column, in ``X``'s order at ``fit``;
a NumPy array, or a DataFrame under ``set_output(transform="pandas")``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from mamba_denoiser.errors import ConfigError, PanelError


class DenoiserTransformer(TransformerMixin, BaseEstimator):
    """Causal denoising of a panel's cluster features as a scikit-learn step.

    bundle: a ``Denoiser.save`` folder (preferred: verified, nothing refitted).
    run: a training sweep folder (``Denoiser.from_run``) when no bundle is given;
        None with no bundle: the newest sweep under ``log_dir``.
    """

    def __init__(
        self, bundle: str | Path | None = None, *, run: str | Path | None = None, log_dir="outputs"
    ):
        self.bundle = bundle
        self.run = run
        self.log_dir = log_dir

    # ---- scikit-learn's interface ------------------------------------------------------
    def fit(self, X: pd.DataFrame, y=None):
        self._fit(X)
        return self

    def fit_transform(self, X: pd.DataFrame, y=None, **fit_params):
        # fit already denoised X (it is the warm-up history): no second pass
        return self._fit(X)

    def transform(self, X: pd.DataFrame):
        check_is_fitted(self, "denoiser_")
        frame = self._frame(X, "transform")
        den = self.denoiser_
        x = den._features_of(frame, "transform")
        out = frame.copy()
        out[den.features] = den._serve(x, start=self._start(x), keep=False)
        return self._output(out)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "feature_names_in_")
        return np.array([c for c in self.feature_names_in_ if c != self.denoiser_.id_col], object)

    # ---- the parts ---------------------------------------------------------------------
    def _fit(self, X: pd.DataFrame):
        from mamba_denoiser.api import Denoiser

        if self.bundle is not None and self.run is not None:
            raise ConfigError("DenoiserTransformer: give bundle= or run=, not both")
        if self.bundle is not None:
            den = Denoiser.load(self.bundle)
        else:
            den = Denoiser.from_run(self.run, log_dir=self.log_dir)
        if not isinstance(X, pd.DataFrame):
            raise PanelError(
                "DenoiserTransformer.fit: X must be a DataFrame with an id column or a "
                f"DatetimeIndex (got {type(X).__name__}); rows are ordered by their ids"
            )
        out = den.transform(X)  # fits (run) or checks (bundle) the decisions; holds X
        self.denoiser_ = den
        self.feature_names_in_ = np.array([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return self._output(out)

    def _frame(self, X, what: str) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise PanelError(
                f"DenoiserTransformer.{what}: X must be a DataFrame with an id column or a "
                f"DatetimeIndex (got {type(X).__name__})"
            )
        want = list(self.feature_names_in_)
        new = [c for c in X.columns if c not in want]
        gone = [c for c in want if c not in X.columns]
        if new or gone:
            raise PanelError(
                f"DenoiserTransformer.{what}: X's columns differ from fit's: new {new}, "
                f"missing {gone}; give the columns it was fitted with"
            )
        return X[want]

    def _start(self, x: pd.DataFrame) -> int:
        """Where x's rows go in the warm-up history: after it, or over its tail from the
        row with x's first id (those held rows must be unchanged: a revision of a row the
        decisions or a served value rest on would silently change the past)."""
        hist = self.denoiser_._history
        if not len(x) or x.index[0] > hist.index[-1]:
            return len(hist)
        pos = hist.index.get_indexer([x.index[0]])[0]
        if pos < 0:
            raise PanelError(
                f"DenoiserTransformer.transform: the first row's id {x.index[0]} is neither "
                f"in the warm-up history ({hist.index[0]} .. {hist.index[-1]}) nor after it; "
                "give rows that continue the history, or fit on a history that has them"
            )
        held = hist.iloc[pos : pos + len(x)]
        mine = x.iloc[: len(held)]
        if not held.index.equals(mine.index):
            raise PanelError(
                "DenoiserTransformer.transform: the rows' ids differ from the warm-up "
                f"history's from id {x.index[0]} on; give its rows as they were"
            )
        same = np.isclose(mine.to_numpy(), held.to_numpy(), rtol=0, atol=0, equal_nan=True)
        if not same.all():
            r, c = np.argwhere(~same)[0]
            raise PanelError(
                f"DenoiserTransformer.transform: row {mine.index[r]}, column "
                f"{mine.columns[c]} differs from the warm-up history (a revised row); fit "
                "again on the revised history"
            )
        return int(pos)

    def _output(self, out: pd.DataFrame) -> np.ndarray:
        """The output columns as an array; scikit-learn's set_output wraps it in a
        DataFrame with get_feature_names_out and X's index when asked to."""
        return out[list(self.get_feature_names_out())].to_numpy()
