"""``Denoiser``: a finished training sweep applied from Python, to a history and then to
each new day, causally, with the same numbers as denoise.py.

    from mamba_denoiser import Denoiser

    den = Denoiser.from_run()              # the newest sweep under outputs/ (or a folder)
    clean = den.transform(history)         # a DataFrame: an id column or a DatetimeIndex
    lower, upper = den.intervals(history)  # 90 % bands for the clean signal (NaN: none)
    today = den.update(new_rows)           # = den.transform(history + new_rows)[new rows]
    den.save("bundle/")                    # one folder: checkpoints + decisions + manifest
    den = Denoiser.load("bundle/")         # sha256-verified; serves the same numbers

The first ``transform`` fits the per-feature decisions (σ, whiteness, the state-space and
noise-law fits, the gate's choices) on the train and validation rows of the split the
models were trained with, exactly as denoise.py does; they are then held, so every later
call serves the same estimators, and a row's value never changes once computed (the
causal plan does not depend on how many rows follow; docs/design.md "Denoising").
``update`` serves its new rows through each cluster's live step (inference/stream.py:
the filters' states, the combiner's sums, one window per network), O(new rows), with
the bits a ``transform`` of the grown history gives. Rows are positional: the history
must start where the training data started, and the train and validation rows must be
the ones the models were fitted on.
``save`` / ``load`` (bundle.py) keep the models and the held decisions in one verified
folder, so a loaded Denoiser serves bit-identical values without refitting anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mamba_denoiser.classical import digest
from mamba_denoiser.errors import ConfigError, PanelError
from mamba_denoiser.rows import Rows
from mamba_denoiser.vocabulary import ID_COL


class Denoiser:
    def __init__(
        self,
        models: dict[int, Any],
        bounds: dict[str, tuple[int, int]],
        *,
        id_col: str = ID_COL,
        gate: bool = True,
        candidates: list[str] | None = None,
        gate_margin_db: float = 0.1,
    ):
        self.models, self.bounds, self.id_col = models, bounds, id_col
        self.kw = dict(candidates=candidates, gate_margin_db=gate_margin_db)
        self.gate = gate
        self.features = [f for m in models.values() for f in m.features]
        self.window = max(m.window for m in models.values())
        self._decisions: dict[int, dict] | None = None
        self._fitted_on: str | None = None  # digest of the train + validation rows
        self._split_ids: dict[str, list[str]] = {}  # part -> [first id, last id], as text
        self._values: Rows | None = None  # the history's features (T, F), grown in place
        self._ids: list = []  # the history's ids, in row order
        self._frame: pd.DataFrame | None = None  # the history as a frame, made on demand
        self._columns: list = []  # the history frame's columns (update's schema)
        # cluster id -> (inference.stream.ClusterStream, its columns), False where a
        # chosen candidate has no live step (update then serves through the batch path)
        self._streams: dict | bool | None = None

    @property
    def _history(self) -> pd.DataFrame | None:
        """The held history: features, in row order, id-indexed (None before transform)."""
        if self._values is None:
            return None
        if self._frame is None or len(self._frame) != self._values.n:
            index = pd.Index(self._ids, name=self.id_col)
            values = self._values.view().copy()
            self._frame = pd.DataFrame(values, index=index, columns=self.features)
        return self._frame

    def _hold(self, x: pd.DataFrame) -> None:
        """Hold x (features, id-indexed) as the history."""
        self._values = Rows(len(self.features))
        self._values.append(x.to_numpy(dtype=np.float64))
        self._ids, self._frame = list(x.index), x
        self._streams = None  # the live steps are opened on this history by ``update``

    @classmethod
    def from_run(cls, checkpoints: str | Path | None = None, *, log_dir="outputs", **kw):
        """A sweep written by train.py (None: the newest under ``log_dir``); ``kw``: gate,
        candidates, gate_margin_db, id_col."""
        from mamba_denoiser.artifacts import find_latest_sweep, load_models

        folder = Path(checkpoints) if checkpoints else find_latest_sweep(log_dir)
        models = load_models(folder)
        splits = [(m.source.get("split") or {}).get("bounds") for m in models.values()]
        if not splits[0] or any(s != splits[0] for s in splits):
            raise ConfigError(f"{folder}: the checkpoints do not record one common split")
        bounds = {k: (int(v[0]), int(v[1])) for k, v in splits[0].items()}
        return cls(models, bounds, **kw)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        *,
        workdir: str | Path | None = None,
        cluster_overrides: list[str] | tuple[str, ...] = (),
        train_overrides: list[str] | tuple[str, ...] | None = None,
        **kw,
    ) -> Denoiser:
        """Cluster and train on ``frame`` in this process (cluster.py + train.py's own code
        and configs, fit_run.py), then fit the decisions on it (``transform(frame)``).

        **The default is a demo budget** (``experiment=smoke``: a tiny model, a few batches
        per cluster; seconds on a CPU), for trying the API, not for denoising well: train
        with the scripts and use ``from_run`` for that, or pass a budget, e.g.
        ``train_overrides=["experiment=cpu_all_clusters", "logger=csv"]``.
        ``cluster_overrides``: Hydra overrides of cluster.py (``data.*``, ``clustering.*``,
        e.g. ``["data.window_size=16", "clustering.k=2"]``); ``train_overrides``: of
        train.py (replacing the demo's). ``workdir``: where outputs/ goes (a new temporary
        folder if None). ``kw``: as for ``from_run`` (gate, candidates, gate_margin_db).
        The id is ``kw["id_col"]`` (``date_id``) or the DatetimeIndex; rows are positional.
        """
        from mamba_denoiser.fit_run import DEMO_TRAIN, fit_run

        sweep = fit_run(
            frame,
            workdir=workdir,
            cluster_overrides=list(cluster_overrides),
            train_overrides=list(DEMO_TRAIN if train_overrides is None else train_overrides),
            id_col=kw.get("id_col", ID_COL),
        )
        den = cls.from_run(sweep, **kw)
        den.transform(frame)
        return den

    def save(self, folder: str | Path) -> Path:
        """Write one bundle folder (bundle.py): manifest.json (versions, sha256 of every
        file, the fitted rows' digest and split), clusters.json, a slim checkpoint per
        cluster and the held decisions. Needs a ``transform`` first (it fits them)."""
        from mamba_denoiser.bundle import save_bundle

        return save_bundle(self, folder)

    @classmethod
    def load(cls, folder: str | Path) -> Denoiser:
        """A Denoiser from a ``save`` folder, every file checked against its sha256 first
        (BundleError naming the file otherwise). It serves the saved decisions: its first
        ``transform`` must get the same train and validation rows, and refits nothing."""
        from mamba_denoiser.bundle import load_bundle

        manifest, models, decisions = load_bundle(folder)
        spec, data = manifest["denoiser"], manifest["data"]
        bounds = {k: (int(v[0]), int(v[1])) for k, v in data["split"].items()}
        den = cls(
            models,
            bounds,
            id_col=spec["id_col"],
            gate=spec["gate"],
            candidates=spec.get("candidates"),
            gate_margin_db=spec.get("gate_margin_db", 0.1),
        )
        den._decisions = decisions
        den._fitted_on = data["fitted_rows_digest"]
        den._split_ids = data.get("split_ids") or {}
        return den

    # ---- the frames ---------------------------------------------------------------------
    def _features_of(self, frame: pd.DataFrame, what: str) -> pd.DataFrame:
        """The feature columns, float, indexed by id (the id column or the index), with
        strictly increasing ids; a clear error naming what is wrong otherwise."""
        if self.id_col in frame.columns:
            ids = frame[self.id_col]
        elif isinstance(frame.index, pd.DatetimeIndex) or frame.index.name == self.id_col:
            ids = frame.index.to_series()
        else:
            raise PanelError(
                f"{what}: no id column '{self.id_col}' and no DatetimeIndex; give one of them"
            )
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise PanelError(f"{what}: missing feature columns {missing[:5]}")
        if not ids.is_monotonic_increasing or ids.duplicated().any():
            raise PanelError(f"{what}: ids must be strictly increasing (sort the frame first)")
        try:
            x = frame[self.features].astype(float)
        except (TypeError, ValueError) as e:
            raise PanelError(f"{what}: non-numeric feature values ({e})") from None
        x.index = pd.Index(ids.to_numpy(), name=self.id_col)
        return x

    def _run(self, x, rows: tuple[int, int] | None = None) -> np.ndarray:
        """(T, F) denoised features of x; held decisions after the first call."""
        return self._result(x, rows).stack("mean", self.features)

    def _result(self, x, rows: tuple[int, int] | None = None, **kw):
        """denoise_panel over x (a features frame, or its (T, F) float64 values: PanelResult);
        the decisions fitted by the first call, then held (replayed). ``kw``: bands, band_z
        (a replay then reads the validation rows: a probed divergence is averaged over
        them)."""
        from mamba_denoiser.inference.panel import Block, denoise_panel

        values = x.to_numpy(dtype=np.float64) if isinstance(x, pd.DataFrame) else x
        frame = Block(values, self.features)
        replay = self._decisions
        res = denoise_panel(
            self.models,
            frame,
            self.bounds,
            gate=(self.gate and replay is None) or (replay is not None and kw.get("bands")),
            replay=replay,
            rows=rows,
            quiet=True,
            **self.kw,
            **kw,
        )
        if replay is None:
            self._decisions = {cid: r.info["decisions"] for cid, r in res.clusters.items()}
        return res

    def _check_fit_rows(self, x: pd.DataFrame, what: str) -> None:
        stop = self.bounds["val"][1]
        if len(x) < stop:
            raise PanelError(
                f"{what}: {len(x)} rows, but the models' validation rows end at row {stop}; "
                "pass the whole history the models were trained on"
            )
        key = digest(x.to_numpy()[:stop])
        if self._fitted_on is not None and key != self._fitted_on:
            raise PanelError(
                f"{what}: its train and validation rows differ from those the decisions "
                "were fitted on (a revised history); make a new Denoiser to refit"
            )
        if self._fitted_on is None:  # ids as text: a bundle's manifest records the split
            ids, n = x.index, len(x)  # the test part may run past a shorter history
            self._split_ids = {
                k: [str(ids[a]), str(ids[min(b, n) - 1])]
                for k, (a, b) in self.bounds.items()
                if a < n
            }
        self._fitted_on = key

    # ---- the API ------------------------------------------------------------------------
    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with its cluster features denoised causally: same index, columns and
        order; NaN stays NaN; other columns untouched. The history it is given is kept
        for ``update``."""
        x = self._features_of(frame, "transform")
        self._check_fit_rows(x, "transform")
        out = self._run(x)
        self._hold(x)
        self._columns = list(frame.columns)
        result = frame.copy()
        result[self.features] = out
        return result

    def intervals(
        self, frame: pd.DataFrame, *, level: float = 0.9
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(lower, upper): frames like ``frame`` (same index and columns; other columns
        copied) whose denoised cells hold a central ``level`` band for the clean signal,
        ŝ ± z·sd, z the normal quantile (1.645 for 90 %), centred on ``transform``'s value:

        - the Kalman filter and the predictive head: sd² = σ²·∂ŝ_t/∂y_t, row by row, which
          is their posterior variance exactly (Tweedie; σ²·gain for the filter) when the
          noise is Gaussian with the σ used and the fitted model is the truth;
        - candidates without an exact divergence (the diffusion head, the robust filter):
          the same with ∂ŝ/∂y probed and averaged over the validation rows, one width per
          feature; for the robust filter under outliers or jumps, and wherever the fit is
          not the truth, the stated level is not guaranteed;
        - SDEdit (sampler=sdedit only): its own sample quantiles.

        Coverage is that of a model-based posterior, not a calibrated guarantee: measured
        on a panel with known clean values, a Kalman-served Gaussian feature covers its
        clean signal close to ``level`` (docs/design.md "Python API and the bundle").
        Cells without a band are NaN: features left raw (white, σ unknown, not chosen by
        the gate), rows its candidate does not serve, and missing inputs. Decisions are
        fitted (as by ``transform``) if they are not yet; the held history is unchanged.
        """
        from scipy.stats import norm

        if not 0.0 < float(level) < 1.0:
            raise ConfigError(f"intervals: level={level} must be in (0, 1), e.g. 0.9")
        z = float(norm.ppf(0.5 + float(level) / 2))
        x = self._features_of(frame, "intervals")
        self._check_fit_rows(x, "intervals")
        if self._decisions is None:
            self._run(x)  # fit the decisions (the bands then replay them)
        res = self._result(x, bands=True, band_z=z)
        lo, hi = res.stack("lower", self.features), res.stack("upper", self.features)
        none = ~(hi > lo)  # no band was estimated (raw cells have lower = upper = y)
        lo[none], hi[none] = np.nan, np.nan
        lower, upper = frame.copy(), frame.copy()
        lower[self.features], upper[self.features] = lo, hi
        return lower, upper

    def update(self, rows: pd.DataFrame) -> pd.DataFrame:
        """New rows (same schema, ids after the last one seen) -> those rows denoised:
        the values ``transform`` over the grown history gives them."""
        if self._values is None:
            raise ConfigError("update() needs a history first: call transform(history)")
        new = [c for c in rows.columns if c not in self._columns]
        gone = [c for c in self._columns if c not in rows.columns]
        if new or gone:
            raise PanelError(
                f"update: the rows' columns differ from the history's: new {new}, missing "
                f"{gone}; give rows in the same schema"
            )
        x = self._features_of(rows, "update")
        last = self._ids[-1]
        if len(x) and not x.index[0] > last:
            early = [str(i) for i in x.index if not i > last]
            shown = ", ".join(early[:3]) + (", …" if len(early) > 3 else "")
            raise PanelError(
                f"update: {len(early)} row(s) with ids [{shown}] are not after the last "
                f"row seen ({last}): revised or repeated earlier "
                "rows are refused; give only new rows, or transform the revised history"
            )
        return _with_features(rows, self.features, self._live(x))

    def _live(self, x: pd.DataFrame) -> np.ndarray:
        """x's rows, new after the held history, denoised by each cluster's live step
        (inference/stream.py: O(new rows), the bits ``transform`` gives), then held."""
        if self._streams is None:
            self._streams = self._open_streams()
        if self._streams is False:
            return self._serve(x, start=self._values.n, keep=True)
        new = x.to_numpy(dtype=np.float64)
        out = np.empty_like(new)
        try:
            for st, cols in self._streams.values():
                out[:, cols] = st.step(new[:, cols])
        except BaseException:
            self._streams = None  # some steps moved on: reopen them on the held history
            raise
        self._values.append(new)
        self._ids += list(x.index)
        return out

    def _open_streams(self) -> dict | bool:
        from mamba_denoiser.inference.stream import stream_cluster

        if self._decisions is None:  # transform fits them first
            self._run(self._history)
        held, streams, at = self._values.view(), {}, 0
        for cid, m in self.models.items():
            cols = np.arange(at, at + len(m.features))
            at += len(m.features)
            st = stream_cluster(
                m,
                held[:, cols].copy(),
                train=self.bounds["train"],
                replay=self._decisions[cid],
                candidates=self.kw["candidates"],
            )
            if st is None:
                return False
            streams[cid] = (st, cols)
        return streams

    def status(self, *, recent: int | None = None, threshold: float | None = None) -> dict:
        """A stale-model signal: rows served since the end of validation, and per feature
        the recent / train ratio of the Kalman filter's mean squared standardised
        innovation (inference/staleness.py; ~1 while the data behave as in training). A
        ratio above ``threshold`` (2) is listed under "stale" and warned about: refit."""
        import warnings

        from mamba_denoiser.inference import staleness
        from mamba_denoiser.inference.candidates import _fits_from

        if self._history is None or self._decisions is None:
            raise ConfigError("status() needs a history first: call transform(history)")
        recent = staleness.RECENT if recent is None else int(recent)
        threshold = staleness.THRESHOLD if threshold is None else float(threshold)
        ratio: dict[str, float] = {}
        for cid, m in self.models.items():
            held = ((self._decisions.get(cid) or {}).get("fits") or {}).get("kalman")
            if held is None:
                continue
            raw = self._history[m.features].to_numpy(dtype=np.float64)
            r = staleness.innovation_ratio(
                raw, _fits_from(held), self.bounds["train"], recent=recent
            )
            ratio.update({f: float(v) for f, v in zip(m.features, r)})
        stale = sorted(f for f, v in ratio.items() if np.isfinite(v) and v > threshold)
        if stale:
            warnings.warn(
                f"{len(stale)} feature(s) with recent innovations above {threshold}x their "
                f"train variance ({', '.join(stale[:5])}{', …' if len(stale) > 5 else ''}): "
                "the data moved since the fit; refit (Denoiser.fit or train.py)",
                stacklevel=2,
            )
        return {
            "rows_since_validation": int(len(self._history) - self.bounds["val"][1]),
            "innovation_ratio": ratio,
            "stale": stale,
        }

    def _serve(self, x: pd.DataFrame, *, start: int, keep: bool) -> np.ndarray:
        """The denoised rows of ``x`` appended to the held history's first ``start`` rows
        (start = len(history): new rows, as update; less: rows that replace the history's
        tail, as the scikit-learn wrapper's transform). Only the windows those rows need
        are served. ``keep``: hold the grown history afterwards (update) or not (a pure
        function of the fitted state, as scikit-learn expects of transform)."""
        n, new = self._values.n, x.to_numpy(dtype=np.float64)
        if start < self.bounds["val"][1]:  # the fitted rows must stay the same
            self._check_fit_rows(pd.concat([self._history.iloc[:start], x]), "transform")
        if keep and start == n:  # the new rows go into the held buffer, committed after
            grown = self._values.staged(new)
        else:
            grown = np.concatenate([self._values.view()[:start], new])
        rows = None if start == 0 else (start, len(grown))  # the windows serving them only
        out = self._run(grown, rows=rows)
        if keep:
            if start != n:
                self._hold(pd.concat([self._history.iloc[:start], x]))
            else:
                self._values.commit(len(new))
                self._ids += list(x.index)
        return out[start:]


def _with_features(rows: pd.DataFrame, features: list, values: np.ndarray) -> pd.DataFrame:
    """``rows`` with its ``features`` columns replaced by ``values`` (same index, columns
    and order): its float64 columns as one block, the others inserted as they are (their
    dtypes, e.g. strings, dates, nullable ints, kept); not a column assignment per
    feature (ms per update)."""
    col = {f: i for i, f in enumerate(features)}
    names = rows.columns
    is_float = (rows.dtypes == np.float64).to_numpy()
    floats = np.flatnonzero(is_float)
    block = rows.iloc[:, floats].to_numpy(dtype=np.float64, copy=True)
    src = np.array([col.get(c, -1) for c in names[floats]], dtype=np.int64)
    hit = src >= 0
    block[:, hit] = values[:, src[hit]]
    out = pd.DataFrame(block, index=rows.index.copy(), columns=names[floats])
    for i in np.flatnonzero(~is_float):  # in column order: each lands at its own position
        if names[i] in col:  # a feature column of another dtype (ints): the values as given
            out.insert(int(i), names[i], values[:, col[names[i]]])
        else:
            out.insert(int(i), names[i], rows.iloc[:, i])
    out.columns = names.copy()
    return out
