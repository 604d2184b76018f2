"""launch.py: free GPUs for parallel jobs, ranks (Lightning's, also under Slurm), DDP inside a
multirun refused, the preemption guard, and the Slurm preset."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
import torch

from mamba_denoiser import launch
from mamba_denoiser.errors import Preempted
from tests.helpers import write_clusters
from tests.test_train import ROOT, TRAIN_CLUSTERS, base_overrides

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


@pytest.fixture
def clusters_json(tmp_path, small_csv):
    return write_clusters(small_csv, tmp_path, TRAIN_CLUSTERS)


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    """A machine with 2 visible GPUs (none here: the count is mocked), locks under tmp."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(launch.GPU_LOCK_ENV, str(tmp_path / "locks"))
    return tmp_path / "locks"


# ---- free GPUs --------------------------------------------------------------------------


def test_parallel_jobs_take_free_gpus_not_job_number_modulo(two_gpus):
    """Job 2 of a sweep used to get GPU 2 % 2 = 0 even while job 0 was still on it and
    GPU 1 was idle; now each job takes the lowest GPU no running job holds."""
    sweep = [launch.Launch(multirun=True, launcher=JOBLIB, job_num=k) for k in range(3)]
    dev0, lease0 = launch.job_devices(1, "gpu", sweep[0])
    dev1, lease1 = launch.job_devices("auto", "auto", sweep[1])
    assert (dev0, dev1) == ([0], [1])
    lease1.release()  # job 1 finishes first; job 0 is still on GPU 0
    dev2, lease2 = launch.job_devices(1, "gpu", sweep[2])
    assert dev2 == [1]
    lease0.release()
    lease2.release()


def test_all_gpus_held_then_a_job_waits_for_one(two_gpus):
    held = [launch.acquire_gpu(2, two_gpus, wait_s=0) for _ in range(2)]
    assert [h.index for h in held] == [0, 1]
    assert launch.acquire_gpu(2, two_gpus, wait_s=0) is None
    got = {}
    waiter = threading.Thread(
        target=lambda: got.setdefault("lease", launch.acquire_gpu(2, two_gpus, poll_s=0.01))
    )
    waiter.start()
    held[1].release()
    waiter.join()
    assert got["lease"].index == 1
    got["lease"].release()
    held[0].release()


def test_a_killed_jobs_gpu_is_free_again(two_gpus):
    """The lock is the OS's: a job that crashes or is killed leaves no stale lock."""
    two_gpus.mkdir(parents=True)
    path = two_gpus / "gpu-0.lock"
    hold = (
        "import fcntl, sys, time\n"
        "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with launch.acquire_gpu(2, two_gpus, wait_s=0) as lease:
            assert lease.index == 1  # GPU 0 is held by the other process
    finally:
        proc.kill()
        proc.wait()
    with launch.acquire_gpu(2, two_gpus, wait_s=0) as lease:
        assert lease.index == 0


def test_lock_names_follow_cuda_visible_devices(two_gpus, monkeypatch):
    """Jobs that see different GPU subsets still agree on which physical GPU is held."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    with launch.acquire_gpu(2, two_gpus, wait_s=0) as lease:
        assert lease.index == 0 and lease.path.name == "gpu-3.lock"


def test_single_runs_and_cpu_jobs_keep_their_devices(two_gpus):
    single = launch.Launch()
    assert launch.job_devices(1, "gpu", single) == (1, None)
    sweep = launch.Launch(multirun=True, launcher=JOBLIB)
    assert launch.job_devices(1, "cpu", sweep) == (1, None)
    assert launch.job_devices(2, "gpu", sweep) == (2, None)  # refused elsewhere (DDP)


# ---- ranks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, rank",
    [
        ({}, 0),
        ({"SLURM_PROCID": "3"}, 3),  # a Slurm task
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "0"}, 0),
        ({"RANK": "2", "SLURM_PROCID": "0"}, 2),  # torchrun inside an allocation
        ({"LOCAL_RANK": "1"}, 1),  # a child Lightning started
        ({"LOCAL_RANK": "1", "SLURM_PROCID": "0"}, 1),  # Lightning's order: LOCAL_RANK first
        ({"JSM_NAMESPACE_RANK": "1"}, 1),  # LSF
    ],
)
def test_rank_before_the_trainer_is_lightnings(env, rank, monkeypatch):
    from lightning.fabric.utilities.rank_zero import _get_rank

    assert launch.launched_rank(env) == rank
    for key in (*launch.RANK_KEYS, "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert (_get_rank() or 0) == rank  # what rank_zero_only.rank is read from


def test_a_second_nodes_first_process_is_not_rank_zero():
    """Lightning's own multi-node launch: LOCAL_RANK 0 on NODE_RANK 1 is global rank
    `devices`, though Lightning's pre-Trainer reading says 0."""
    assert launch.launched_rank({"LOCAL_RANK": "0", "NODE_RANK": "1"}) != 0
    assert launch.launched_rank({"NODE_RANK": "1"}) != 0


def test_slurm_tasks_get_lightnings_slurm_environment_without_its_requeue():
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    assert launch.trainer_plugins({}) == []
    assert launch.trainer_plugins({"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "bash"}) == []
    (env,) = launch.trainer_plugins({"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "train"})
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# counts every rank-zero-only side effect of a training run, per SLURM_PROCID
COUNTING_WRAPPER = """
import os, runpy, shutil, sys
from pathlib import Path

def note(what):
    with open(os.environ["SIDE_EFFECTS"], "a") as f:
        f.write(f"{os.environ['SLURM_PROCID']} {what}\\n")

import lightning.fabric.plugins.io.torch_io as tio
import mamba_denoiser.io as io
import mamba_denoiser.run_record as rr

def wrap(owner, name, describe):
    orig = getattr(owner, name)
    def wrapped(*a, **k):
        note(describe(*a, **k))
        return orig(*a, **k)
    setattr(owner, name, wrapped)

wrap(io, "atomic_write_json", lambda path, doc, *a, **k: f"{Path(path).name} {doc.get('status')}")
wrap(rr, "log_hparams", lambda *a, **k: "hparams")
wrap(shutil, "rmtree", lambda path, *a, **k: "rmtree")
wrap(tio.TorchCheckpointIO, "save_checkpoint", lambda self, c, path, *a, **k: Path(path).name)
if os.environ.get("NAN_AT_STEP"):
    from mamba_denoiser.training import DenoiserModule
    orig = DenoiserModule.diffusion_loss
    def poisoned(self, x0, mask, t=None, eps=None):
        loss, terms = orig(self, x0, mask, t, eps)
        late = self.training and self.global_step >= int(os.environ["NAN_AT_STEP"])
        return (loss * float("nan") if late else loss), terms
    DenoiserModule.diffusion_loss = poisoned
sys.argv[0] = sys.argv.pop(1)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _slurm_ddp(tmp_path, small_csv, clusters_json, *extra, nan_at_step=None):
    """train.py trainer=ddp_cpu as 2 Slurm tasks of one node would run it (srun
    --ntasks-per-node=2), both processes started here with Slurm's variables."""
    wrapper = tmp_path / "count_side_effects.py"
    wrapper.write_text(COUNTING_WRAPPER)
    effects = tmp_path / "side_effects.txt"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in (*launch.RANK_KEYS, "NODE_RANK")}
        env.update(
            SLURM_NTASKS="2",
            SLURM_NTASKS_PER_NODE="2",
            SLURM_NNODES="1",
            SLURM_NODEID="0",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_JOB_ID="4242",
            SLURM_JOB_NAME="train",
            SLURM_NODELIST="127.0.0.1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            SIDE_EFFECTS=str(effects),
            PYTHONPATH=str(ROOT / "src"),
            OMP_NUM_THREADS="1",
        )
        if nan_at_step is not None:
            env["NAN_AT_STEP"] = str(nan_at_step)
        cmd = [
            sys.executable,
            str(wrapper),
            str(ROOT / "train.py"),
            *base_overrides(tmp_path, small_csv, clusters_json),
            "trainer=ddp_cpu",
            "batch_size=8",
            "logger=tensorboard",
            f"hydra.run.dir={tmp_path / 'runs' / 'ddp'}",
            *extra,
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outs = [p.communicate(timeout=600) for p in procs]
    lines = effects.read_text().splitlines() if effects.is_file() else []
    return [p.returncode for p in procs], [e.decode() for _, e in outs], lines


@pytest.mark.e2e
@pytest.mark.slow
def test_slurm_ddp_ranks_do_each_rank_zero_side_effect_once(tmp_path, small_csv, clusters_json):
    codes, errs, effects = _slurm_ddp(tmp_path, small_csv, clusters_json, "trainer.max_epochs=2")
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert all(line.startswith("0 ") for line in effects), effects  # rank 0 only
    assert [e for e in effects if "summary.json" in e] in (
        ["0 summary.json ok"],
        ["0 summary.json worse_than_reference"],  # a tiny model may do no better than that
    ), effects
    assert effects.count("0 hparams") == 1
    assert "0 rmtree" not in effects
    # Lightning's checkpoint writes are its own rank-zero decisions: last.ckpt once an epoch
    assert effects.count("0 last.ckpt") == 2, effects
    s = json.loads((tmp_path / "runs/ddp/summary.json").read_text())
    assert s["global_step"] == 8  # 2 epochs of 4 steps


@pytest.mark.e2e
@pytest.mark.slow
def test_slurm_ddp_failure_is_recorded_once_by_rank_zero(tmp_path, small_csv, clusters_json):
    """Both ranks fail after the first checkpoint (NaN loss in epoch 1, from step 4): rank
    zero, as the Trainer knows it, records the failure; the folder and checkpoints stay."""
    codes, errs, effects = _slurm_ddp(
        tmp_path, small_csv, clusters_json, "trainer.max_epochs=3", nan_at_step=4
    )
    assert codes == [2, 2], errs[0][-3000:] + errs[1][-3000:]
    failed = [e for e in effects if "summary.json" in e]
    assert failed == ["0 summary.json failed"], effects
    assert not any(e.endswith("rmtree") for e in effects)
    assert (tmp_path / "runs/ddp/checkpoints/last.ckpt").is_file()


@pytest.mark.e2e
@pytest.mark.slow
def test_slurm_ddp_early_failure_deletes_the_run_folder_once(tmp_path, small_csv, clusters_json):
    """A failure before the Trainer exists: the launcher's rank (SLURM_PROCID) decides. The
    failure is the data (a file with no id column), read after the run folder exists; a
    wrong config value fails before, with no folder to delete (config_schema.py)."""
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    codes, errs, effects = _slurm_ddp(tmp_path, bad, clusters_json)
    assert codes == [2, 2], errs
    assert effects == ["0 rmtree"]
    assert all("bad.csv" in e.strip().splitlines()[-1] for e in errs), errs


# ---- DDP inside a multirun ---------------------------------------------------------------


def test_ddp_that_lightning_would_spawn_is_refused_in_a_multirun():
    sweep = launch.Launch(multirun=True, launcher="hydra._internal.BasicLauncher")
    ddp_cpu = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    line = launch.spawned_ddp_problem(ddp_cpu, sweep, env={})
    assert line.startswith("trainer.devices=2 (x num_nodes=1: 2 DDP processes) inside a multirun")
    assert "hydra/launcher=joblib" in line and "hydra/launcher=slurm" in line
    assert launch.spawned_ddp_problem(ddp_cpu, launch.Launch(), env={}) is None  # no -m
    assert launch.spawned_ddp_problem({"devices": 1}, sweep, env={}) is None
    assert launch.spawned_ddp_problem({"devices": "auto"}, sweep, env={}) is None  # one GPU
    assert launch.spawned_ddp_problem({"devices": [0, 1]}, sweep, env={}) is not None
    assert launch.spawned_ddp_problem({"devices": "0,1"}, sweep, env={}) is not None
    assert launch.spawned_ddp_problem({"devices": 1, "num_nodes": 2}, sweep, env={}) is not None
    # processes started by Slurm (the Slurm launcher, or a task's variables), or torchrun
    slurm = launch.Launch(multirun=True, launcher=SLURM)
    assert launch.spawned_ddp_problem(ddp_cpu, slurm, env={}) is None
    assert launch.spawned_ddp_problem(ddp_cpu, sweep, env={"SLURM_NTASKS": "2"}) is None
    assert launch.spawned_ddp_problem(ddp_cpu, sweep, env={"TORCHELASTIC_RUN_ID": "x"}) is None


@pytest.mark.e2e
def test_ddp_multirun_is_refused_in_one_line_before_any_job(tmp_path, small_csv, clusters_json):
    """train.py -m cluster=c0,c1 trainer=ddp_cpu used to leave a stray second sweep (each
    DDP child re-ran the whole sweep); now nothing starts and nothing is written."""
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            *base_overrides(tmp_path, small_csv, clusters_json),
            "cluster=c0,c1",
            "trainer=ddp_cpu",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: trainer.devices=2"), r.stderr
    assert not sweep.exists() and not (tmp_path / "outputs" / "train_multirun").exists()


# ---- preemption ---------------------------------------------------------------------------


def test_preemption_guard_notes_the_signal_and_hands_it_to_submitit_later():
    calls = []

    class SignalHandler:  # stands in for submitit.core.job_environment.SignalHandler
        def checkpoint_and_try_requeue(self, signum, frame):
            calls.append(signum)

    handler = SignalHandler().checkpoint_and_try_requeue
    before = signal.signal(signal.SIGUSR2, handler)
    try:
        assert launch.PreemptionGuard.install() is None  # not submitit's: no guard
        guard = launch.PreemptionGuard.install(is_requeue_handler=lambda h: h == handler)
        assert guard is not None and not guard.requested()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert guard.requested() and calls == []  # noted only: training goes on to a batch end
        guard.requeue()
        assert calls == [signal.SIGUSR2] and signal.getsignal(signal.SIGUSR2) == handler
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_training_stops_at_the_batch_end_after_the_signal():
    from mamba_denoiser.callbacks import StopWhenPreempted

    class Strategy:
        def reduce_boolean_decision(self, decision, all=True):
            return decision  # one process: its own flag

    class Trainer:
        strategy, current_epoch, global_step = Strategy(), 1, 6

    flag = {"on": False}
    cb = StopWhenPreempted(lambda: flag["on"])
    cb.on_train_batch_end(Trainer(), None, None, None, 0)
    flag["on"] = True
    with pytest.raises(Preempted, match="epoch 1, step 6"):
        cb.on_train_batch_end(Trainer(), None, None, None, 1)


# ---- the Slurm preset ---------------------------------------------------------------------


def test_slurm_preset_ties_tasks_and_gpus_to_the_trainer(tmp_path, small_csv, clusters_json):
    from tests.test_train import make_cfg

    cfg = make_cfg(
        tmp_path,
        small_csv,
        clusters_json,
        "hydra/launcher=slurm",
        "trainer.devices=4",
        "trainer.num_nodes=2",
    )
    lc = cfg.hydra.launcher
    assert lc._target_ == SLURM
    assert (lc.tasks_per_node, lc.gpus_per_node, lc.nodes) == (4, 4, 2)  # tasks = devices
    assert lc.max_num_timeout > 0 and lc.signal_delay_s > 0 and lc.array_parallelism > 0
    assert list(lc.setup) == [] and cfg.ckpt_path == "auto"  # a requeued job resumes
