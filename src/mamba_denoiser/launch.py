"""Where a training job runs: its launcher, its rank, its CPU threads and its GPU.

Plain arguments only: train_job reads Hydra's runtime config into a ``Launch`` (the
launcher's target and n_jobs, the job's number), and this module decides from it and the
trainer's settings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

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


def job_devices(devices: Any, launch: Launch) -> Any:
    """One GPU per job when a joblib multirun sees several GPUs."""
    import torch

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpu > 1 and launch.joblib and devices in (1, "1", "auto"):
        return [int(launch.job_num) % n_gpu]
    return devices


# ---- rank -------------------------------------------------------------------------------


def launched_rank(env=None) -> int:
    """This process's global rank as its launcher set it, before any Trainer exists:
    torchrun's RANK, then Slurm's SLURM_PROCID (a task Slurm started has no LOCAL_RANK or
    NODE_RANK: every task would otherwise think it is rank zero and delete the run folder),
    then Lightning's own spawn (LOCAL_RANK on NODE_RANK; rank zero only at 0 and 0)."""
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID"):
        if env.get(key, "").strip().lstrip("-").isdigit():
            return int(env[key])
    local, node = int(env.get("LOCAL_RANK", "0")), int(env.get("NODE_RANK", "0"))
    return 0 if local == 0 and node == 0 else max(local, 1)
