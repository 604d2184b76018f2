"""Direct tests of the artifacts layer (artifacts.py) and safe checkpoint reading."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch

from mamba_denoiser import artifacts
from mamba_denoiser.checkpoint import load_checkpoint, resolve_checkpoint
from mamba_denoiser.errors import CheckpointError, ClustersError, ConfigError


def _panel(sha="a" * 64, bounds=None):
    bounds = bounds or {"train": (0, 70), "val": (80, 90), "test": (95, 100)}
    return SimpleNamespace(sha256=sha, source="data.csv", bounds=bounds)


def test_newest_sweep_is_the_last_one_with_a_summary(tmp_path):
    root = tmp_path / "train_multirun"
    for name, has_summary in (
        ("2026-01-01_00-00-00", True),
        ("2026-02-01_00-00-00", True),
        ("2026-03-01_00-00-00", False),
    ):
        job = root / name / "c0"
        job.mkdir(parents=True)
        if has_summary:
            (job / "summary.json").write_text("{}")
    assert artifacts.find_latest_sweep(tmp_path).name == "2026-02-01_00-00-00"
    with pytest.raises(ConfigError, match="no training sweep"):
        artifacts.find_latest_sweep(tmp_path / "elsewhere")


def test_checkpoints_of_usable_runs_only_resolved_beside_their_summary(tmp_path):
    """A copied sweep reads its own files; failed runs are not served; no summary: every
    best*.ckpt."""
    for job, status in (("c0", "ok"), ("c1", "worse_than_reference"), ("c2", "failed")):
        ck = tmp_path / job / "checkpoints" / "best.ckpt"
        ck.parent.mkdir(parents=True)
        ck.write_bytes(b"x")
        recorded = f"/original/sweep/{job}/checkpoints/best.ckpt"  # absolute, elsewhere
        (tmp_path / job / "summary.json").write_text(
            json.dumps({"status": status, "best_checkpoint": recorded})
        )
    found = artifacts._checkpoint_candidates(tmp_path)
    assert found == [tmp_path / "c0/checkpoints/best.ckpt", tmp_path / "c1/checkpoints/best.ckpt"]
    bare = tmp_path / "bare"
    (bare / "x").mkdir(parents=True)
    (bare / "x" / "best-epoch=1.ckpt").write_bytes(b"x")
    assert artifacts._checkpoint_candidates(bare) == [bare / "x" / "best-epoch=1.ckpt"]
    (tmp_path / "c0" / "summary.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        artifacts._checkpoint_candidates(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        artifacts.load_models(tmp_path / "nope")


def test_recorded_checkpoint_path_is_found_beside_the_summary(tmp_path):
    job = tmp_path / "copy" / "c3"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "best.ckpt").write_bytes(b"x")
    got = resolve_checkpoint(job / "summary.json", "/gone/sweep/c3/checkpoints/best.ckpt")
    assert got == job / "checkpoints" / "best.ckpt"
    missing = resolve_checkpoint(job / "summary.json", "/gone/other.ckpt")
    assert str(missing) == "/gone/other.ckpt"  # the caller reports it


def test_one_data_policy_fitting_is_strict_applying_warns():
    panel = _panel()
    same = {"sha256": "a" * 64, "path": "data.csv"}
    other = {"sha256": "b" * 64, "path": "old.csv"}
    artifacts.check_fit_data(same, panel, artifact="clusters.json", error=ClustersError, fix="")
    assert artifacts.other_data(same, panel) is None and artifacts.other_data({}, panel) is None
    with pytest.raises(ClustersError, match=r"clusters.json was made from old.csv .*Re-run"):
        artifacts.check_fit_data(
            other, panel, artifact="clusters.json", error=ClustersError, fix="Re-run."
        )
    assert artifacts.other_data(other, panel) == "b" * 64
    with pytest.warns(UserWarning, match="c0, c2 trained on data with sha256 bbbbbbbbbbbb"):
        artifacts.warn_other_data({"b" * 64: ["c0", "c2"]}, panel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        artifacts.warn_other_data({}, panel)  # nothing to say


def test_a_different_split_is_always_an_error():
    panel = _panel()
    rec = artifacts.split_bounds(panel)
    artifacts.check_split(rec, panel, artifact="m.ckpt", error=ConfigError, fix="")
    artifacts.check_split(None, panel, artifact="m.ckpt", error=ConfigError, fix="")
    with pytest.raises(CheckpointError, match="m.ckpt was made with split bounds .*use the same"):
        artifacts.check_split(
            {**rec, "train": [0, 60]},
            panel,
            artifact="m.ckpt",
            error=CheckpointError,
            fix="use the same data.split",
        )


def test_load_checkpoint_refuses_what_is_not_one_of_ours(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.ckpt")
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a torch file"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"cluster": {}}}, foreign)
    with pytest.raises(CheckpointError, match="missing \\['window_size', 'scaler'"):
        load_checkpoint(foreign)

    class Evil:  # an object pickle would have to run code to rebuild
        def __reduce__(self):
            return (print, ("ran",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="safe \\(weights-only\\)"):
        load_checkpoint(evil)
