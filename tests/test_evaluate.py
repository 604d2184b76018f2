"""evaluate.py end to end on a small panel: report, tables, and the built-in leakage checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.evaluate_job import run_evaluate
from tests.helpers import CLUSTERS, make_small_panel, train_cluster, write_clusters
from tests.helpers import compose_config as _compose
from tests.helpers import data_overrides as _data

N_ROWS = 1500
pytestmark = pytest.mark.slow  # trains a sweep and runs the whole evaluation


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CSV with known clean values beside it (as the built-in data has), its
    clusters.json and causal checkpoints of 2 clusters."""
    from mamba_denoiser.data.source import truth_paths

    root = tmp_path_factory.mktemp("evaluate")
    csv = root / "train.csv"
    frame, clean = make_small_panel(n_rows=N_ROWS, seed=3)  # the real clean values
    frame.to_csv(csv, index=False)
    clean_path, truth_path = truth_paths(csv)
    clean.to_csv(clean_path, index=False)
    process = {"E1": "ou", "E2": "ou", "M1": "random_walk", "M2": "random_walk"}
    truth_path.write_text(json.dumps({"process": process}))
    clusters = write_clusters(csv, root)
    for cid in range(len(CLUSTERS)):
        train_cluster(clusters, cid, root / "sweep" / f"{cid}_c{cid}", *_data(csv))
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
    assert "## Leakage checks" in report and "exact, end to end" in report
    assert "decisions held" in report and "look-ahead" in report and "pooled |z|" in report
    assert "exact, future missingness" in report and "exact, shorter panel" in report
    assert "## Quality against the known clean signal" in report
    assert "## Forecasting the raw forward return" in report
    tabs = res["tables"]
    q = tabs.snr_causal_by_feature
    assert set(q.index) == {"E1", "E2", "M1", "M2"}
    assert (q["raw"] == 0).all()  # the raw reference is 0 dB by definition
    anchor = "best classical (val SURE)"
    assert {"causal_posterior_mean", anchor, "ema (causal)", "kalman_level (causal)"} <= set(
        q.columns
    )
    # each candidate family alone is reported beside the mix
    assert any(c.startswith("causal_posterior_mean: kalman alone") for c in q.columns)
    # the anchor picks, per feature, raw or one baseline or the robust filter: its gain is
    # that one's (the robust filter's: the robust candidate alone, the same fits and laws)
    ch = tabs.choices[f"{anchor}: chosen"]
    col = {"robust": "causal_posterior_mean: robust alone"}
    for f in q.index:
        want = 0.0 if ch[f] == "raw" else q.loc[f, col.get(ch[f], f"{ch[f]} (causal)")]
        assert q.loc[f, anchor] == pytest.approx(want, abs=1e-9)
    by_family = tabs.snr_causal_by_family
    assert set(by_family.index) == {"ou", "random_walk"}  # the planted families
    by_type = tabs.snr_causal_by_type
    assert set(by_type.index) == {"mean_reverting", "random_walk"}
    noise = tabs.noise
    assert noise["sigma"].notna().all() and noise["source"].str.len().gt(0).all()
    ds = tabs.downstream
    assert {"raw", "denoised (causal_posterior_mean)", f"anchor ({anchor})"} <= set(ds["features"])
    lo, hi = ds.attrs["scored_rows"]
    test0 = int(N_ROWS * 0.85)  # the default 70/15/15 split
    assert test0 - 1 <= lo and hi == N_ROWS  # every scored row inside the test split
    assert "inside the test split (from row" in report
    for png in ("snr_causal_by_family.png", "cumulative_returns.png", "examples.png"):
        assert (tmp_path / "run" / "plots" / png).stat().st_size > 0
    assert (tmp_path / "run" / "tables" / "snr_causal_by_family.csv").exists()


def test_own_clean_values_and_families(trained, tmp_path):
    """truth=PATH (some features) and truth_families=PATH give the quality tables."""
    clean = pd.read_csv(trained["csv"].parent / "train_clean.csv")
    own = clean[["date_id", "E1", "M1"]]
    own.to_csv(tmp_path / "mine.csv", index=False)
    (tmp_path / "fam.json").write_text(json.dumps({"E1": "fast", "M1": "slow"}))
    res = evaluate(
        trained,
        tmp_path / "run",
        f"truth={tmp_path / 'mine.csv'}",
        f"truth_families={tmp_path / 'fam.json'}",
        "downstream.enabled=false",
    )
    tabs = res["tables"]
    assert set(tabs.snr_causal_by_feature.index) == {"E1", "M1"}
    assert set(tabs.snr_causal_by_family.index) == {"fast", "slow"}
    bad = own.copy()
    bad["date_id"] = bad["date_id"] + 1  # ids that do not match the data
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SystemExit):
        evaluate(trained, tmp_path / "run2", f"truth={tmp_path / 'bad.csv'}")
    assert not (tmp_path / "run2").exists()


def test_a_sigma_fitted_on_all_rows_is_stopped(trained, tmp_path, monkeypatch, capsys):
    """The end-to-end perturbation re-fits σ: one that reads the test rows moves the past."""
    import mamba_denoiser.inference.cluster as cluster

    real = cluster.plan_noise

    def all_rows(raw, train, sigma=None):
        return real(raw, (0, raw.shape[0]), sigma)  # the leak: every row, not the train rows

    monkeypatch.setattr(cluster, "plan_noise", all_rows)
    with pytest.raises(SystemExit):
        evaluate(trained, tmp_path / "run")
    err = capsys.readouterr().err
    assert "leakage check failed" in err and "changing rows >" in err
    assert not (tmp_path / "run").exists()


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
        evaluate(
            trained,
            tmp_path / "run",
            "methods=[{name: cheat, sampler: posterior_mean, mode: causal}]",
            "leakage.perturbation_methods=[cheat]",
        )
    err = capsys.readouterr().err
    assert "leakage check failed" in err and "looks ahead" in err
    assert not (tmp_path / "run").exists()
