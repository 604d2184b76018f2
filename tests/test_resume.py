"""Resuming a run: ckpt_path=auto|last, and a run stopped and resumed ends with the same
weights as one that was never stopped (RNG, sampler, EMA, optimiser and loop states)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mamba_denoiser.train_job import run_train
from tests.helpers import write_clusters
from tests.test_train import ROOT, TRAIN_CLUSTERS, base_overrides, make_cfg

STEPS_PER_EPOCH = 4  # experiment=smoke: limit_train_batches=4


@pytest.fixture
def clusters_json(tmp_path, small_csv):
    return write_clusters(small_csv, tmp_path, TRAIN_CLUSTERS)


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sorted(sa) == sorted(sb)
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_ckpt_path_last_without_a_checkpoint_is_one_clear_line(
    tmp_path, small_csv, clusters_json, capsys
):
    cfg = make_cfg(tmp_path, small_csv, clusters_json, "ckpt_path=last")
    with pytest.raises(SystemExit) as exc:
        run_train(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ckpt_path=last: there is no ")
    assert "checkpoints/last.ckpt to resume from" in err[0] and "ckpt_path=auto" in err[0]
    assert not (tmp_path / "run").exists()


def test_resume_state_survives_a_weights_only_load(tmp_path):
    """The RNG states a checkpoint carries load with torch.load(weights_only=True), as
    checkpoint.load_checkpoint reads every checkpoint, and restore the generators."""
    import random

    import numpy as np

    from mamba_denoiser.callbacks import ResumeState

    cb = ResumeState()
    cb.init_metrics = {"val/noise_mse": 0.5}
    torch.save({"callbacks": {"ResumeState": cb.state_dict()}}, tmp_path / "x.ckpt")
    want = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    state = torch.load(tmp_path / "x.ckpt", weights_only=True)["callbacks"]["ResumeState"]
    back = ResumeState()
    back.load_state_dict(state)
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert want[2] == got[2] and back.init_metrics == {"val/noise_mse": 0.5}


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop_at_step",
    [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2],  # an epoch boundary; the middle of epoch 1
    ids=["epoch-boundary", "mid-epoch"],
)
def test_a_stopped_run_resumed_with_ckpt_path_auto_ends_with_the_same_weights(
    tmp_path, small_csv, clusters_json, monkeypatch, stop_at_step
):
    """A run killed at step k (nothing survives but its checkpoints: a KeyboardInterrupt
    before the step, as a SIGKILL would leave it), then the same command again: ckpt_path
    =auto resumes from last.ckpt (end of epoch 0) and the run ends with exactly the weights
    and validation score of a run that was never stopped (tolerance 0: the unfinished epoch
    is replayed with the generators as they were)."""
    from mamba_denoiser.training import DenoiserModule

    common = ("trainer.max_epochs=3", "head=both")
    run_train(make_cfg(tmp_path, small_csv, clusters_json, *common, run="whole"))

    orig = DenoiserModule.training_step

    def killed(self, batch, batch_idx):
        if self.global_step == stop_at_step:
            raise KeyboardInterrupt
        return orig(self, batch, batch_idx)

    monkeypatch.setattr(DenoiserModule, "training_step", killed)
    with pytest.raises(SystemExit):
        run_train(make_cfg(tmp_path, small_csv, clusters_json, *common, run="cut"))
    assert summary(tmp_path / "cut")["status"] == "interrupted"
    monkeypatch.setattr(DenoiserModule, "training_step", orig)
    run_train(make_cfg(tmp_path, small_csv, clusters_json, *common, run="cut"))  # auto

    whole, cut = summary(tmp_path / "whole"), summary(tmp_path / "cut")
    assert cut["resumed_from"].endswith("cut/checkpoints/last.ckpt")
    assert "resumed_from" not in whole
    for key in ("status", "epochs", "global_step", "best_epoch", "best_score"):
        assert cut[key] == whole[key], key
    # the first attempt's validation before training came back with the checkpoint
    for key in ("init_val_noise_mse", "init_val_predictive", "val_noise_mse_iid_baseline"):
        assert cut[key] == whole[key] is not None, key
    assert Path(cut["predictive_checkpoint"]).name == Path(whole["predictive_checkpoint"]).name
    for name in ("last.ckpt", Path(whole["best_checkpoint"]).name):
        assert_same_weights(
            tmp_path / "whole/checkpoints" / name, tmp_path / "cut/checkpoints" / name
        )


def _submitit_cli(tmp_path, small_csv, clusters_json, sweep, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            *base_overrides(tmp_path, small_csv, clusters_json),
            "cluster=c0",
            "trainer.max_epochs=3",
            "logger=csv",
            f"hydra.sweep.dir={sweep}",
            *extra,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("at", ["epoch-boundary", "mid-epoch"])
def test_submitit_requeues_a_preempted_job_which_resumes_to_the_same_weights(
    tmp_path, small_csv, clusters_json, at
):
    """hydra/launcher=submitit_local, the real path: the job gets submitit's preemption
    signal (USR2, sent to itself by a test callback at the end of epoch 0 or in the middle
    of epoch 1), stops at the next batch, submitit requeues it with the same arguments, and
    the requeued job resumes from last.ckpt in the same run folder and ends with the
    weights of an uninterrupted run."""
    marker = tmp_path / "signalled"
    epoch, batch = (0, "null") if at == "epoch-boundary" else (1, 1)
    signal_cb = [
        "+callbacks.preempt._target_=tests.signal_callback.SignalAt",
        f"+callbacks.preempt.epoch={epoch}",
        f"+callbacks.preempt.batch={batch}",
        f"+callbacks.preempt.marker={marker}",
    ]
    r = _submitit_cli(
        tmp_path,
        small_csv,
        clusters_json,
        tmp_path / "preempted",
        "hydra/launcher=submitit_local",
        *signal_cb,
    )
    logs = "".join(p.read_text() for p in sorted((tmp_path / "preempted").rglob("*.log*")))
    assert r.returncode == 0, r.stderr[-3000:] + logs[-3000:]
    assert marker.is_file()  # the signal was sent (once: the requeued job does not resend)
    assert "Requeued job" in logs and "Resuming from" in logs
    ref = _submitit_cli(tmp_path, small_csv, clusters_json, tmp_path / "whole")
    assert ref.returncode == 0, ref.stderr[-3000:]
    run, whole = tmp_path / "preempted/0_c0", tmp_path / "whole/0_c0"
    assert summary(run)["resumed_from"].endswith("0_c0/checkpoints/last.ckpt")
    for key in ("status", "epochs", "global_step", "best_score", "init_val_noise_mse"):
        assert summary(run)[key] == summary(whole)[key], key
    assert_same_weights(run / "checkpoints/last.ckpt", whole / "checkpoints/last.ckpt")
