"""Parquet as well as CSV: data.path=FILE.parquet reads the same panel in every stage, a
file that is not Parquet is one error naming it, and denoise.py writes Parquet when asked
(CSV stays the default)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.data.panel import load_panel
from mamba_denoiser.data.source import panel_from_config
from mamba_denoiser.errors import ConfigError, PanelError
from tests.helpers import WINDOW, denoise, make_small_frame, train_sweep


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_sweep(tmp_path_factory.mktemp("parquet"), directions=("causal",))


def test_a_parquet_file_reads_as_the_same_panel_as_its_csv(tmp_path):
    frame = make_small_frame(n_rows=600)
    csv, pq = tmp_path / "p.csv", tmp_path / "p.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(pq, index=False)
    a, b = load_panel(csv, window_size=WINDOW), load_panel(pq, window_size=WINDOW)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert (a.continuous, a.passthrough, a.bounds) == (b.continuous, b.passthrough, b.bounds)
    assert b.source == str(pq) and len(b.sha256) == 64
    # through the data options every stage builds its panel from (cluster, train,
    # denoise, evaluate: data/source.py), and with the ids as a stored index
    frame.set_index("date_id").to_parquet(tmp_path / "i.pq")
    c = panel_from_config(
        {"kind": "csv", "path": str(tmp_path / "i.pq"), "window_size": WINDOW, "targets": []}
    )
    assert c.frame["date_id"].tolist() == list(range(600)) and "E1" in c.continuous


def test_a_file_that_is_not_parquet_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("date_id,E1\n0,1.0\n")  # a CSV under a Parquet name
    with pytest.raises(PanelError, match=r"bad\.parquet: could not read as Parquet") as e:
        load_panel(bad)
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(PanelError, match=r"empty\.parquet: file is empty"):
        load_panel(empty)
    with pytest.raises(PanelError, match=r"gone\.parquet: file not found.*CSV or Parquet"):
        load_panel(tmp_path / "gone.parquet")


def test_denoise_reads_parquet_and_writes_parquet_when_asked(trained, tmp_path):
    """The same values as from the CSV; output_format=parquet (or an output named
    *.parquet) writes Parquet with the input's columns, rows and untouched cells."""
    frame = pd.read_csv(trained["csv"])
    pq = tmp_path / "train.parquet"
    frame.to_parquet(pq, index=False)
    denoise(trained, tmp_path / "csv")
    ref = pd.read_csv(tmp_path / "csv" / "denoised.csv")
    info = denoise(trained, tmp_path / "pq", "output_format=parquet", "bands=true", csv=pq)
    out = pd.read_parquet(tmp_path / "pq" / "denoised.parquet")
    assert info["outputs"]["lower"].endswith("denoised_lower.parquet")
    assert list(out.columns) == list(frame.columns) and len(out) == len(frame)
    for c in ("date_id", "D1", "forward_returns"):  # untouched: exactly the input's values
        pd.testing.assert_series_equal(out[c], frame[c])
    for f in ("E1", "E2", "M1", "M2"):
        assert (out[f].isna() == frame[f].isna()).all()
        np.testing.assert_allclose(out[f], ref[f], rtol=1e-9)  # the CSV keeps 10 digits
    assert not np.allclose(out["E1"], frame["E1"])
    lower = pd.read_parquet(tmp_path / "pq" / "denoised_lower.parquet")
    assert (lower["E1"] <= out["E1"] + 1e-12).all()
    # parquet in, CSV out (the default); and a parquet output named by its suffix
    denoise(trained, tmp_path / "pc", csv=pq)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "pc" / "denoised.csv")["E1"], ref["E1"])
    denoise(trained, tmp_path / "cp", f"output={tmp_path / 'x.pq'}")
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "x.pq")["E1"], ref["E1"])


def test_an_output_format_that_contradicts_the_name_is_refused_before_any_work(
    trained, tmp_path, capsys
):
    with pytest.raises(SystemExit):
        denoise(trained, tmp_path / "r", "output_format=parquet", f"output={tmp_path / 'o.csv'}")
    assert "give the file a .parquet suffix" in capsys.readouterr().err
    from mamba_denoiser.denoise_job import output_paths

    with pytest.raises(ConfigError, match="output_format=xlsx"):
        output_paths(None, tmp_path, "causal", "xlsx", False)
    assert output_paths(None, tmp_path, "causal", None, False)["denoised"].name == "denoised.csv"
