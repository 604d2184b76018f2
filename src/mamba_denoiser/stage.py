"""What every stage job reads from its Hydra config the same way.

The *_job modules are the only readers of DictConfig nodes (passed in, never Hydra
globals); this module holds the readings they share, so library code below keeps taking
plain arguments: the run directory, the data options remembered from the stage before
(data/remembered.py), the statsmodels fit cache, and the trained models of a sweep
(artifacts.py). How a run fails is cli.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mamba_denoiser.errors import ConfigError

log = logging.getLogger("mamba_denoiser")


def to_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


# ---- data options remembered from the upstream stage -----------------------------------


def command_line_overrides() -> list[str]:
    """This run's Hydra overrides (empty when not under Hydra, e.g. a plain library call)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def given_data(cfg: DictConfig) -> tuple[dict, set[str]]:
    """(cfg.data as a dict, the data keys given on the command line), where `data.path=FILE`
    without `data=csv` already reads FILE as a CSV (data/remembered.py path_means_csv)."""
    from mamba_denoiser.data.remembered import given_data_keys, path_means_csv

    return path_means_csv(to_dict(cfg.data), given_data_keys(command_line_overrides()))


def remembered_data(cfg: DictConfig, recorded: dict | None, recorded_by: str) -> dict:
    """cfg.data, or where no data option was given, the options `recorded_by` (a
    clusters.json or checkpoint) recorded; a given option that changes how the data are
    read and disagrees with the record is a ConfigError naming both (data/remembered.py)."""
    from mamba_denoiser.data.remembered import DataOptionsError, merge_data_options

    composed, given = given_data(cfg)
    try:
        data, used = merge_data_options(composed, recorded, given, recorded_by=recorded_by)
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


# ---- trained models: denoise.py and evaluate.py ----------------------------------------


def load_trained(cfg: DictConfig) -> tuple[Any, dict[int, Any], Any, Path]:
    """(panel, cluster id -> ClusterModel, clusters, checkpoint folder) for the run's
    ``checkpoints``, ``clusters``, ``allow_partial`` and data options (artifacts.py)."""
    from mamba_denoiser.artifacts import load_trained as load

    return load(
        checkpoints=cfg.checkpoints,
        log_dir=cfg.paths.log_dir,
        clusters=cfg.clusters,
        allow_partial=bool(cfg.allow_partial),
        data_options=lambda recorded, by: remembered_data(cfg, recorded, by),
    )


def prefit(cfg: DictConfig, panel, models: dict) -> None:
    """The statsmodels fits of every denoised feature (usually read from the disk cache
    cluster.py filled)."""
    prefit_fits(cfg, panel, [f for m in models.values() for f in m.features])
