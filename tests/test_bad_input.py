"""Bad input through the entry scripts: one line on stderr naming the option or file and
the fix, exit code 2, no traceback (README "Failures"). No training: fake checkpoints and
tiny CSVs in tmp_path; every run's outputs go under tmp_path (MAMBA_DENOISER_ROOT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.checkpoint import resolve_checkpoint
from mamba_denoiser.denoise_job import _sigma_overrides
from mamba_denoiser.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path: Path, script: str, *args: str, **env: str):
    e = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    e.update(MAMBA_DENOISER_ROOT=str(tmp_path), OMP_NUM_THREADS="1", **env)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=tmp_path,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(r) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "script, override, words",
    [
        ("denoise.py", "sampler=foo", ["sampler/foo", "sampler=", "posterior_mean", "sdedit"]),
        ("cluster.py", "clustering.kk=3", ["clustering.kk", "clustering.k?", "--cfg job"]),
        ("evaluate.py", "gatee=false", ["gatee", "did you mean gate?", "+gatee=false"]),
    ],
)
def test_hydra_composition_errors_are_one_line(tmp_path, script, override, words):
    line = one_error_line(run_script(tmp_path, script, override))
    assert all(w in line for w in words), line
    assert not (tmp_path / "outputs").exists()  # nothing written


@pytest.mark.e2e
def test_composition_error_keeps_hydra_full_error_and_multirun(tmp_path):
    r = run_script(tmp_path, "cluster.py", "clustering.kk=3", HYDRA_FULL_ERROR="1")
    assert r.returncode == 1 and "Traceback" in r.stderr  # the user asked for it
    line = one_error_line(run_script(tmp_path, "cluster.py", "-m", "clustering.kk=3,4"))
    assert "clustering.kk" in line
    assert not list(tmp_path.glob("outputs/cluster_multirun/*"))  # no empty sweep folder


@pytest.mark.e2e
def test_text_file_named_best_ckpt(tmp_path):
    ck = tmp_path / "sweep" / "best.ckpt"
    ck.parent.mkdir()
    ck.write_text("not a checkpoint\n")
    line = one_error_line(run_script(tmp_path, "denoise.py", f"checkpoints={ck.parent}"))
    assert str(ck) in line and "not a torch file" in line and "train.py" in line


@pytest.mark.e2e
def test_150_row_csv_names_the_rows_needed(tmp_path):
    rng = np.random.default_rng(0)
    n = 150
    frame = pd.DataFrame({"date_id": np.arange(n)})
    for i in range(4):
        frame[f"E{i}"] = np.cumsum(rng.standard_normal(n))
    for t in ("forward_returns", "risk_free_rate", "market_forward_excess_returns"):
        frame[t] = rng.standard_normal(n)
    csv = tmp_path / "short.csv"
    frame.to_csv(csv, index=False)
    line = one_error_line(
        run_script(tmp_path, "cluster.py", "data=csv", f"data.path={csv}", "plots=false")
    )
    assert len(line) < 400, line
    for w in (str(csv), "150 rows", "at least 800 rows", "data.window_size", "data.split.embargo"):
        assert w in line, line
    assert not list(tmp_path.glob("outputs/cluster/*/*"))


@pytest.mark.parametrize("given", [-1, "foo", [1, 2], {"E1": -2}, {"E1": "x"}])
def test_sigma_that_is_not_a_mapping_of_stds(given):
    class Model:
        features = ["E1", "E2"]

    with pytest.raises(ConfigError, match=r"sigma[=.].*e\.g\. 'sigma=\{E1: 0\.5\}'"):
        _sigma_overrides(given, {0: Model()})
    assert _sigma_overrides(None, {0: Model()}) == {}
    assert _sigma_overrides({"E1": 0.5}, {0: Model()}) == {"E1": 0.5}


def test_copied_sweep_reads_its_own_checkpoints(tmp_path):
    original = "/elsewhere/outputs/train_multirun/2026-01-01_00-00-00/0_c0/checkpoints/best.ckpt"
    job = tmp_path / "copy" / "0_c0"
    (job / "checkpoints").mkdir(parents=True)
    summary = job / "summary.json"
    summary.write_text(json.dumps({"best_checkpoint": original}))
    beside = job / "checkpoints" / "best.ckpt"
    assert resolve_checkpoint(summary, original) == Path(original)  # nothing beside it yet
    beside.write_bytes(b"x")
    assert resolve_checkpoint(summary, original) == beside
    assert resolve_checkpoint(summary, "checkpoints/best.ckpt") == beside  # relative
    assert resolve_checkpoint(summary, "/other/place/best.ckpt") == beside  # by file name
