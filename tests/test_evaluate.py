"""evaluate.py end to end on a small panel: report, tables, and the built-in leakage checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.evaluate_job import run_evaluate
from mamba_denoiser.train_job import register_cluster_options, run_train
from tests.conftest import make_small_frame
from tests.test_denoise import CLUSTERS, _compose, _data, write_clusters

N_ROWS = 1500


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CSV with known clean values beside it (as the built-in data has), its
    clusters.json and causal checkpoints of 2 clusters."""
    from mamba_denoiser.data.source import truth_paths

    root = tmp_path_factory.mktemp("evaluate")
    csv = root / "train.csv"
    frame = make_small_frame(n_rows=N_ROWS, seed=3)
    frame.to_csv(csv, index=False)
    clean = frame.drop(columns=["forward_returns", "risk_free_rate",
                                "market_forward_excess_returns"])  # fmt: skip
    rng = np.random.default_rng(0)
    for f in ("E1", "E2", "M1", "M2"):  # pretend the observed values carried this noise
        clean[f] = clean[f] - 0.3 * rng.standard_normal(len(clean)) * clean[f].notna()
    clean_path, truth_path = truth_paths(csv)
    clean.to_csv(clean_path, index=False)
    process = {"E1": "ou", "E2": "ou", "M1": "random_walk", "M2": "random_walk", "D1": "dummy"}
    truth_path.write_text(json.dumps({"process": process}))
    clusters = write_clusters(csv, root)
    for cid in range(len(CLUSTERS)):
        ov = [*_data(csv), f"clusters={clusters}", f"cluster=c{cid}", "experiment=smoke",
              "trainer.accelerator=cpu", "logger=csv", "trainer.max_epochs=1",
              "validate_at_init=false"]  # fmt: skip
        register_cluster_options(ov)
        run_train(_compose("train", ov, root / "sweep" / f"{cid}_c{cid}"))
    return {"root": root, "csv": csv, "clusters": clusters}


def evaluate(trained, out: Path, *overrides):
    ov = [
        *_data(trained["csv"]),
        f"clusters={trained['clusters']}",
        f"checkpoints={trained['root'] / 'sweep'}",
        "baselines=[ema,kalman_level]",
        "downstream.n_splits=2",
        "downstream.models=[ridge]",
        "gate=false",
        *overrides,
    ]
    return run_evaluate(_compose("evaluate", ov, out))


def test_report_tables_and_checks(trained, tmp_path):
    res = evaluate(trained, tmp_path / "run")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Leakage checks" in report and "passed: future perturbation" in report
    assert "## Quality against the known clean signal" in report
    assert "## Forecasting the raw forward return" in report
    tabs = res["tables"]
    q = tabs["snr_causal_by_feature"]
    assert set(q.index) == {"E1", "E2", "M1", "M2"}
    assert (q["raw"] == 0).all()  # the raw reference is 0 dB by definition
    assert {"causal_posterior_mean", "ema (causal)", "kalman_level (causal)"} <= set(q.columns)
    by_type = tabs["snr_causal_by_type"]
    assert set(by_type.index) == {"mean_reverting", "random_walk"}
    ds = tabs["downstream"]
    assert {"raw", "denoised (causal_posterior_mean)"} <= set(ds["features"])
    for png in ("snr_causal_by_type.png", "cumulative_returns.png", "examples.png"):
        assert (tmp_path / "run" / "plots" / png).stat().st_size > 0
    assert (tmp_path / "run" / "tables" / "snr_causal_by_type.csv").exists()


def test_a_centred_filter_posing_as_causal_stops_the_run(trained, tmp_path, monkeypatch, capsys):
    """The leakage checks run every time: a denoiser that looks ahead is caught."""
    import mamba_denoiser.inference as inference

    real = inference.denoise_cluster

    def centred(model, raw, **kw):
        res = real(model, raw, **kw)
        smooth = pd.DataFrame(raw).rolling(5, center=True, min_periods=1).mean().to_numpy()
        res.mean[:] = np.where(np.isnan(raw), np.nan, smooth)
        return res

    monkeypatch.setattr(inference, "denoise_cluster", centred)
    with pytest.raises(SystemExit):
        evaluate(trained, tmp_path / "run", "methods=[{name: cheat, sampler: posterior_mean, "
                 "mode: causal}]", "leakage.perturbation_methods=[cheat]")  # fmt: skip
    err = capsys.readouterr().err
    assert "leakage check failed" in err and "looks ahead" in err
    assert not (tmp_path / "run").exists()
