"""Glue between Hydra configs and the library: entry scripts call one function here.

Library modules take plain arguments; only this module reads DictConfig nodes (passed in,
never Hydra globals), so everything below it stays importable without Hydra.
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
    from mamba_denoiser.clustering.run import cluster_table, run_clustering
    from mamba_denoiser.data.source import panel_from_config
    from mamba_denoiser.io import console

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
    console().print(cluster_table(doc))
    log.info("Wrote %s", out / "clusters.json")
    return doc


# ---- train.py -------------------------------------------------------------------------


def _clusters_arg(argv: list[str]) -> str | None:
    for a in argv:
        key, sep, value = a.lstrip("+~").partition("=")
        if sep and key == "clusters" and value not in ("", "null"):
            return value
    return None


def resolve_clusters_path(value: str | None, root: str | Path = "outputs/cluster") -> Path:
    from mamba_denoiser.clustering.artifact import find_latest_clusters

    return Path(value) if value else find_latest_clusters(root)


def register_cluster_options(argv: list[str] | None = None) -> None:
    """Register Hydra options c0..c{K-1} of the `cluster` group from clusters.json.

    Hydra group options must exist before composition, and K is only known from the
    clusters file, so train.py calls this before @hydra.main. `clusters=PATH` on the
    command line wins; otherwise the newest outputs/cluster/*/clusters.json is used.
    Without any clusters file a placeholder c0 is registered and run_train says what to do.
    """
    from hydra.core.config_store import ConfigStore

    from mamba_denoiser.clustering.artifact import ClustersError, load_clusters

    argv = sys.argv[1:] if argv is None else argv
    cs = ConfigStore.instance()
    try:
        clusters = load_clusters(resolve_clusters_path(_clusters_arg(argv)))
    except ClustersError as e:
        cs.store(
            group="cluster",
            name="c0",
            node={"id": 0, "name": "c0", "type": "?", "n_features": 0, "error": str(e)},
        )
        return
    for c in clusters.clusters:
        cs.store(
            group="cluster",
            name=c.name,
            node={
                "id": c.id,
                "name": c.name,
                "type": c.type,
                "strategy": c.strategy,
                "n_features": len(c.features),
                "error": None,
            },
        )


def _gpu_for_parallel_job(cfg: DictConfig) -> Any:
    """One GPU per job when a joblib multirun sees several GPUs."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    devices = cfg.trainer.get("devices", 1)
    try:
        hc = HydraConfig.get()
    except ValueError:
        return devices
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    launcher = str(hc.launcher.get("_target_", ""))
    if n_gpu > 1 and "joblib" in launcher.lower() and devices in (1, "1", "auto"):
        return [int(hc.job.num) % n_gpu]
    return devices


def run_train(cfg: DictConfig) -> float:
    """Train one cluster's denoiser; write checkpoints, TensorBoard logs and summary.json."""
    import hydra
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar

    from mamba_denoiser.clustering.artifact import ClustersError, load_clusters
    from mamba_denoiser.data.datamodule import ClusterDataModule
    from mamba_denoiser.data.source import panel_from_config
    from mamba_denoiser.io import atomic_write_json
    from mamba_denoiser.training import DenoiserModule

    out = output_dir(cfg)
    rank_zero = (
        int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    )
    # Only the launching process may delete the run directory on bad input.
    guard = clean_failure(out) if rank_zero and not cfg.ckpt_path else contextlib.nullcontext()
    with guard:
        if cfg.cluster.get("error"):
            raise ClustersError(cfg.cluster.error)
        clusters = load_clusters(
            resolve_clusters_path(cfg.clusters, Path(cfg.paths.log_dir) / "cluster")
        )
        spec = clusters.get(int(cfg.cluster.id))
        if spec.type != cfg.cluster.type or len(spec.features) != cfg.cluster.n_features:
            raise ClustersError(f"{clusters.path} changed since start-up; run again")
        panel = panel_from_config(to_dict(cfg.data))
        src = clusters.source
        if src.get("sha256") and panel.sha256 and src["sha256"] != panel.sha256:
            raise ClustersError(
                f"{clusters.path} was made from {src.get('path')} (sha256 {src['sha256'][:12]}…), "
                f"but data is {panel.source} (sha256 {panel.sha256[:12]}…). Re-run cluster.py on "
                "this data or pass the matching clusters=PATH."
            )
        if src.get("split", {}).get("bounds") and src["split"]["bounds"] != {
            k: list(v) for k, v in panel.bounds.items()
        }:
            raise ClustersError(
                f"{clusters.path} used another train/val/test split than "
                "data.split now; use the same split for every stage"
            )
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        dm = ClusterDataModule(
            panel,
            spec.features,
            window_size=cfg.data.window_size,
            stride=cfg.stride,
            val_stride=cfg.val_stride,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            min_observed_frac=cfg.min_observed_frac,
        )
        module = DenoiserModule(
            cluster={
                "id": spec.id,
                "type": spec.type,
                "strategy": spec.strategy,
                "features": list(spec.features),
            },
            window_size=cfg.data.window_size,
            scaler=dm.scaler,
            model=to_dict(cfg.model),
            sde=to_dict(cfg.sde),
            loss=to_dict(cfg.loss),
            compile=cfg.compile,
            source={**panel.summary(), "clusters": str(clusters.path.resolve())},
            **to_dict(cfg.optim),
        )
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values()]
    interactive = sys.stdout.isatty()
    if interactive:
        callbacks.append(RichProgressBar())
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values()]
    trainer_kw = to_dict(cfg.trainer)
    trainer_kw.pop("_target_", None)
    trainer_kw["devices"] = _gpu_for_parallel_job(cfg)
    trainer = L.Trainer(
        **trainer_kw, callbacks=callbacks, logger=loggers or False, enable_progress_bar=interactive
    )
    log.info(
        "Training c%d (%s, %d features: %s) on %d train / %d val windows",
        spec.id,
        spec.type,
        len(spec.features),
        ", ".join(spec.features[:8]),
        len(dm.train_starts),
        len(dm.val_starts),
    )
    init = {}
    if cfg.get("validate_at_init", True) and not cfg.ckpt_path:
        # The same fixed validation batches before training: the baseline that shows the
        # model learned something (reported in summary.json and the sweep table).
        init = trainer.validate(module, datamodule=dm, verbose=False)[0]
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    ckpt_cb = trainer.checkpoint_callback
    best = (
        float(ckpt_cb.best_model_score)
        if ckpt_cb and ckpt_cb.best_model_score is not None
        else float("nan")
    )
    if trainer.is_global_zero:
        summary = {
            "cluster_id": spec.id,
            "type": spec.type,
            "strategy": spec.strategy,
            "n_features": len(spec.features),
            "features": list(spec.features),
            "epochs": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "best_val_loss": best,
            "init_val_noise_mse": float(init["val/noise_mse"]) if init else None,
            "last_val_noise_mse": final.get("val/noise_mse"),
            "val_noise_mse_iid_baseline": final.get("val/noise_mse_iid_baseline"),
            "best_checkpoint": str(ckpt_cb.best_model_path) if ckpt_cb else "",
            "last_checkpoint": str(Path(ckpt_cb.dirpath) / "last.ckpt") if ckpt_cb else "",
            "train_windows": int(len(dm.train_starts)),
            "val_windows": int(len(dm.val_starts)),
            "job": str(out.name),
        }
        atomic_write_json(
            out / "summary.json",
            {k: (None if isinstance(v, float) and v != v else v) for k, v in summary.items()},
        )
        log.info("c%d done: best val/loss %.4f -> %s", spec.id, best, summary["best_checkpoint"])
    return best
