"""`data.path=FILE` without `data=csv` through the real entry scripts: read as a CSV (it
used to end in "unexpected error: KeyError 'n_rows'" after a CSV run, and cluster.py
would have regenerated the built-in panel over the user's file)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mamba_denoiser.data.panel import file_sha256
from tests.helpers import WINDOW, make_small_frame, train_sweep
from tests.test_bad_input import run_script


@pytest.mark.e2e
def test_denoise_and_cluster_read_a_given_path_as_csv(tmp_path):
    (tmp_path / "sweep").mkdir()
    sweep = train_sweep(tmp_path / "sweep", directions=("causal",))
    new = tmp_path / "new.csv"
    make_small_frame(n_rows=600, seed=3).to_csv(new, index=False)
    before = file_sha256(new)
    r = run_script(
        tmp_path,
        "denoise.py",
        f"data.path={new}",
        f"checkpoints={sweep['root'] / 'causal'}",
        "plots=false",
        "gate=false",
        f"hydra.run.dir={tmp_path / 'den'}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "other data" in r.stderr + r.stdout  # the sha256 warning: another file
    out = pd.read_csv(tmp_path / "den" / "denoised.csv")
    raw = pd.read_csv(new)
    assert list(out.columns) == list(raw.columns) and len(out) == len(raw)
    assert out["D1"].equals(raw["D1"]) and not out["E1"].equals(raw["E1"])
    r = run_script(
        tmp_path,
        "cluster.py",
        f"data.path={new}",
        f"data.window_size={WINDOW}",
        "clustering.k=2",
        "plots=false",
        f"hydra.run.dir={tmp_path / 'cl'}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    source = json.loads((tmp_path / "cl" / "clusters.json").read_text())["source"]
    assert source["data_config"]["kind"] == "csv" and source["sha256"] == before
    assert file_sha256(new) == before  # the user's file was read, never rewritten
