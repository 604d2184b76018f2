"""A production refit end to end, through the stages' own job functions and configs: a
Parquet panel with real dates, cluster.py with experiment=deploy split by a date (validation
on the latest rows, no test), train.py, a saved bundle recording the split, denoise.py
bundle=FOLDER over the panel grown by new days (Parquet out, earlier rows unchanged), and
evaluate.py refusing the run for want of test rows until rows are appended."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser import Denoiser
from tests.helpers import WINDOW, compose_config, make_small_frame, train_cluster

END = "2002-11-29"  # the last train date: validation from there to the last row


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from mamba_denoiser.cluster_job import run_cluster

    root = tmp_path_factory.mktemp("deploy")
    frame = make_small_frame(n_rows=700, seed=2)
    frame["date_id"] = pd.bdate_range("2001-01-01", periods=len(frame))
    history = frame.iloc[:600]
    pq = root / "panel.parquet"
    history.to_parquet(pq, index=False)
    data = [
        "data=csv",
        f"data.path={pq}",
        f"data.window_size={WINDOW}",
        "data.anchor_len=4",
        "experiment=deploy",
        f"data.split.train_end={END}",
    ]
    run_cluster(compose_config("cluster", [*data, "clustering.k=2", "plots=false"], root / "cl"))
    clusters = root / "cl" / "clusters.json"
    doc = json.loads(clusters.read_text())
    for spec in doc["clusters"]:
        train_cluster(clusters, spec["id"], root / "sweep" / f"{spec['id']}_c{spec['id']}")
    den = Denoiser.from_run(root / "sweep")
    out = den.transform(history)
    bundle = den.save(root / "bundle")
    grown = root / "grown.parquet"
    frame.to_parquet(grown, index=False)
    return {"root": root, "doc": doc, "den": den, "out": out, "bundle": bundle, "grown": grown}


def test_the_deploy_split_validates_on_the_latest_rows_and_is_recorded(deployed):
    split = deployed["doc"]["source"]["split"]
    n_train = int((pd.bdate_range("2001-01-01", periods=600) <= END).sum())
    assert split["train_end"] == END and split["val_end"] is None
    assert split["bounds"] == {
        "train": [0, n_train],
        "val": [n_train + WINDOW, 600],
        "test": [600, 600],
    }
    den = deployed["den"]
    assert den.bounds["val"] == (n_train + WINDOW, 600)
    manifest = json.loads((deployed["bundle"] / "manifest.json").read_text())
    assert manifest["data"]["split_spec"]["train_end"] == END
    assert manifest["data"]["split_spec"]["ids"]["val"][1] == "2003-04-18T00:00:00"


def test_denoise_a_bundle_over_the_grown_parquet_panel(deployed, tmp_path):
    from mamba_denoiser.denoise_job import run_denoise

    ov = [f"bundle={deployed['bundle']}", f"data.path={deployed['grown']}", "plots=false"]
    run_denoise(compose_config("denoise", [*ov, "output_format=parquet"], tmp_path))
    out = pd.read_parquet(tmp_path / "denoised.parquet")
    raw = pd.read_parquet(deployed["grown"])
    assert len(out) == 700 and list(out.columns) == list(raw.columns)
    pd.testing.assert_series_equal(out["date_id"], raw["date_id"])
    ref = deployed["out"]  # the history's transform: earlier rows are bit-identical
    for f in deployed["den"].features:
        np.testing.assert_array_equal(out[f].to_numpy()[:600], ref[f].to_numpy())
    full = Denoiser.load(deployed["bundle"]).transform(raw)
    for f in deployed["den"].features:
        np.testing.assert_array_equal(out[f].to_numpy(), full[f].to_numpy())


def test_evaluate_refuses_the_deploy_run_until_rows_are_appended(deployed, tmp_path, capsys):
    from mamba_denoiser.evaluate_job import _check_test_rows, run_evaluate
    from mamba_denoiser.stage import load_trained

    root = deployed["root"]
    ov = [f"checkpoints={root / 'sweep'}", "plots=false", "downstream.enabled=false"]
    with pytest.raises(SystemExit):
        run_evaluate(compose_config("evaluate", ov, tmp_path / "ev"))
    assert "0 test rows" in capsys.readouterr().err
    # the grown panel: its split pinned to the trained one, the new days are test rows
    cfg = compose_config("evaluate", [*ov, f"data.path={deployed['grown']}"], tmp_path / "g")
    panel, models, _, _ = load_trained(cfg)
    assert panel.bounds["val"] == deployed["den"].bounds["val"]
    assert panel.bounds["test"] == (600 + WINDOW, 700)
    _check_test_rows(panel, models)  # enough test rows now
