"""Rows that do not move when the panel grows (#27 item 1), through denoise.py: models
trained on a panel and applied to the same panel with 100 rows appended. The fractional
split would move the train and validation bounds with the length; the applying stages pin
the split to the ids the models were trained with, the split check compares only the train
and validation bounds, and the data digest covers only the rows up to the end of
validation, so there is no other-data warning either."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from mamba_denoiser import artifacts
from mamba_denoiser.data.panel import load_panel
from mamba_denoiser.errors import ConfigError
from tests.helpers import WINDOW, denoise, make_small_frame, train_sweep


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_sweep(tmp_path_factory.mktemp("grown"), directions=("causal",))


def _grown(csv, extra: int = 100) -> pd.DataFrame:
    frame = pd.read_csv(csv)
    more = make_small_frame(n_rows=len(frame) + extra, seed=5).iloc[len(frame) :]
    return pd.concat([frame, more], ignore_index=True)


def test_denoise_py_on_the_panel_grown_by_100_rows_leaves_earlier_rows_bit_identical(
    trained, tmp_path
):
    grown = tmp_path / "grown.csv"
    _grown(trained["csv"]).to_csv(grown, index=False)
    denoise(trained, tmp_path / "base", "gate=true")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "denoising other data": the fitted rows match
        info = denoise(trained, tmp_path / "grown", "gate=true", csv=grown)
    base = pd.read_csv(tmp_path / "base" / "denoised.csv", dtype=str, keep_default_na=False)
    out = pd.read_csv(tmp_path / "grown" / "denoised.csv", dtype=str, keep_default_na=False)
    assert len(out) == len(base) + 100
    pd.testing.assert_frame_equal(out.iloc[: len(base)], base)  # the same text, cell by cell
    ref = json.loads((tmp_path / "base" / "denoise_summary.json").read_text())
    assert [c["decisions"] for c in info["clusters"]] == [c["decisions"] for c in ref["clusters"]]
    raw = pd.read_csv(grown, dtype=str, keep_default_na=False)
    assert any(out[f].iloc[600:].ne(raw[f].iloc[600:]).any() for f in ("E1", "E2", "M1", "M2"))


def test_a_revised_fitted_row_is_other_data_and_moved_bounds_are_refused(trained, tmp_path):
    frame = _grown(trained["csv"])
    frame.loc[10, "E1"] += 1.0  # a train row revised: the digest differs
    revised = tmp_path / "revised.csv"
    frame.to_csv(revised, index=False)
    with pytest.warns(UserWarning, match="denoising other data"):
        denoise(trained, tmp_path / "rev", csv=revised)
    # rows prepended: the ids at the recorded bounds are not this panel's, nothing is
    # pinned, and the split check names the bounds
    early = make_small_frame(n_rows=700).assign(date_id=lambda f: f.date_id - 700)
    moved = _panel(tmp_path, pd.concat([early, pd.read_csv(trained["csv"])]))
    m = next(iter(artifacts.load_models(trained["root"] / "causal").values()))
    assert artifacts.pinned_split({}, m.source["split"], moved) is None
    with pytest.raises(ConfigError, match="made with split bounds"):
        artifacts.check_split(
            m.source["split"]["bounds"], moved, artifact="x", error=ConfigError, fix=""
        )


def test_the_split_check_ignores_the_test_part(tmp_path):
    panel = _panel(tmp_path, make_small_frame(n_rows=600))
    rec = artifacts.split_bounds(panel)
    artifacts.check_split(
        {**rec, "test": [500, 900]}, panel, artifact="m", error=ConfigError, fix=""
    )


def _panel(tmp_path, frame):
    path = tmp_path / "panel.csv"
    frame.to_csv(path, index=False)
    return load_panel(path, window_size=WINDOW)
