"""sweep.py: the multirun table of every job's summary.json, and the sweep's exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mamba_denoiser.sweep import (
    BEST_IS_LAST_NOTE,
    SweepSummary,
    collect_summaries,
    failure_line,
    write_summary_table,
)


def _job(sweep: Path, name: str, summary: dict | None, hydra_dir: bool = True) -> Path:
    d = sweep / name
    d.mkdir(parents=True)
    if hydra_dir:
        (d / ".hydra").mkdir()
    if summary is not None:
        (d / "summary.json").write_text(json.dumps({"job": name, **summary}))
    return d


def _ok(cid: int, **kw) -> dict:
    return {
        "status": "ok",
        "cluster_id": cid,
        "type": "mean_reverting",
        "n_features": 3,
        "epochs": 8,
        "init_val_noise_mse": 1.0,
        "best_val_noise_mse": 0.2,
        "val_noise_mse_iid_baseline": 0.3,
        "best_checkpoint": "",
        "best_is_last_epoch": False,
        **kw,
    }


@pytest.fixture
def sweep(tmp_path) -> Path:
    s = tmp_path / "sweep"
    _job(s, "0_c0", _ok(0, best_is_last_epoch=True))
    _job(s, "1_c1", _ok(1, status="worse_than_reference", best_val_noise_mse=0.4))
    _job(
        s,
        "2_c2",
        {
            "status": "failed",
            "cluster_id": 2,
            "type": "trending",
            "error": "training loss is nan at epoch 0 | step 0\nsecond line",
            "exit_code": 2,
        },
    )
    _job(s, "3_c3", None)  # a job killed from outside: its directory, no summary.json
    _job(s, "not_a_job", None, hydra_dir=False)  # ignored
    (s / "multirun.yaml").write_text("{}")
    return s


def test_table_lists_every_status_and_the_notes(sweep):
    rows = collect_summaries(sweep)
    assert [(r["cluster_id"], r["status"]) for r in rows] == [
        (0, "ok"),
        (1, "worse_than_reference"),
        (2, "failed"),
        (3, "no summary.json"),
    ]
    text = write_summary_table(rows, sweep).read_text()
    lines = text.splitlines()
    table = [ln for ln in lines[2:] if ln.startswith("| c")]
    assert len(table) == 4
    assert all(ln.count("|") == lines[0].count("|") for ln in table)  # no pipe from the error
    assert table[0].startswith("| c0 | mean_reverting | 3 | 8 | 1.0000 -> 0.2000 (0.3000) | -33% |")
    assert BEST_IS_LAST_NOTE in table[0] and BEST_IS_LAST_NOTE not in table[1]
    assert "| worse_than_reference |" in table[1] and "+33%" in table[1]
    assert "| failed: training loss is nan at epoch 0 / step 0 second line" in table[2]
    assert "| no summary.json |" in table[3]
    assert "Failed: 2 of 4 training job(s) failed: c2 (training loss is nan" in text
    assert "c3 (no summary.json)" in text
    assert "Best val noise MSE above the i.i.d. reference: c1" in text
    assert "Best at the last epoch (more epochs would likely help): c0" in text


def test_failure_line_is_empty_without_failures():
    rows = [_ok(0), _ok(1, status="worse_than_reference"), _ok(2, status="interrupted")]
    assert failure_line(rows) == ""


def _config(sweep: Path):
    return OmegaConf.create({"task_name": "train", "hydra": {"sweep": {"dir": str(sweep)}}})


def test_callback_writes_the_table_then_exits_nonzero_naming_the_failures(sweep, capsys):
    with pytest.raises(SystemExit) as exc:
        SweepSummary().on_multirun_end(_config(sweep))
    assert exc.value.code == 1  # c3 has no summary, so no exit code: treated as unexpected
    assert (sweep / "summary.md").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 2 of 4 training job(s) failed: c2 (")
    assert "c3" in err[0] and str(sweep / "summary.md") in err[0]


def test_callback_exit_code_two_for_user_errors_and_none_without_failures(tmp_path):
    s = tmp_path / "s"
    _job(s, "0_c0", _ok(0))
    SweepSummary().on_multirun_end(_config(s))  # no failure: returns
    assert (s / "summary.md").exists()
    _job(s, "1_c1", {"status": "failed", "cluster_id": 1, "error": "bad", "exit_code": 2})
    with pytest.raises(SystemExit) as exc:
        SweepSummary().on_multirun_end(_config(s))
    assert exc.value.code == 2
    assert "| c1 | ? | ? | - |" in (s / "summary.md").read_text()


def test_callback_without_jobs_does_nothing(tmp_path):
    SweepSummary().on_multirun_end(_config(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


def test_callback_ignores_other_tasks_multiruns(tmp_path):
    """cluster.py -m has no training summaries: nothing to table, no failure reported."""
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    cfg = OmegaConf.create({"task_name": "cluster", "hydra": {"sweep": {"dir": str(tmp_path)}}})
    SweepSummary().on_multirun_end(cfg)
    assert not (tmp_path / "summary.md").exists()
