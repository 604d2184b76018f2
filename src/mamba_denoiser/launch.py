"""Where a training job runs: its launcher, its rank, its CPU threads and its GPU, and
what happens when its launcher preempts it.

Plain arguments only: train_job reads Hydra's runtime config into a ``Launch`` (the
launcher's target and n_jobs, the job's number), and this module decides from it and the
trainer's settings. The exception is ``RefuseSpawnedDDP``, a Hydra callback, which is handed
the sweep's config by Hydra.

- Ranks: before a Trainer exists, ``launched_rank`` reads the variables Lightning's
  ``rank_zero_only.rank`` reads; once it exists, its ``global_rank`` decides.
- GPUs: the jobs of a multirun that each want one GPU take the lowest free one, held by a
  lock file (``GpuLease``) for the length of the job.
- DDP inside a multirun is refused when Lightning would start the processes itself (its
  children re-run the command line: the whole sweep); Slurm-started tasks are fine.
- Preemption (``PreemptionGuard``): submitit's requeue signal stops training at the next
  batch boundary, and submitit then requeues the job, which resumes from last.ckpt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from mamba_denoiser.errors import ConfigError

log = logging.getLogger("mamba_denoiser")


@dataclass(frozen=True)
class Launch:
    """How Hydra started this job (the defaults: a plain call, no Hydra)."""

    multirun: bool = False  # a job of a multirun (`-m`, or experiment=all_clusters)
    launcher: str = ""  # the launcher's _target_
    n_jobs: Any = -1  # the joblib launcher's n_jobs (joblib's default: -1)
    job_num: int = 0  # hydra.job.num
    sweep_dir: str | None = None

    @property
    def joblib(self) -> bool:
        return "joblib" in self.launcher.lower()


def check_accelerator(accelerator: str) -> None:
    import torch

    acc = str(accelerator).lower()
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(
            f"trainer.accelerator={acc} asks for a CUDA GPU, but {why}. Train on the CPU "
            "(drop trainer=gpu/ddp, or trainer=cpu), or on a GPU machine install the CUDA "
            "build of torch first (see README, 'GPU users')."
        )


# ---- CPU threads ------------------------------------------------------------------------


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_job(cores: int, n_jobs: int | None) -> int:
    """torch threads for each of the parallel jobs of a joblib launcher with `n_jobs`
    workers on `cores` cores, so that together they use the cores once: cores // workers,
    at least 1. As in joblib, n_jobs = -1 is one worker per core, -2 all cores but one
    (workers = cores + 1 + n_jobs), None or 0 one worker."""
    n = int(n_jobs) if n_jobs else 1
    workers = n if n > 0 else max(1, cores + 1 + n)
    return max(1, cores // workers)


def share_cpu_threads(accelerator: str, launch: Launch) -> int | None:
    """In a joblib multirun on the CPU: torch.set_num_threads(cores // n_jobs), logged.

    Each parallel job would otherwise start one thread per core, and n_jobs jobs would
    oversubscribe the cores n_jobs times over. Returns the thread count set, or None when
    this is not a CPU job of a joblib launcher (nothing is changed then)."""
    import torch

    if not launch.joblib:
        return None
    acc = str(accelerator).lower()
    if acc not in ("cpu", "auto") or (acc == "auto" and torch.cuda.is_available()):
        return None
    cores, n_jobs = cpu_cores(), launch.n_jobs
    n = threads_per_job(cores, n_jobs)
    torch.set_num_threads(n)
    log.info(
        "joblib launcher with n_jobs=%s on %d cores: %d torch thread(s) per job",
        n_jobs,
        cores,
        n,
    )
    return n


# ---- GPU --------------------------------------------------------------------------------

GPU_LOCK_ENV = "MAMBA_DENOISER_GPU_LOCKS"  # a folder of lock files shared by the jobs


def gpu_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the jobs of this machine note which GPU they hold: $MAMBA_DENOISER_GPU_LOCKS,
    else one folder per user in the temporary directory."""
    env = os.environ if env is None else env
    given = env.get(GPU_LOCK_ENV)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(given) if given else Path(tempfile.gettempdir()) / f"mamba_denoiser_gpus_{uid}"


def gpu_names(n_gpu: int, env: Mapping[str, str] | None = None) -> list[str]:
    """The visible GPUs' names for their lock files: CUDA_VISIBLE_DEVICES' entries (the
    physical index or UUID), so jobs with different visible sets still agree, else 0..n-1."""
    env = os.environ if env is None else env
    names = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return names[:n_gpu] if len(names) >= n_gpu else [str(i) for i in range(n_gpu)]


class GpuLease:
    """GPU `index` (of the visible ones) held through an exclusive lock on its lock file
    until `release`, or until the process ends: the OS drops the lock of a job that
    crashed or was killed, so no stale lock survives it."""

    def __init__(self, index: int, path: Path | None, handle=None):
        self.index, self.path, self._handle = index, path, handle

    def release(self) -> None:
        if self._handle is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(path: Path):
    """The open, exclusively locked file at `path`, or None if another process holds it."""
    import fcntl

    handle = open(path, "a+")  # noqa: SIM115 (held open: the lock lives as long as the file)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def acquire_gpu(
    n_gpu: int,
    lock_dir: Path,
    *,
    wait_s: float | None = None,
    poll_s: float = 2.0,
    env: Mapping[str, str] | None = None,
) -> GpuLease | None:
    """The lowest-numbered of `n_gpu` visible GPUs that no other job holds, as a lease.
    When all are held, waits for one (polling every `poll_s`; `wait_s`: at most that long,
    then None; None: as long as it takes). Without fcntl (Windows) GPU 0, unlocked."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover
        return GpuLease(0, None)
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    paths = [lock_dir / f"gpu-{name.replace('/', '_')}.lock" for name in gpu_names(n_gpu, env)]
    start, said = time.monotonic(), False
    while True:
        for i, path in enumerate(paths):
            handle = _try_lock(path)
            if handle is not None:
                return GpuLease(i, path, handle)
        if wait_s is not None and time.monotonic() - start >= wait_s:
            return None
        if not said:
            log.info("all %d GPUs are held by other jobs (%s): waiting for one", n_gpu, lock_dir)
            said = True
        time.sleep(poll_s)


def job_devices(devices: Any, accelerator: str, launch: Launch) -> tuple[Any, GpuLease | None]:
    """(the Trainer's devices, the lease that holds them): in a multirun whose jobs each
    want one GPU (devices 1 or auto) on a machine with several, the lowest free GPU, held
    until the lease is released; otherwise `devices` as configured, and no lease."""
    import torch

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    one = devices in (1, "1", "auto")
    if not (launch.multirun and one and n_gpu > 1 and str(accelerator).lower() != "cpu"):
        return devices, None
    lease = acquire_gpu(n_gpu, gpu_lock_dir())
    log.info("job %d: GPU %d (lock %s)", launch.job_num, lease.index, lease.path)
    return [lease.index], lease


# ---- rank -------------------------------------------------------------------------------

# the variables Lightning's rank_zero_only.rank is read from before a Trainer sets it, in
# its order (lightning.fabric.utilities.rank_zero._get_rank): torchrun's RANK, Lightning's
# own children's LOCAL_RANK, a Slurm task's SLURM_PROCID, LSF's JSM_NAMESPACE_RANK
RANK_KEYS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launched_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank before any Trainer exists, as Lightning reads it (RANK_KEYS); 0
    exactly for the process that will be global rank zero. One addition: a process that
    Lightning's own multi-node launch started on a node other than 0 (NODE_RANK > 0, with
    no or a zero LOCAL_RANK) is not rank zero, though Lightning only knows that once its
    Trainer computes node_rank * devices + local_rank. After that, trainer.global_rank."""
    env = os.environ if env is None else env
    node = env.get("NODE_RANK", "0").strip()
    off_node_zero = node.isdigit() and int(node) > 0
    for key in RANK_KEYS:
        value = env.get(key, "").strip()
        if value.lstrip("-").isdigit():
            rank = int(value)
            return 1 if (key == "LOCAL_RANK" and rank == 0 and off_node_zero) else rank
    return 1 if off_node_zero else 0


def _slurm_task(env: Mapping[str, str]) -> bool:
    """A task Slurm started (srun or sbatch), as Lightning's SLURMEnvironment.detect() sees
    it: SLURM_NTASKS is set and the job is not an interactive one."""
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def trainer_plugins(env: Mapping[str, str] | None = None) -> list[Any]:
    """Under Slurm: Lightning's SLURMEnvironment (ranks from SLURM_PROCID / SLURM_LOCALID /
    SLURM_NODEID) without its own auto-requeue, so a preemption takes one path only:
    submitit's USR2 (PreemptionGuard). Elsewhere none."""
    env = os.environ if env is None else env
    if not _slurm_task(env):
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


# ---- DDP inside a multirun ----------------------------------------------------------------


def _processes(trainer: Mapping[str, Any]) -> int:
    """How many processes a job of a multirun trains with: devices per node x nodes.
    devices 1 or auto in a multirun is one GPU (job_devices); -1 all of the accelerator's."""
    import torch

    devices, acc = trainer.get("devices", 1), str(trainer.get("accelerator", "auto")).lower()
    if isinstance(devices, (list, tuple)):
        n = len(devices)
    elif str(devices).strip() == "auto":
        n = 1
    elif "," in str(devices):
        n = len([d for d in str(devices).split(",") if d.strip()])
    else:
        try:
            n = int(devices)
        except (TypeError, ValueError):
            n = 1
        if n == -1:
            gpu = acc != "cpu" and torch.cuda.is_available()
            n = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
    return max(n, 1) * max(int(trainer.get("num_nodes", 1) or 1), 1)


def spawned_ddp_problem(
    trainer: Mapping[str, Any], launch: Launch, env: Mapping[str, str] | None = None
) -> str | None:
    """The one line that refuses a multirun job Lightning would split into several processes
    itself (None if there is nothing to refuse). Lightning starts the other DDP processes
    by running the command line again, which in a multirun is the whole sweep: each child
    would train every cluster, in a second sweep folder. Processes that Slurm starts (the
    Slurm launcher's tasks_per_node = devices) or torchrun starts are fine."""
    env = os.environ if env is None else env
    external = (
        _slurm_task(env) or "TORCHELASTIC_RUN_ID" in env or "SlurmLauncher" in launch.launcher
    )
    n = _processes(trainer)
    if not launch.multirun or external or n <= 1:
        return None
    return (
        f"trainer.devices={trainer.get('devices')} (x num_nodes={trainer.get('num_nodes', 1)}: "
        f"{n} DDP processes) inside a multirun: Lightning would start the other processes by "
        "re-running the whole sweep. Give each cluster one device through the launcher "
        "instead (-m ... trainer=gpu hydra/launcher=joblib: each job takes a free GPU; or "
        "hydra/launcher=slurm, where Slurm starts the DDP tasks), or run DDP on one cluster "
        "without -m (python train.py cluster=c0 trainer=ddp)"
    )


class RefuseSpawnedDDP(Callback):
    """A Hydra callback: before any job of a training multirun starts (and before its
    sweep folder exists), print spawned_ddp_problem's line and exit 2. train_job checks
    each job too (a sweep over trainer options)."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        if config.get("task_name") != "train" or "trainer" not in config:
            return
        t = config.trainer
        trainer = {k: t.get(k) for k in ("devices", "accelerator", "num_nodes") if k in t}
        where = Launch(multirun=True, launcher=str(config.hydra.launcher.get("_target_", "")))
        line = spawned_ddp_problem(trainer, where)
        if line:
            # Hydra's callback runner catches Exception, not SystemExit
            print(f"error: {line}", file=sys.stderr)
            raise SystemExit(2)


# ---- preemption -----------------------------------------------------------------------------


def _submitit_signal(env: Mapping[str, str] | None = None):
    """submitit's preemption / timeout signal: SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says."""
    env = os.environ if env is None else env
    return getattr(signal, "SIG" + env.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def _is_submitit_handler(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("submitit")


class PreemptionGuard:
    """submitit's requeue signal (USR2 by default), taken over for the length of a run.

    submitit's handler pickles the job's arguments and requeues it at once, from inside
    whatever the process is doing (writing a checkpoint, say). The guard only notes the
    signal; callbacks.StopWhenPreempted stops training at the next batch boundary, where
    nothing is being written, and `requeue` then hands the signal to submitit's handler:
    it requeues the job with the same arguments (hydra-submitit: the same overrides, so
    the same run folder) and exits; the requeued job resumes from last.ckpt (ckpt_path=auto).
    """

    def __init__(self, signum: int, original: Callable):
        self.signum, self.original, self.received = signum, original, False

    @classmethod
    def install(cls, is_requeue_handler: Callable[[Any], bool] | None = None):
        """The guard, once installed in place of submitit's handler; None where no such
        handler is (a run not started by submitit, or not in the main thread)."""
        sig = _submitit_signal()
        if sig is None:
            return None
        current = signal.getsignal(sig)
        if not (is_requeue_handler or _is_submitit_handler)(current):
            return None
        guard = cls(sig, current)
        try:
            signal.signal(sig, guard._note)
        except ValueError:  # not the main thread
            return None
        return guard

    def _note(self, signum, frame) -> None:
        if not self.received:
            log.warning(
                "signal %s: preempted or out of time; training stops at the next batch and "
                "the job is requeued, to resume from its last checkpoint",
                signal.Signals(signum).name,
            )
        self.received = True

    def requested(self) -> bool:
        return self.received

    def restore(self) -> None:
        with contextlib.suppress(ValueError):
            signal.signal(self.signum, self.original)

    def requeue(self) -> None:
        """submitit's handler: requeue and exit (SystemExit) on rank zero; it returns on
        the other ranks, which end with the job."""
        self.restore()
        self.original(self.signum, None)
