"""train.py's work: one cluster's denoiser from a config, with checks before anything runs.

Order matters: every check that can fail (clusters.json against the data, the resume
checkpoint against the data and the requested cluster, the accelerator) runs before the
first batch, so a bad run fails in seconds and leaves no run directory behind (a job of a
multirun keeps its directory with summary.json "status": "failed", and returns so the
sweep goes on).

summary.json "status": "ok"; "worse_than_reference" (trained, but the best val noise MSE
is above the i.i.d. reference); "failed" (with "error" and "exit_code"); "interrupted"
(Ctrl-C; best_checkpoint so far kept).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mamba_denoiser.artifacts import check_fit_data, check_split
from mamba_denoiser.cli import ROOT_ENV, fail_cleanly, route_lightning_logs
from mamba_denoiser.errors import ClustersError, ConfigError
from mamba_denoiser.stage import given_data, output_dir, remembered_data, to_dict, use_fit_cache
from mamba_denoiser.vocabulary import ANCHOR_LEN

log = logging.getLogger("mamba_denoiser")


# ---- which clusters.json, and the `cluster=` options ----------------------------------


def _arg(argv: list[str], key: str) -> str | None:
    """The value of the last `key=value` override on the command line (None if absent)."""
    found = None
    for a in argv:
        k, sep, value = a.lstrip("+~").partition("=")
        if sep and k == key and value not in ("", "null"):
            found = value
    return found


def clusters_dir(argv: list[str]) -> Path:
    """Where the newest clusters.json is looked up: <paths.log_dir>/cluster, with
    paths.log_dir = <paths.root_dir>/outputs as in conf/paths/default.yaml."""
    log_dir = _arg(argv, "paths.log_dir")
    if log_dir:
        return Path(log_dir) / "cluster"
    root = _arg(argv, "paths.root_dir") or os.environ.get(ROOT_ENV) or os.getcwd()
    return Path(root) / "outputs" / "cluster"


def resolve_clusters_path(argv: list[str]) -> Path:
    from mamba_denoiser.clustering.artifact import find_latest_clusters

    given = _arg(argv, "clusters")
    return Path(given) if given else find_latest_clusters(clusters_dir(argv))


def _node(spec, clusters_file: str | None, error: str | None = None, ckpt: str | None = None):
    return {
        "id": spec.id if spec else 0,
        "name": spec.name if spec else "c0",
        "type": spec.type if spec else "?",
        "strategy": spec.strategy if spec else "?",
        "n_features": len(spec.features) if spec else 0,
        "clusters_file": clusters_file,
        "checkpoint": ckpt,
        "error": error,
    }


def register_cluster_options(argv: list[str] | None = None) -> None:
    """Register Hydra options c0..c{K-1} of the `cluster` group from clusters.json.

    Hydra group options must exist before composition, and K is only known from the
    clusters file, so train.py calls this before @hydra.main. This is the one place that
    decides which clusters.json a run uses: `clusters=PATH` if given, else the newest under
    clusters_dir(); the path is stored in each option (`cluster.clusters_file`) and the run
    reads exactly that file. With `ckpt_path=` (resume) the cluster comes from the
    checkpoint, and `cluster=c<id>` is added to the command line if absent, so the run
    directory carries the right name. Errors are stored in a placeholder option and
    reported cleanly by run_train.
    """
    from hydra.core.config_store import ConfigStore

    from mamba_denoiser.checkpoint import CheckpointError, load_checkpoint
    from mamba_denoiser.clustering.artifact import ClustersError, ClusterSpec, load_clusters

    real_cli = argv is None
    argv = sys.argv[1:] if argv is None else argv
    cs = ConfigStore.instance()
    ckpt = _arg(argv, "ckpt_path")
    error = None
    try:
        path = resolve_clusters_path(argv)
        for spec in load_clusters(path).clusters:
            cs.store(group="cluster", name=spec.name, node=_node(spec, str(path)))
    except ClustersError as e:
        error = str(e)
    if ckpt:
        # Resume: the checkpoint's cluster replaces the option of the same name, so an
        # explicit cluster=cK that disagrees with it is caught by run_train.
        try:
            c = load_checkpoint(ckpt)["hyper_parameters"]["cluster"]
        except CheckpointError as e:
            cs.store(group="cluster", name="c0", node=_node(None, None, str(e)))
            return
        spec = ClusterSpec(int(c["id"]), c["type"], c["strategy"], tuple(c["features"]))
        cs.store(group="cluster", name=spec.name, node=_node(spec, None, ckpt=ckpt))
        if real_cli and _arg(argv, "cluster") is None:
            sys.argv.append(f"cluster={spec.name}")
    elif error is not None:
        cs.store(group="cluster", name="c0", node=_node(None, None, error))


# ---- the run --------------------------------------------------------------------------


def check_accelerator(trainer_cfg: dict[str, Any]) -> None:
    import torch

    acc = str(trainer_cfg.get("accelerator", "auto")).lower()
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(
            f"trainer.accelerator={acc} asks for a CUDA GPU, but {why}. Train on the CPU "
            "(drop trainer=gpu/ddp, or trainer=cpu), or on a GPU machine install the CUDA "
            "build of torch first (see README, 'GPU users')."
        )


def _cluster_from_clusters_file(cfg: DictConfig, panel) -> tuple[dict[str, Any], str]:
    from mamba_denoiser.clustering.artifact import load_clusters
    from mamba_denoiser.clustering.validate import check_clusters_against_panel

    path = cfg.clusters or cfg.cluster.get("clusters_file")
    if not path:
        raise ClustersError("no clusters.json; run `python cluster.py` first")
    clusters = load_clusters(path)
    spec = clusters.get(int(cfg.cluster.id))
    if spec.type != cfg.cluster.type or len(spec.features) != cfg.cluster.n_features:
        raise ClustersError(f"{clusters.path} changed since start-up; run again")
    src, where = clusters.source, str(clusters.path)
    fix = "Re-run cluster.py on this data or pass the matching clusters=PATH."
    check_fit_data(src, panel, artifact=where, error=ClustersError, fix=fix)
    check_split(
        (src.get("split") or {}).get("bounds"),
        panel,
        artifact=where,
        error=ClustersError,
        fix="use the same data.split and data.window_size for every stage",
    )
    check_clusters_against_panel(clusters, panel)
    cluster = {
        "id": spec.id,
        "type": spec.type,
        "strategy": spec.strategy,
        "features": list(spec.features),
    }
    return cluster, str(Path(clusters.path).resolve())


def _data_options(cfg: DictConfig) -> dict[str, Any]:
    """The data options cluster.py recorded in clusters.json (or, resuming, those in the
    checkpoint) unless given on the command line (stage.remembered_data)."""

    if cfg.ckpt_path:
        from mamba_denoiser.checkpoint import load_checkpoint

        src = load_checkpoint(cfg.ckpt_path)["hyper_parameters"].get("source") or {}
        return remembered_data(cfg, src.get("data_config"), str(cfg.ckpt_path))
    path = cfg.clusters or cfg.cluster.get("clusters_file")
    if not path:
        return given_data(cfg)[0]
    from mamba_denoiser.clustering.artifact import load_clusters

    clusters = load_clusters(path)
    return remembered_data(cfg, clusters.source.get("data_config"), str(clusters.path))


def _cluster_from_checkpoint(cfg: DictConfig, panel) -> dict[str, Any]:
    """Resume: the checkpoint decides the cluster, window, scaler and model."""
    from mamba_denoiser.checkpoint import CheckpointError, load_checkpoint

    hp = load_checkpoint(cfg.ckpt_path)["hyper_parameters"]
    c = hp["cluster"]
    if int(cfg.cluster.id) != int(c["id"]):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is a checkpoint of cluster c{c['id']}, but "
            f"cluster={cfg.cluster.name} was given. Drop cluster=... when resuming: the "
            "checkpoint decides the cluster."
        )
    check_fit_data(
        hp.get("source"),
        panel,
        artifact=str(cfg.ckpt_path),
        error=CheckpointError,
        fix="Resume with the same data (data=... data.path=...).",
    )
    missing = [f for f in c["features"] if f not in panel.continuous]
    if missing:
        raise CheckpointError(
            f"{cfg.ckpt_path}: features {missing} are not continuous columns of "
            f"{panel.source}; resume with the data it was trained on"
        )
    return hp


def _flat_hparams(cfg: DictConfig, cluster: dict, hp: dict) -> dict[str, Any]:
    """What the TensorBoard HPARAMS tab compares across the runs of a sweep."""
    m, sde, loss = hp["model"], hp["sde"], hp.get("loss") or {}
    return {
        "cluster": f"c{cluster['id']}",
        "type": cluster["type"],
        "strategy": cluster["strategy"],
        "n_features": len(cluster["features"]),
        "direction": m.get("direction", "causal"),
        "heads": hp.get("heads", "diffusion"),
        "d_model": m.get("d_model"),
        "n_layers": m.get("n_layers"),
        "d_state": m.get("d_state"),
        "window_size": hp["window_size"],
        "sde_schedule": sde.get("schedule"),
        "loss_strategy": loss.get("strategy", "auto"),
        "guidance_weight": loss.get("guidance_weight"),
        "lr": float(cfg.optim.lr),
        "batch_size": int(cfg.batch_size),
        "seed": int(cfg.seed),
    }


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


def _head_kwargs(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """(heads, predictive kwargs) of DenoiserModule from conf/head/."""
    head = to_dict(cfg.get("head") or {"name": "diffusion"})
    keys = ("n_components", "weight", "var_floor", "residual")
    return str(head.get("name", "diffusion")), {k: head[k] for k in keys if k in head}


def noise_sigma_window_units(panel, features: list[str], dm) -> list[float]:
    """(F,) observation-noise σ in window units, from the TRAIN rows only: the native σ of
    ``classical.noise_sigma`` divided by the window unit (train std · window scale), as
    inference does; NaN or 0 -> ``predictive.SIGMA_FLOOR``."""
    import numpy as np

    from mamba_denoiser.classical import noise_sigma
    from mamba_denoiser.diffusion.predictive import sigma_to_window_units

    raw = panel.frame[list(features)].to_numpy(dtype=np.float64)  # (T, F) native units
    train = tuple(int(b) for b in dm.bounds["train"])
    native = np.array([noise_sigma(raw[:, j], train).sigma for j in range(raw.shape[1])])
    return sigma_to_window_units(native, dm.fitted.unit).tolist()


def _clean(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in summary.items()}


# ---- multirun and parallel jobs -------------------------------------------------------


def _hydra_config() -> Any:
    """Hydra's config of the running job (None outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get()
    except ValueError:
        return None


def in_multirun() -> bool:
    """True in a job of a Hydra multirun (`-m`, or experiment=all_clusters)."""
    from hydra.types import RunMode

    hc = _hydra_config()
    return hc is not None and hc.mode == RunMode.MULTIRUN


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


def share_cpu_threads(trainer_cfg: dict[str, Any]) -> int | None:
    """In a joblib multirun on the CPU: torch.set_num_threads(cores // n_jobs), logged.

    Each parallel job would otherwise start one thread per core, and n_jobs jobs would
    oversubscribe the cores n_jobs times over. Returns the thread count set, or None when
    this is not a CPU job of a joblib launcher (nothing is changed then)."""
    import torch

    hc = _hydra_config()
    if hc is None or "joblib" not in str(hc.launcher.get("_target_", "")).lower():
        return None
    acc = str(trainer_cfg.get("accelerator", "auto")).lower()
    if acc not in ("cpu", "auto") or (acc == "auto" and torch.cuda.is_available()):
        return None
    cores, n_jobs = cpu_cores(), hc.launcher.get("n_jobs", -1)
    n = threads_per_job(cores, n_jobs)
    torch.set_num_threads(n)
    log.info(
        "joblib launcher with n_jobs=%s on %d cores: %d torch thread(s) per job",
        n_jobs,
        cores,
        n,
    )
    return n


def _checkpoint_epoch(path: str | None) -> int | None:
    """The epoch (0-based, as in best-epochNNN.ckpt) stored in a checkpoint; None if none."""
    import torch

    if not path or not Path(path).is_file():
        return None
    try:  # mmap: reads the small header, not the weights
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return None


def _progress(trainer) -> dict[str, Any]:
    """How far a run got: epochs, steps, best score and checkpoints so far ({} before the
    trainer exists). Used for failed and interrupted runs."""
    if trainer is None:
        return {}
    ckpt_cb = trainer.checkpoint_callback
    score = getattr(ckpt_cb, "best_model_score", None)
    best = float(score) if score is not None else None
    monitor = ckpt_cb.monitor if ckpt_cb else None
    last = Path(ckpt_cb.dirpath) / "last.ckpt" if ckpt_cb and ckpt_cb.dirpath else None
    best_path = str(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else ""
    last_epoch = _checkpoint_epoch(str(last) if last is not None else None)
    # an interrupt between an epoch's last checkpoint and Lightning's epoch count: count it
    epochs = max(int(trainer.current_epoch), -1 if last_epoch is None else last_epoch + 1)
    return {
        "epochs": epochs,
        "global_step": int(trainer.global_step),
        "monitor": monitor,
        "best_score": best,
        "best_val_noise_mse": best if monitor == "val/noise_mse" else None,
        "best_epoch": _checkpoint_epoch(best_path),
        "best_checkpoint": best_path,
        "last_checkpoint": str(last) if last is not None and last.is_file() else "",
    }


def _write_sweep_table() -> None:
    """summary.md of the sweep so far (an interrupted multirun never reaches the
    SweepSummary callback)."""
    from mamba_denoiser.sweep import collect_summaries, write_summary_table

    hc = _hydra_config()
    if hc is not None:
        sweep_dir = Path(str(hc.sweep.dir))
        rows = collect_summaries(sweep_dir)
        if rows:
            write_summary_table(rows, sweep_dir)


# what a run's network is, besides what the data decide (scaler, noise_sigma): the checkpoint
# hyper-parameters a resumed run keeps (network.py, NetworkMixin._build_network)
NETWORK_KEYS = ("cluster", "window_size", "model", "sde", "loss", "heads", "predictive")


@dataclass
class _Setup:
    """What one training run trains: from clusters.json + config, or from a checkpoint."""

    network: dict[str, Any]  # NETWORK_KEYS -> value
    clusters_path: str | None
    anchor_len: int
    hp: dict[str, Any] | None = None  # the resumed checkpoint's hyper-parameters

    @property
    def cluster(self) -> dict[str, Any]:
        return self.network["cluster"]

    @property
    def heads(self) -> str:
        return str(self.network["heads"])

    @property
    def window(self) -> int:
        return int(self.network["window_size"])


def _setup(cfg: DictConfig, panel, data: dict[str, Any]) -> _Setup:
    if not cfg.ckpt_path:
        cluster, clusters_path = _cluster_from_clusters_file(cfg, panel)
        heads, pred_kw = _head_kwargs(cfg)
        network = {
            "cluster": cluster,
            "window_size": int(data["window_size"]),
            "model": to_dict(cfg.model),
            "sde": to_dict(cfg.sde),
            "loss": to_dict(cfg.loss),
            "heads": heads,
            "predictive": pred_kw,
        }
        return _Setup(network, clusters_path, _anchor_len(cfg, cluster, data))
    from mamba_denoiser.network import network_defaults

    hp = _cluster_from_checkpoint(cfg, panel)
    recorded = {**network_defaults(), **hp}
    network = {k: recorded[k] for k in NETWORK_KEYS}
    asked, _ = _head_kwargs(cfg)
    if asked != network["heads"]:  # the monitored metric (conf/head) must exist in this run
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} was trained with head={network['heads']}, but "
            f"head={asked} is configured; resume with head={network['heads']}"
        )
    clusters_path = (hp.get("source") or {}).get("clusters")
    return _Setup(network, clusters_path, int(hp["scaler"].get("anchor_len", ANCHOR_LEN)), hp)


def _anchor_len(cfg: DictConfig, cluster: dict[str, Any], data: dict[str, Any]) -> int:
    """data.anchor_len, or 0 (a constant anchor: the train mean) for a mean-reverting
    cluster when stationary_anchor=constant: typed mean_reverting needs an ADF rejection
    of a unit root (clustering/grouping.py), so its z-score stays in range, and its level
    comes from the whole train split instead of a window's first noisy rows."""
    mode = cfg.get("stationary_anchor", "constant")  # as conf/train.yaml
    if mode not in ("window", "constant"):
        raise ConfigError(f"stationary_anchor={mode!r}: choose window or constant")
    if mode == "constant" and cluster["type"] == "mean_reverting":
        return 0
    return int(data.get("anchor_len", ANCHOR_LEN))


def _datamodule(cfg: DictConfig, panel, setup: _Setup):
    from mamba_denoiser.data.datamodule import ClusterDataModule

    loader = ("stride", "val_stride", "batch_size", "num_workers", "min_observed_frac")
    dm = ClusterDataModule(
        panel,
        setup.cluster["features"],
        window_size=setup.window,
        anchor_len=setup.anchor_len,
        residual=setup.heads != "diffusion"
        and bool((setup.network.get("predictive") or {}).get("residual")),
        **{k: cfg[k] for k in loader},
    )
    key = dm.fitted.differs_from(setup.hp["scaler"]) if setup.hp is not None else None
    if key:
        raise ConfigError(
            f"{cfg.ckpt_path}: its train-split scaler ({key}) differs from this "
            "data's; resume with the same data and data.split as the checkpoint"
        )
    return dm


def _module(cfg: DictConfig, panel, setup: _Setup, dm):
    from mamba_denoiser.training import DenoiserModule

    noise_sigma = None
    # a resumed run keeps its own t draws (a checkpoint without the key drew uniform t) and σ
    if setup.hp is not None:
        t_sampling = setup.hp.get("t_sampling")
    else:
        t_sampling = to_dict(cfg.get("t_sampling")) or None
    # σ is needed by the predictive NLL and by log-normal t
    if setup.heads != "diffusion" or (t_sampling or {}).get("kind") == "lognormal":
        noise_sigma = (setup.hp or {}).get("noise_sigma") or (
            noise_sigma_window_units(panel, setup.cluster["features"], dm)
        )
    return DenoiserModule(
        **setup.network,
        scaler=dm.scaler,
        noise_sigma=noise_sigma,
        compile=cfg.compile,
        source={**panel.summary(), "clusters": setup.clusters_path},
        t_sampling=t_sampling,
        **to_dict(cfg.optim),
    )


def _trainer(cfg: DictConfig, heads: str, residual: bool = False):
    import hydra
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar

    skip = {
        # the figure draws the diffusion head's x̂0, which a predictive-only model lacks
        "validation_figure": heads == "predictive",
        # the predictive head's own best: only where the main checkpoint follows another
        # metric (heads=both; heads=predictive's main checkpoint already follows it)
        "predictive_checkpoint": heads != "both",
    }
    callbacks = [
        hydra.utils.instantiate(c, **_monitor_override(name, residual))
        for name, c in (cfg.callbacks or {}).items()
        if not skip.get(name, False)
    ]
    interactive = sys.stdout.isatty()
    if interactive:
        callbacks.append(RichProgressBar())
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values()]
    trainer_kw = to_dict(cfg.trainer)  # Trainer's keyword arguments (conf/trainer/)
    trainer_kw["devices"] = _gpu_for_parallel_job(cfg)
    return L.Trainer(
        **trainer_kw,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=interactive,
    )


def _log_start(cluster: dict[str, Any], dm, module, summary: dict[str, Any]) -> None:
    n_params = sum(p.numel() for p in module.parameters())
    gap = dm.distribution_gap()
    summary["train_val_gap"] = gap
    log.info(
        "Training c%d (%s, %d features: %s) on %d train / %d val windows; %s model, "
        "%.2fM parameters; train/val gap (median/p90/max, window scale) %.2f/%.2f/%.2f",
        cluster["id"],
        cluster["type"],
        len(cluster["features"]),
        ", ".join(cluster["features"][:8]),
        len(dm.train_starts),
        len(dm.val_starts),
        summary["direction"],
        n_params / 1e6,
        gap["window"]["median"],
        gap["window"]["p90"],
        gap["window"]["max"],
    )


def _validate_at_init(cfg: DictConfig, trainer, module, dm, summary) -> dict[str, float]:
    """The same fixed validation batches before training: the baseline that shows the model
    learned something (reported in summary.json and the sweep table)."""
    if not cfg.get("validate_at_init", True) or cfg.ckpt_path:
        return {}
    init = trainer.validate(module, datamodule=dm, verbose=False)[0]
    summary.update(  # known now, so a failed or interrupted run reports them too
        init_val_noise_mse=_get(init, "val/noise_mse"),
        val_noise_mse_iid_baseline=_get(init, "val/noise_mse_iid_baseline"),
    )
    return init


def _best_score(trainer) -> float:
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb and ckpt_cb.best_model_score is not None:
        return float(ckpt_cb.best_model_score)
    return float("nan")


def _record_result(cfg, trainer, module, dm, cluster, init, best, summary, out: Path) -> None:
    """Rank zero: summary.json, TensorBoard hparams and the closing log lines."""
    from mamba_denoiser.io import atomic_write_json

    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    ckpt_cb = trainer.checkpoint_callback
    monitor = ckpt_cb.monitor if ckpt_cb else None
    best_mse = best if monitor == "val/noise_mse" else None
    iid = final.get("val/noise_mse_iid_baseline", summary.get("val_noise_mse_iid_baseline"))
    worse = best_mse is not None and iid is not None and best_mse > iid
    best_epoch = _checkpoint_epoch(ckpt_cb.best_model_path if ckpt_cb else None)
    best_is_last = best_epoch is not None and best_epoch == trainer.current_epoch - 1
    summary.update(
        status="worse_than_reference" if worse else "ok",
        epochs=int(trainer.current_epoch),
        global_step=int(trainer.global_step),
        monitor=monitor,
        best_score=best,
        best_epoch=best_epoch,
        best_is_last_epoch=best_is_last,
        best_val_noise_mse=best_mse,
        init_val_noise_mse=_get(init, "val/noise_mse"),
        init_val_predictive_nll=_get(init, "val/predictive_nll"),
        last_val_predictive_nll=final.get("val/predictive_nll"),
        last_val_predictive_sure_ratio=final.get("val/predictive_sure_ratio"),
        last_val_noise_mse=final.get("val/noise_mse"),
        last_val_loss=final.get("val/loss"),
        val_noise_mse_iid_baseline=iid,
        best_checkpoint=str(ckpt_cb.best_model_path) if ckpt_cb else "",
        last_checkpoint=str(Path(ckpt_cb.dirpath) / "last.ckpt") if ckpt_cb else "",
        train_windows=int(len(dm.train_starts)),
        val_windows=int(len(dm.val_starts)),
    )
    summary.update(_predictive_choice(trainer, ckpt_cb, init))
    atomic_write_json(out / "summary.json", _clean(summary))
    _log_hparams(trainer, _flat_hparams(cfg, cluster, module.hparams), summary)
    if worse:
        log.warning(
            "c%d: best val noise MSE %.4f is above its i.i.d. reference %.4f (status "
            "worse_than_reference): the model did no better than knowing the scale",
            cluster["id"],
            best_mse,
            iid,
        )
    if best_is_last:
        log.info(
            "c%d: the best %s came in the last epoch (%d of %d): more epochs "
            "(trainer.max_epochs=...) would likely help",
            cluster["id"],
            monitor,
            best_epoch + 1,
            trainer.current_epoch,
        )
    log.info(
        "c%d done: best %s %.4f -> %s", cluster["id"], monitor, best, summary["best_checkpoint"]
    )


PREDICTIVE_METRICS = ("val/predictive_risk", "val/predictive_nll")


def _monitor_override(name: str, residual: bool) -> dict[str, str]:
    """The residual head's checkpoint follows its future-target risk, an estimate of its
    signal error under any noise law (training._future_risk); the plain head its NLL."""
    if name != "predictive_checkpoint":
        return {}
    return {"monitor": PREDICTIVE_METRICS[0] if residual else PREDICTIVE_METRICS[1]}


def _predictive_choice(trainer, ckpt_cb, init: dict[str, float]) -> dict[str, Any]:
    """Which weights serve the predictive head, chosen on VALIDATION rows by its own
    metric: the best predictive checkpoint, or, for a residual head whose untrained state
    (its filter, ``validate_at_init``) scored better, "filter"."""
    cbs = [c for c in trainer.checkpoint_callbacks if c.monitor in PREDICTIVE_METRICS]
    if not cbs or cbs[0].best_model_score is None:
        return {}
    cb = cbs[0]
    best, start = float(cb.best_model_score), _get(init, cb.monitor)
    residual = bool(getattr(trainer.lightning_module, "residual", False))
    use_filter = residual and start is not None and start <= best
    return {
        "predictive_monitor": cb.monitor,
        "best_val_predictive": best,
        "init_val_predictive": start,
        "predictive_checkpoint": "filter" if use_filter else str(cb.best_model_path),
    }


class _RunRecord:
    """summary.json of a run that did not finish: failed, or interrupted (Ctrl-C)."""

    def __init__(self, out: Path, summary: dict[str, Any], multirun: bool):
        self.out, self.summary, self.multirun = out, summary, multirun
        self.trainer = None  # set once it exists

    def failure(self, message: str, exit_code: int = 1) -> None:
        from mamba_denoiser.io import atomic_write_json

        doc = {**self.summary, **_progress(self.trainer)}
        doc.update(status="failed", error=message, exit_code=exit_code)
        atomic_write_json(self.out / "summary.json", _clean(doc))

    def interrupt(self) -> str:
        from mamba_denoiser.io import atomic_write_json

        # (fail_cleanly, the caller, has given SIGINT back its default handler already)
        doc = {**self.summary, **_progress(self.trainer), "status": "interrupted"}
        atomic_write_json(self.out / "summary.json", _clean(doc))
        if self.multirun:
            _write_sweep_table()
        where = f"c{doc.get('cluster_id', '?')} stopped after {doc.get('epochs', 0)} epoch(s)"
        kept = doc.get("best_checkpoint") or "no checkpoint yet"
        return f"interrupted: {where}; best checkpoint so far: {kept} ({self.out / 'summary.json'})"


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


def run_train(cfg: DictConfig) -> float:
    """Train one cluster's denoiser; write checkpoints, TensorBoard logs and summary.json."""
    import lightning as L

    from mamba_denoiser.data.source import panel_from_config

    out = output_dir(cfg)
    rank_zero = launched_rank() == 0
    multirun = in_multirun()
    summary: dict[str, Any] = {
        "status": "running",
        "job": str(out.name),
        "cluster_id": cfg.cluster.get("id"),
        "type": cfg.cluster.get("type"),
    }
    record = _RunRecord(out, summary, multirun)
    best = float("nan")
    # Only the launching process may delete the run directory (DDP children share it). In
    # a multirun a failed job records itself and returns, so the sweep goes on and its
    # table lists the failure (sweep.SweepSummary then exits non-zero).
    with fail_cleanly(
        out,
        on_failure=record.failure,
        on_interrupt=record.interrupt,
        delete=rank_zero,
        keep_going=multirun and rank_zero,
    ):
        from mamba_denoiser.config_schema import check  # typed configs, before any data

        check(cfg, "train")
        route_lightning_logs()
        if cfg.cluster.get("error"):
            raise ClustersError(cfg.cluster.error)
        check_accelerator(to_dict(cfg.trainer))
        share_cpu_threads(to_dict(cfg.trainer))
        use_fit_cache(cfg)  # σ fits: read from the cache cluster.py filled
        data = _data_options(cfg)
        panel = panel_from_config(data)
        setup = _setup(cfg, panel, data)
        cluster = setup.cluster
        summary.update(
            cluster_id=cluster["id"],
            type=cluster["type"],
            strategy=cluster["strategy"],
            n_features=len(cluster["features"]),
            features=list(cluster["features"]),
            direction=setup.network["model"].get("direction", "causal"),
            heads=setup.heads,
        )
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        dm = _datamodule(cfg, panel, setup)
        module = _module(cfg, panel, setup, dm)
        residual = bool((setup.network.get("predictive") or {}).get("residual"))
        trainer = record.trainer = _trainer(
            cfg, setup.heads, residual and setup.heads != "diffusion"
        )
        _log_start(cluster, dm, module, summary)
        init = _validate_at_init(cfg, trainer, module, dm, summary)
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)
        best = _best_score(trainer)
        if trainer.is_global_zero:
            _record_result(cfg, trainer, module, dm, cluster, init, best, summary, out)
    return best


def _get(metrics: dict[str, float], key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None


def _log_hparams(trainer, params: dict[str, Any], summary: dict[str, Any]) -> None:
    """The run config with its final metrics, for TensorBoard's HPARAMS tab."""
    from lightning.pytorch.loggers import TensorBoardLogger

    metrics = {
        "hp/best_val_noise_mse": summary.get("best_val_noise_mse"),
        "hp/last_val_noise_mse": summary.get("last_val_noise_mse"),
        "hp/val_noise_mse_iid_baseline": summary.get("val_noise_mse_iid_baseline"),
        "hp/init_val_noise_mse": summary.get("init_val_noise_mse"),
        "hp/last_val_predictive_nll": summary.get("last_val_predictive_nll"),
    }
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(params, metrics=metrics)
            lg.experiment.flush()
