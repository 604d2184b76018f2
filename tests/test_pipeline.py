"""pipeline.py: the four stages with explicit artifact paths. Two pipelines on two panels
at once finish with no cross-talk; nothing is looked up as "the newest folder"."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mamba_denoiser.errors import ConfigError
from mamba_denoiser.pipeline import commands, parse, run
from tests.helpers import make_small_frame

# the smallest presets: a tiny model, a few batches, 16-row windows, 2 fixed clusters
SMALL = [
    "data.window_size=16",
    "data.anchor_len=4",
    "cluster:plots=false",
    "denoise:plots=false",
    "evaluate:plots=false",
    "cluster:clustering.k=2",
    "cluster:clustering.min_size=1",
    "train:experiment=smoke",
    "train:logger=csv",
    "train:trainer.accelerator=cpu",
    "evaluate:downstream.n_splits=2",
]


def test_every_input_path_is_explicit(tmp_path):
    run_dir, shared, own = parse(["data.path=a.csv", f"run_dir={tmp_path}", "train:batch_size=8"])
    cmds = commands(run_dir, shared, own)
    clusters = f"clusters={tmp_path / 'cluster' / 'clusters.json'}"
    assert cmds["train"][cmds["train"].index(clusters)] and "--multirun" in cmds["train"]
    assert "experiment=cpu_all_clusters" in cmds["train"]  # make run's, unless given
    assert f"hydra.sweep.dir={tmp_path / 'train'}" in cmds["train"]
    for stage in ("denoise", "evaluate"):
        assert clusters in cmds[stage] and f"checkpoints={tmp_path / 'train'}" in cmds[stage]
        assert f"hydra.run.dir={tmp_path / stage}" in cmds[stage]
    assert all("data.path=a.csv" in c for c in cmds.values())
    assert "batch_size=8" in cmds["train"] and "batch_size=8" not in cmds["denoise"]


def test_wrong_values_fail_before_any_stage_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_DENOISER_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^train: optim.lr=fast: expected a number > 0$"):
        run([f"run_dir={tmp_path / 'run'}", "train:optim.lr=fast"])
    with pytest.raises(ConfigError, match="evaluate: .*gatee"):
        run([f"run_dir={tmp_path / 'run'}", "evaluate:gatee=false"])
    with pytest.raises(ConfigError, match="cannot use 'oops'"):
        run(["oops"])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        run([f"run_dir={tmp_path / 'used'}"])
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.e2e
def test_two_pipelines_at_once_on_two_panels(tmp_path):
    panels = {}
    for name, rows, seed in (("a", 600, 1), ("b", 700, 2)):  # other rows, other values
        panels[name] = tmp_path / f"panel_{name}.csv"
        make_small_frame(n_rows=rows, seed=seed).to_csv(panels[name], index=False)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(MAMBA_DENOISER_ROOT=str(tmp_path), OMP_NUM_THREADS="1")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "mamba_denoiser.pipeline", f"data.path={csv}"]
            + [f"run_dir=runs/{name}", *SMALL],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, csv in panels.items()
    }
    logs = {name: p.communicate(timeout=1200)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, logs[name][-3000:]

    for name, csv in panels.items():
        other = panels["b" if name == "a" else "a"]
        run_dir = tmp_path / "runs" / name
        record = json.loads((run_dir / "pipeline.json").read_text())
        assert record["status"] == "ok" and list(record["stages"]) == [
            "cluster",
            "train",
            "denoise",
            "evaluate",
        ]
        source = json.loads((run_dir / "cluster" / "clusters.json").read_text())["source"]
        assert source["sha256"] == _sha(csv) and Path(source["path"]) == csv.resolve()
        jobs = sorted((run_dir / "train").glob("*_c*/summary.json"))
        assert len(jobs) == 2 and all(json.loads(j.read_text())["status"] != "failed" for j in jobs)
        from mamba_denoiser.checkpoint import load_checkpoint

        for ckpt in (run_dir / "train").glob("*_c*/checkpoints/best*.ckpt"):
            src = load_checkpoint(ckpt)["hyper_parameters"]["source"]
            assert src["sha256"] == _sha(csv)
            assert Path(src["clusters"]) == run_dir / "cluster" / "clusters.json"
        denoised = pd.read_csv(run_dir / "denoise" / "denoised.csv")
        raw = pd.read_csv(csv)
        assert list(denoised.columns) == list(raw.columns) and len(denoised) == len(raw)
        assert denoised["D1"].equals(raw["D1"])  # pass-through: this panel's, byte for byte
        report = (run_dir / "evaluate" / "report.md").read_text()
        assert csv.name in report and other.name not in report
    # nothing went where a stage run alone would look for "the newest" folder
    made = (
        {p.name for p in (tmp_path / "outputs").iterdir()}
        if (tmp_path / "outputs").exists()
        else set()
    )
    assert made <= {"cache", "data"}, made
