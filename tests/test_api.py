"""The Python API (api.py): transform equals denoise.py's output, update equals transform
over the grown history, day by day, and bad frames are refused with a clear error."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser import Denoiser
from mamba_denoiser.errors import PanelError
from tests.helpers import make_small_frame, train_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return train_sweep(tmp_path_factory.mktemp("api"), directions=("causal",))


def test_transform_is_denoise_py_and_keeps_the_frame(sweep, tmp_path):
    from tests.helpers import denoise

    den = Denoiser.from_run(sweep["root"] / "causal", gate=False)
    frame = pd.read_csv(sweep["csv"])
    out = den.transform(frame)
    assert list(out.columns) == list(frame.columns) and len(out) == len(frame)
    pd.testing.assert_series_equal(out["D1"], frame["D1"])  # not a cluster feature
    denoise(sweep, tmp_path / "run")  # denoise.py on the same data, gate off
    ref = pd.read_csv(tmp_path / "run" / "denoised.csv")
    for f in den.features:
        np.testing.assert_allclose(out[f], ref[f], rtol=1e-9)  # the CSV keeps 10 digits
        assert (out[f].isna() == frame[f].isna()).all()


def test_a_datetime_index_comes_back_as_it_went_in(sweep):
    den = Denoiser.from_run(sweep["root"] / "causal")
    frame = pd.read_csv(sweep["csv"]).drop(columns="date_id")
    frame.index = pd.bdate_range("2001-01-01", periods=len(frame), name="date")
    out = den.transform(frame)
    pd.testing.assert_index_equal(out.index, frame.index)


def test_datetime_index_id_column_and_id_index_give_the_same_values_in_the_given_order(sweep):
    by_column = make_small_frame(n_rows=610)
    ref = Denoiser.from_run(sweep["root"] / "causal").transform(by_column.iloc[:600])
    dates = pd.bdate_range("2001-01-01", periods=610, name="date")
    shuffled = ["M2", "forward_returns", "E1", "D1", "M1", "risk_free_rate", "E2"]
    by_date = by_column.drop(columns="date_id").set_index(dates)[
        shuffled + ["market_forward_excess_returns"]
    ]
    by_index = by_column.set_index("date_id")  # the id as the index, not a column
    for frame in (by_date, by_index):
        den = Denoiser.from_run(sweep["root"] / "causal")
        out = den.transform(frame.iloc[:600])
        pd.testing.assert_index_equal(out.index, frame.index[:600])
        assert list(out.columns) == list(frame.columns)  # the caller's order, not the model's
        for f in den.features:
            np.testing.assert_array_equal(out[f].to_numpy(), ref[f].to_numpy())
        pd.testing.assert_series_equal(out["D1"], frame["D1"].iloc[:600])
        new = den.update(frame.iloc[600:605])
        pd.testing.assert_index_equal(new.index, frame.index[600:605])
        assert list(new.columns) == list(frame.columns)
    with pytest.raises(PanelError, match=re.escape(f"[{dates[599]}] are not after the last row")):
        den_d = Denoiser.from_run(sweep["root"] / "causal")
        den_d.transform(by_date.iloc[:600])
        den_d.update(by_date.iloc[599:601])
    with pytest.raises(PanelError, match="no id column 'date_id' and no DatetimeIndex"):
        Denoiser.from_run(sweep["root"] / "causal").transform(by_column.drop(columns="date_id"))


def test_update_day_by_day_equals_transform_of_the_grown_history(sweep):
    longer = make_small_frame(n_rows=640)
    history, new = longer.iloc[:600], longer.iloc[600:]
    live = Denoiser.from_run(sweep["root"] / "causal")
    live.transform(history)
    days = [live.update(new.iloc[i : i + 1]) for i in range(len(new))]
    assert isinstance(live._streams, dict)  # served by the live steps, not the batch path
    assert live.update(new.iloc[:0]).empty  # no rows: nothing served, nothing held
    streamed = pd.concat(days)
    batch = Denoiser.from_run(sweep["root"] / "causal")
    batch.transform(history)  # the same decisions: fitted on the same rows
    full = batch.transform(longer)
    for f in live.features:
        np.testing.assert_array_equal(streamed[f].to_numpy(), full[f].to_numpy()[600:])


def test_update_refuses_revised_history_and_other_columns(sweep):
    longer = make_small_frame(n_rows=620)
    den = Denoiser.from_run(sweep["root"] / "causal")
    den.transform(longer.iloc[:600])
    with pytest.raises(
        PanelError, match=r"10 row\(s\) with ids \[590, 591, 592, …\] are not after"
    ):
        den.update(longer.iloc[590:601])  # revised earlier rows ride along with a new one
    with pytest.raises(PanelError, match="new \\['extra'\\]"):
        den.update(longer.iloc[600:601].assign(extra=1.0))
    with pytest.raises(PanelError, match="missing \\['E1'\\]"):
        den.update(longer.iloc[600:601].drop(columns="E1"))
    revised = longer.iloc[:600].copy()
    revised.loc[10, "E1"] += 1.0  # a train row changed
    with pytest.raises(PanelError, match="revised history"):
        den.transform(revised)
    with pytest.raises(PanelError, match="missing feature columns"):
        Denoiser.from_run(sweep["root"] / "causal").transform(longer.drop(columns="M1"))
    # a refused update leaves the held history as it was: the next good row is served
    fresh = Denoiser.from_run(sweep["root"] / "causal")
    fresh.transform(longer.iloc[:600])
    pd.testing.assert_frame_equal(
        den.update(longer.iloc[600:601]), fresh.update(longer.iloc[600:601]), check_exact=True
    )


def test_fit_trains_in_process_like_the_scripts_and_serves(tmp_path):
    """Denoiser.fit: cluster.py + train.py (demo budget) on a frame, no subprocess; the
    result is a run on disk that from_run serves with the same numbers."""
    frame = make_small_frame(n_rows=600)
    frame.index = pd.bdate_range("2001-01-01", periods=len(frame), name="date")
    frame = frame.drop(columns="date_id")  # dates only: the row number becomes the id
    den = Denoiser.fit(
        frame,
        workdir=tmp_path,
        cluster_overrides=["data.window_size=16", "data.anchor_len=4", "clustering.k=2"],
    )
    assert sorted(den.features) == ["E1", "E2", "M1", "M2"]  # D1 (a dummy) passes through
    sweeps = list((tmp_path / "outputs" / "train_multirun").glob("*/*/summary.json"))
    assert len(sweeps) == len(den.models) >= 1
    out = den.transform(frame)
    again = Denoiser.from_run(log_dir=tmp_path / "outputs").transform(frame)
    pd.testing.assert_frame_equal(out, again, check_exact=True)
    pd.testing.assert_index_equal(out.index, frame.index)
    with pytest.raises(PanelError, match="no id column 'date_id' and no DatetimeIndex"):
        Denoiser.fit(frame.reset_index(drop=True), workdir=tmp_path / "b")


def test_status_flags_features_whose_recent_innovations_outgrew_the_fit(sweep):
    """Rows like the training rows: every innovation ratio near 1, nothing stale. The last
    150 rows of two features with 4x the noise: those two (and only those) are stale."""
    longer = make_small_frame(n_rows=750)
    den = Denoiser.from_run(sweep["root"] / "causal")
    den.transform(longer.iloc[:600])
    den.update(longer.iloc[600:])
    calm = den.status(recent=150)
    assert calm["rows_since_validation"] == 750 - den.bounds["val"][1]
    assert calm["stale"] == [] and len(calm["innovation_ratio"]) >= 2
    assert all(0.3 < v < 2.0 for v in calm["innovation_ratio"].values() if np.isfinite(v))

    shaken = longer.copy()
    rng = np.random.default_rng(0)
    moved = [f for f in den.features if np.isfinite(calm["innovation_ratio"].get(f, np.nan))][:2]
    for f in moved:
        sd = shaken[f].iloc[:600].diff().std()
        shaken.loc[600:, f] += 4 * sd * rng.standard_normal(150)
    den2 = Denoiser.from_run(sweep["root"] / "causal")
    den2.transform(shaken.iloc[:600])
    den2.update(shaken.iloc[600:])
    with pytest.warns(UserWarning, match="refit"):
        st = den2.status(recent=150)
    assert st["stale"] == sorted(moved)
