"""Glue between Hydra configs and the library, shared by every entry script.

Library modules take plain arguments; only the *_job modules and this one read DictConfig
nodes (passed in, never Hydra globals), so everything below them stays importable without
Hydra. This module owns what all entry points share: the project root, and how a run
fails (one clear message, no traceback, nothing half-written left behind).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mamba_denoiser")

# conf/paths/default.yaml reads the root from this variable. Entry scripts set it to the
# working directory before Hydra starts, so no `${hydra:...}` resolver is needed in
# anything the multirun sweeper resolves (hydra.sweep.dir is built before any job runs).
ROOT_ENV = "MAMBA_DENOISER_ROOT"


def set_project_root() -> None:
    """Called by entry scripts before @hydra.main: outputs/ go under the start directory
    unless the user set MAMBA_DENOISER_ROOT or passes paths.root_dir=..."""
    os.environ.setdefault(ROOT_ENV, os.getcwd())


class ConfigError(ValueError):
    """A configuration that cannot work here (e.g. trainer=gpu on a machine without one)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Failures with a message written for the user: no traceback is shown for these."""
    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from mamba_denoiser.checkpoint import CheckpointError
    from mamba_denoiser.clustering.artifact import ClustersError
    from mamba_denoiser.data.panel import PanelError
    from mamba_denoiser.evaluation.leakage import LeakageError
    from mamba_denoiser.training import NonFiniteLossError

    return (
        PanelError,
        ClustersError,
        CheckpointError,
        ConfigError,
        NonFiniteLossError,
        LeakageError,
        MisconfigurationException,
        torch.OutOfMemoryError,
    )


def describe(err: BaseException) -> str:
    """One line for the user (a message of several lines is joined); OOM gets the fix
    appended."""
    import torch

    from mamba_denoiser.evaluation.leakage import LeakageError

    msg = str(err).strip() or type(err).__name__
    if isinstance(err, LeakageError):
        msg = f"leakage check failed: {msg}"
    if isinstance(err, torch.OutOfMemoryError):
        msg = (
            f"out of memory ({msg.splitlines()[0]}). Lower batch_size=..., use a smaller "
            "model (model=small), or a shorter data.window_size."
        )
    return " ".join(s.strip() for s in msg.splitlines() if s.strip())


def _has_checkpoint(out: Path) -> bool:
    return any(out.glob("checkpoints/*.ckpt"))


@contextlib.contextmanager
def fail_cleanly(
    out_dir: Path,
    *,
    on_failure=None,
    on_interrupt=None,
    delete: bool = True,
    keep_going: bool = False,
) -> Iterator[None]:
    """Run a job; on failure print one message and exit, leaving nothing half-done.

    - A run that fails before its first checkpoint loses its run directory (`delete`
      is False for DDP children, which must not delete the launcher's directory).
    - A run that fails later keeps its checkpoints; `on_failure(message, exit_code)`
      records the failure (train.py writes summary.json with "status": "failed").
    - User errors exit with code 2, anything else with 1, both without a traceback;
      HYDRA_FULL_ERROR=1 re-raises so the traceback is shown.
    - Ctrl-C (KeyboardInterrupt, also as Lightning's SystemExit(1)): `on_interrupt()`
      records it when there is something to keep (train.py: "status": "interrupted"); it
      may return the line to print. Exit code 130.
    - `keep_going` (a job of a multirun): a failure is recorded even before the first
      checkpoint, the directory is kept so the sweep table lists the job, and after the
      message the block returns instead of exiting, so the other jobs of the sweep run.
      Interrupts still exit.
    """
    try:
        yield
    except BaseException as err:
        if isinstance(err, SystemExit) and err.code in (0, None):
            raise
        full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
        keep = keep_going or _has_checkpoint(out_dir)
        if _interrupted(err):
            line = None
            if delete and keep and on_interrupt is not None:
                with contextlib.suppress(Exception):
                    line = on_interrupt()
            elif delete and keep and on_failure is not None:
                with contextlib.suppress(Exception):
                    on_failure("interrupted (KeyboardInterrupt)", 130)
            elif delete and not keep:
                shutil.rmtree(out_dir, ignore_errors=True)
            if full_error:
                raise
            print(line or "interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        expected = isinstance(err, user_errors())
        message = describe(err) if expected else f"{type(err).__name__}: {describe(err)}"
        code = 2 if expected else 1
        if delete:
            if keep:
                if on_failure is not None:
                    with contextlib.suppress(Exception):
                        on_failure(message, code)
            else:
                shutil.rmtree(out_dir, ignore_errors=True)
        if full_error or (isinstance(err, SystemExit) and not keep_going):
            raise  # someone else's exit code (e.g. a DDP child's) is kept as it is
        print(f"error: {message}", file=sys.stderr)
        if not expected:
            print(
                "(an unexpected error: set HYDRA_FULL_ERROR=1 for the traceback and please "
                "report it)",
                file=sys.stderr,
            )
        if keep_going:
            return
        raise SystemExit(code) from None


def _interrupted(err: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or the sys.exit(1) Lightning raises after catching one
    (its trainer turns KeyboardInterrupt into SystemExit(1) raised inside the handler)."""
    return isinstance(err, KeyboardInterrupt) or (
        isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)
    )


def to_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


class _DropVendorTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def route_lightning_logs() -> None:
    """Lightning adds its own stderr handler when imported before logging is configured,
    so under Hydra every line came out twice; send its records through Hydra's handlers
    only, and drop its advertising tips and a deprecation notice of its own internals."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        lg.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropVendorTips) for f in lg.filters):
            lg.addFilter(_DropVendorTips())


# ---- data options remembered from the upstream stage -----------------------------------


def command_line_overrides() -> list[str]:
    """This run's Hydra overrides (empty when not under Hydra, e.g. a plain library call)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def remembered_data(cfg: DictConfig, recorded: dict | None, recorded_by: str) -> dict:
    """cfg.data, or where no data option was given, the options `recorded_by` (a
    clusters.json or checkpoint) recorded; a given option that changes how the data are
    read and disagrees with the record is a ConfigError naming both (data/remembered.py)."""
    from mamba_denoiser.data.remembered import (
        DataOptionsError,
        given_data_keys,
        merge_data_options,
    )

    given = given_data_keys(command_line_overrides())
    try:
        data, used = merge_data_options(to_dict(cfg.data), recorded, given, recorded_by=recorded_by)
    except DataOptionsError as e:
        raise ConfigError(str(e)) from None
    if used and not given:
        log.info("Data options as recorded in %s (data.path=%s)", recorded_by, data.get("path"))
    return data


# ---- the statsmodels fits, shared by every stage --------------------------------------


def use_fit_cache(cfg: DictConfig) -> None:
    """Keep statsmodels fits on disk under paths.cache_dir (null: memory only); a pure memo
    keyed by the exact train rows fitted (classical.set_fit_cache)."""
    from mamba_denoiser.classical import set_fit_cache

    cache = cfg.paths.get("cache_dir")
    set_fit_cache(Path(cache) / "fits" if cache else None)


def prefit_fits(cfg: DictConfig, panel, features: list[str]) -> None:
    """Every feature's state-space fits (σ, the Kalman candidate) on the train rows, over
    `n_jobs` processes, into the disk cache: cluster.py makes them while the cores are
    free, train.py, denoise.py and evaluate.py read them. Outputs are the same without."""
    import time

    from mamba_denoiser.classical import prefit_state_space

    use_fit_cache(cfg)
    t0 = time.perf_counter()
    prefit_state_space(
        panel.frame[list(features)].to_numpy(float),
        panel.bounds["train"],
        n_jobs=int(cfg.get("n_jobs", 1)),
    )
    log.info("State-space fits of %d features: %.1fs", len(features), time.perf_counter() - t0)


# ---- cluster.py -----------------------------------------------------------------------


def run_cluster(cfg: DictConfig) -> dict:
    from mamba_denoiser.clustering.run import cluster_table, run_clustering
    from mamba_denoiser.data.source import panel_from_config
    from mamba_denoiser.io import console

    out = output_dir(cfg)
    with fail_cleanly(out):
        panel = panel_from_config(to_dict(cfg.data))
        # every clustering.* key is a keyword of run_clustering (conf/cluster.yaml)
        doc = run_clustering(panel, out, plots=cfg.plots, **to_dict(cfg.clustering))
        prefit_fits(cfg, panel, panel.continuous)
    console().print(cluster_table(doc))
    log.info("Wrote %s", out / "clusters.json")
    return doc
