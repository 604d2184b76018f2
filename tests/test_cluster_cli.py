"""cluster.py end to end on a small panel, through the real command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "cluster.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def small_panel(n=900, seed=0):
    """8 features of 2 families (AR(1) φ=0.3 and random walks) + a dummy + targets."""
    rng = np.random.default_rng(seed)
    cols = {"date_id": np.arange(n), "D1": rng.integers(0, 3, n).astype(float)}
    for i in range(4):
        e = rng.standard_normal(n)
        x = np.zeros(n)
        for t in range(1, n):
            x[t] = 0.3 * x[t - 1] + e[t]
        cols[f"E{i + 1}"] = x * (i + 1)
        cols[f"M{i + 1}"] = np.cumsum(rng.standard_normal(n)) * 10**i
    cols["forward_returns"] = rng.standard_normal(n) * 0.01
    cols["risk_free_rate"] = np.full(n, 1e-4)
    cols["market_forward_excess_returns"] = cols["forward_returns"] - 1e-4
    f = pd.DataFrame(cols)
    f.loc[:150, "M4"] = np.nan
    return f


@pytest.mark.e2e
def test_cluster_cli_end_to_end_and_deterministic(tmp_path):
    csv = tmp_path / "train.csv"
    small_panel().to_csv(csv, index=False)
    docs = []
    for run in ("a", "b"):
        r = run_cli(
            "data=csv",
            f"data.path={csv}",
            "data.window_size=20",
            "clustering.k_max=4",
            f"hydra.run.dir={tmp_path / run}",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        out = tmp_path / run
        for name in (
            "clusters.json",
            "feature_stats.csv",
            "k_selection.png",
            "feature_map.png",
            "cluster_examples.png",
        ):
            assert (out / name).stat().st_size > 0, name
        docs.append((out / "clusters.json").read_bytes())
        assert "Cluster" in r.stdout and "Strategy" in r.stdout
    assert docs[0] == docs[1]  # byte-identical
    doc = json.loads(docs[0])
    assert doc["selection"]["k"] == 2
    # K = 2 sits on k_min: reported, and the only merge list is empty (4 + 4 features).
    assert doc["selection"]["at_boundary"] is True and doc["merges"] == []
    assert "sits on the k_min end" in r.stderr + r.stdout
    groups = {frozenset(c["features"]): c["type"] for c in doc["clusters"]}
    assert groups == {
        frozenset({"E1", "E2", "E3", "E4"}): "mean_reverting",
        frozenset({"M1", "M2", "M3", "M4"}): "random_walk",
    }
    assert doc["excluded"]["D1"].startswith("discrete")
    assert doc["source"]["rows"] == 900 and len(doc["source"]["sha256"]) == 64
    assert set(doc["statistics"]["features"]) == {f"E{i}" for i in range(1, 5)} | {
        f"M{i}" for i in range(1, 5)
    }
    for t in doc["targets"]:
        assert t not in doc["statistics"]["features"] and t not in doc["excluded"]


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["missing", "dupes"])
def test_cluster_cli_bad_input_writes_nothing(tmp_path, case):
    csv = tmp_path / "train.csv"
    if case == "dupes":
        f = small_panel()
        f.loc[5, "date_id"] = 4
        f.to_csv(csv, index=False)
    r = run_cli("data=csv", f"data.path={csv}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 2
    assert str(csv) in r.stderr
    assert ("file not found" if case == "missing" else "duplicate date_id") in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_cluster_cli_noise_knobs_on_the_command_line(tmp_path):
    """data.noise_scale / data.noise_dist reach the generator and name the cached file."""
    r = run_cli(
        "data.n_rows=600",
        "data.window_size=20",
        "data.noise_scale=5",
        "data.noise_dist=gaussian",
        "clustering.criterion=stability",
        "clustering.k_max=6",
        "plots=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    csv = tmp_path / "outputs" / "data" / "synthetic_n600_seed0_noise5_gaussian.csv"
    assert (
        csv.exists() and not (tmp_path / "outputs" / "data" / "synthetic_n600_seed0.csv").exists()
    )
    truth = json.loads(csv.with_name(csv.stem + "_truth.json").read_text())
    assert (truth["noise_scale"], truth["noise_dist"]) == (5.0, "gaussian")
    doc = json.loads((tmp_path / "run" / "clusters.json").read_text())
    assert doc["source"]["path"].endswith(csv.name)
    assert doc["selection"]["criterion"] == "stability"
    assert min(c["n_features"] for c in doc["clusters"]) >= 3
