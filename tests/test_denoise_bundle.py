"""denoise.py bundle=FOLDER: a saved Denoiser (bundle.py) over a CSV, nothing refitted: the
values Denoiser.load(BUNDLE).transform gives, on the history and on the history grown by
new rows (earlier rows unchanged); a revised history and options the bundle holds are
refused with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser import Denoiser
from mamba_denoiser.denoise_job import run_denoise
from tests.helpers import compose_config, data_overrides, make_small_frame, train_sweep


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(bundle folder, the history CSV, the history grown by 100 rows as a CSV)."""
    root = tmp_path_factory.mktemp("bundle_denoise")
    (root / "sweep").mkdir()
    sweep = train_sweep(root / "sweep", directions=("causal",))
    history = pd.read_csv(sweep["csv"])
    den = Denoiser.from_run(sweep["root"] / "causal")  # gate on
    den.transform(history)
    folder = den.save(root / "bundle")
    shutil.rmtree(sweep["root"] / "causal")  # the bundle stands alone
    more = make_small_frame(n_rows=700, seed=5).iloc[600:]
    grown = root / "grown.csv"
    pd.concat([history, more], ignore_index=True).to_csv(grown, index=False)
    return folder, sweep["csv"], grown


def _run(folder, csv, out, *extra):
    ov = [*data_overrides(csv), f"bundle={folder}", "plots=false", *extra]
    return run_denoise(compose_config("denoise", ov, out))


def test_a_bundle_serves_its_held_decisions_over_history_and_new_rows(saved, tmp_path):
    folder, history, grown = saved
    info = _run(folder, history, tmp_path / "h")
    held = json.loads((folder / "decisions.json").read_text())
    assert [c["decisions"] for c in info["clusters"]] == [held[k] for k in sorted(held)]
    assert info["bundle"] == str(folder)
    _run(folder, grown, tmp_path / "g")
    h = pd.read_csv(tmp_path / "h" / "denoised.csv", dtype=str, keep_default_na=False)
    g = pd.read_csv(tmp_path / "g" / "denoised.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(g.iloc[: len(h)], h)  # earlier rows: the same text
    ref = Denoiser.load(folder).transform(pd.read_csv(grown))
    out = pd.read_csv(tmp_path / "g" / "denoised.csv")
    for f in ("E1", "E2", "M1", "M2"):
        np.testing.assert_allclose(out[f], ref[f], rtol=1e-9)  # the CSV keeps 10 digits
    assert any(not np.allclose(out[f], pd.read_csv(grown)[f], equal_nan=True) for f in ref)


def test_a_bundle_refuses_a_revised_history_and_the_options_it_holds(saved, tmp_path, capsys):
    folder, history, _ = saved
    frame = pd.read_csv(history)
    frame.loc[3, "M1"] += 1.0
    revised = tmp_path / "revised.csv"
    frame.to_csv(revised, index=False)
    with pytest.raises(SystemExit):
        _run(folder, revised, tmp_path / "r")
    assert "are not the rows the decisions of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(folder, history, tmp_path / "s", "gate=false", "sigma={E1: 0.5}")
    assert "holds its models and decisions; drop gate, sigma" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(tmp_path, history, tmp_path / "t")
    assert "not a Denoiser bundle" in capsys.readouterr().err
