"""Glue between Hydra configs and the library: entry scripts call one function here.

Library modules take plain arguments; only this module reads DictConfig nodes (passed in,
never Hydra globals), so everything below it stays importable without Hydra.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mamba_denoiser")



def _user_errors() -> tuple[type[BaseException], ...]:
    from mamba_denoiser.clustering.artifact import ClustersError
    from mamba_denoiser.data.panel import PanelError

    return (PanelError, ClustersError)


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


@contextlib.contextmanager
def clean_failure(out_dir: Path) -> Iterator[None]:
    """On bad input: print the message, remove this run's directory, exit 2."""
    try:
        yield
    except _user_errors() as e:
        shutil.rmtree(out_dir, ignore_errors=True)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def to_dict(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def run_cluster(cfg: DictConfig) -> dict:
    from rich.console import Console

    from mamba_denoiser.clustering.run import cluster_table, run_clustering
    from mamba_denoiser.data.source import panel_from_config

    out = output_dir(cfg)
    with clean_failure(out):
        panel = panel_from_config(to_dict(cfg.data))
        c = cfg.clustering
        doc = run_clustering(
            panel,
            out,
            k=c.k,
            k_min=c.k_min,
            k_max=c.k_max,
            criterion=c.criterion,
            n_init=c.n_init,
            seed=c.seed,
            rolling_window=c.rolling_window,
            plots=cfg.plots,
        )
    Console().print(cluster_table(doc))
    log.info("Wrote %s", out / "clusters.json")
    return doc
