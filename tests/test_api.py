"""The Python API (api.py): transform equals denoise.py's output, update equals transform
over the grown history, day by day, and bad frames are refused with a clear error."""

from __future__ import annotations

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


def test_update_day_by_day_equals_transform_of_the_grown_history(sweep):
    longer = make_small_frame(n_rows=640)
    history, new = longer.iloc[:600], longer.iloc[600:]
    live = Denoiser.from_run(sweep["root"] / "causal")
    live.transform(history)
    days = [live.update(new.iloc[i : i + 1]) for i in range(len(new))]
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
    with pytest.raises(PanelError, match="not after the last row"):
        den.update(longer.iloc[590:601])
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
