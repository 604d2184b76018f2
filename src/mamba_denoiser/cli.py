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
    """One line (or a few) for the user; OOM gets the fix appended."""
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
    return msg


def _has_checkpoint(out: Path) -> bool:
    return any(out.glob("checkpoints/*.ckpt"))


@contextlib.contextmanager
def fail_cleanly(out_dir: Path, *, on_failure=None, delete: bool = True) -> Iterator[None]:
    """Run a job; on failure print one message and exit, leaving nothing half-done.

    - A run that fails before its first checkpoint loses its run directory (`delete`
      is False for DDP children, which must not delete the launcher's directory).
    - A run that fails later keeps its checkpoints; `on_failure(message)` records the
      failure (train.py writes summary.json with "status": "failed").
    - User errors exit with code 2, anything else with 1, both without a traceback;
      HYDRA_FULL_ERROR=1 re-raises so the traceback is shown.
    """
    try:
        yield
    except BaseException as err:
        if isinstance(err, SystemExit) and err.code in (0, None):
            raise
        expected = isinstance(err, user_errors())
        message = describe(err) if expected else f"{type(err).__name__}: {describe(err)}"
        if delete:
            if _has_checkpoint(out_dir):
                if on_failure is not None:
                    with contextlib.suppress(Exception):
                        on_failure(message)
            else:
                shutil.rmtree(out_dir, ignore_errors=True)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or isinstance(
            err, (KeyboardInterrupt, SystemExit)
        ):
            raise
        print(f"error: {message}", file=sys.stderr)
        if not expected:
            print(
                "(an unexpected error: set HYDRA_FULL_ERROR=1 for the traceback and please "
                "report it)",
                file=sys.stderr,
            )
        raise SystemExit(2 if expected else 1) from None


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
    console().print(cluster_table(doc))
    log.info("Wrote %s", out / "clusters.json")
    return doc
