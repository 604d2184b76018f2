"""train.py's work: one cluster's denoiser from a config.

The config is read here and nowhere below: the run's source (clusters.json or a checkpoint)
is resolved once into a ``train_source.TrainSource``, where the job runs (launcher, rank,
threads, GPU) is ``launch``'s, and its record (summary.json, TensorBoard HPARAMS) is
``run_record``'s. Every check that can fail (clusters.json against the data, the resume
checkpoint against the data and the requested cluster, the accelerator) runs before the
first batch, so a bad run fails in seconds and leaves no run directory behind (a job of a
multirun keeps its directory with summary.json "status": "failed", and returns so the
sweep goes on).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mamba_denoiser import launch
from mamba_denoiser.cli import fail_cleanly, route_lightning_logs
from mamba_denoiser.errors import ClustersError, ConfigError, Preempted
from mamba_denoiser.run_record import PREDICTIVE_METRICS, RunRecord, best_score, flat_hparams
from mamba_denoiser.stage import output_dir, remembered_data, to_dict, use_fit_cache
from mamba_denoiser.train_source import (
    LOADER_KEYS,
    RESUME_MODES,
    TrainSource,
    argv_value,
    resolve_clusters_path,
    resolve_source,
    resume_checkpoint,
)

log = logging.getLogger("mamba_denoiser")


# ---- the `cluster=` options, before Hydra composes -----------------------------------


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
    train_source.clusters_dir(); the path is stored in each option (`cluster.clusters_file`)
    and the run reads exactly that file. With `ckpt_path=` (resume) the cluster comes from
    the checkpoint, and `cluster=c<id>` is added to the command line if absent, so the run
    directory carries the right name. Errors are stored in a placeholder option and
    reported cleanly by run_train.
    """
    from hydra.core.config_store import ConfigStore

    from mamba_denoiser.checkpoint import CheckpointError, load_checkpoint
    from mamba_denoiser.clustering.artifact import ClusterSpec, load_clusters

    real_cli = argv is None
    argv = sys.argv[1:] if argv is None else argv
    cs = ConfigStore.instance()
    ckpt = argv_value(argv, "ckpt_path")
    ckpt = None if ckpt in RESUME_MODES else ckpt  # last.ckpt of a run folder: checked later
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
        if real_cli and argv_value(argv, "cluster") is None:
            sys.argv.append(f"cluster={spec.name}")
    elif error is not None:
        cs.store(group="cluster", name="c0", node=_node(None, None, error))


# ---- the run --------------------------------------------------------------------------


def run_train(cfg: DictConfig) -> float:
    """Train one cluster's denoiser; write checkpoints, TensorBoard logs and summary.json."""
    out = output_dir(cfg)
    where = _launch()
    run = _Run(out, RunRecord(out, cfg.cluster.get("id"), cfg.cluster.get("type")))
    guard = launch.PreemptionGuard.install()  # None unless submitit started this job
    # Only rank zero may delete the run directory or write its summary.json (DDP processes
    # share it); until the Trainer knows its rank, the launcher's variables decide. In a
    # multirun a failed job records itself and returns, so the sweep goes on and its table
    # lists the failure (sweep.SweepSummary then exits non-zero).
    try:
        with fail_cleanly(
            out,
            on_failure=run.record.failure,
            on_interrupt=lambda: _interrupted(run.record, where),
            delete=run.rank_zero,
            keep_going=where.multirun and run.rank_zero(),
            passthrough=(Preempted,),
        ):
            _train(cfg, run, where, guard)
    except Preempted:
        if run.rank_zero():
            run.record.preempted()
        guard.requeue()  # submitit: requeue the job with its arguments and exit
    finally:
        if guard is not None:
            guard.restore()
        if run.lease is not None:
            run.lease.release()
    return run.best


class _Run:
    """What run_train's failure handling needs of the run so far."""

    def __init__(self, out: Path, record: RunRecord):
        self.out, self.record = out, record
        self.best, self.lease = float("nan"), None
        self._rank = launch.launched_rank()

    def rank_zero(self) -> bool:
        trainer = self.record.trainer
        return (trainer.global_rank if trainer is not None else self._rank) == 0


def _train(cfg: DictConfig, run: _Run, where: launch.Launch, guard) -> None:
    import lightning as L

    from mamba_denoiser.callbacks import ResumeState
    from mamba_denoiser.config_schema import check  # typed configs, before any data

    check(cfg, "train")
    route_lightning_logs()
    if cfg.cluster.get("error"):
        raise ClustersError(cfg.cluster.error)
    trainer_kw = to_dict(cfg.trainer)  # Trainer's keyword arguments (conf/trainer/)
    accelerator = trainer_kw.get("accelerator", "auto")
    launch.check_accelerator(accelerator)
    problem = launch.spawned_ddp_problem(trainer_kw, where)
    if problem:
        raise ConfigError(problem)
    launch.share_cpu_threads(accelerator, where)
    use_fit_cache(cfg)  # σ fits: read from the cache cluster.py filled
    source = _source(cfg, resume_checkpoint(cfg.ckpt_path, _checkpoint_dir(cfg, run.out)))
    record = run.record
    record.describe(source.cluster, source.direction, source.heads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = source.datamodule(**{k: cfg[k] for k in LOADER_KEYS})
    module = source.module(
        dm,
        optim=to_dict(cfg.optim),
        compile=cfg.compile,
        t_sampling=to_dict(cfg.get("t_sampling")) or None,
    )
    devices, run.lease = launch.job_devices(trainer_kw.get("devices", 1), accelerator, where)
    trainer_kw["devices"] = devices
    resume = ResumeState()
    trainer = record.trainer = _trainer(cfg, trainer_kw, source, resume, guard)
    record.start(dm, module)
    if source.ckpt_path:
        record.summary["resumed_from"] = source.ckpt_path
    elif cfg.get("validate_at_init", True):
        # the same fixed validation batches before training: the baseline that shows the
        # model learned something (summary.json, the sweep table, the predictive choice)
        resume.init_metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
        record.baseline(resume.init_metrics)
    trainer.fit(module, datamodule=dm, ckpt_path=source.ckpt_path)
    if source.ckpt_path and resume.init_metrics:  # the first attempt's, from the checkpoint
        record.baseline(resume.init_metrics)
    run.best = best_score(trainer)
    if trainer.is_global_zero:
        hparams = flat_hparams(
            source.cluster,
            module.hparams,
            lr=cfg.optim.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        record.finish(trainer, dm, resume.init_metrics, run.best, hparams)


def _launch() -> launch.Launch:
    """Hydra's runtime config as a plain Launch (the defaults outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return launch.Launch()
    multirun = hc.mode == RunMode.MULTIRUN
    return launch.Launch(
        multirun=multirun,
        launcher=str(hc.launcher.get("_target_", "")),
        n_jobs=hc.launcher.get("n_jobs", -1),
        job_num=int(hc.job.get("num") or 0),
        sweep_dir=str(hc.sweep.dir) if multirun else None,
    )


def _checkpoint_dir(cfg: DictConfig, out: Path) -> Path:
    """Where this run's ModelCheckpoint writes last.ckpt (conf/callbacks/)."""
    node = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    return Path(node.get("dirpath") or out / "checkpoints")


def _source(cfg: DictConfig, ckpt_path: str | None) -> TrainSource:
    """The config's values for train_source.resolve_source."""
    return resolve_source(
        option=to_dict(cfg.cluster),
        clusters=cfg.clusters,
        ckpt_path=ckpt_path,
        data_options=lambda recorded, by: remembered_data(cfg, recorded, by),
        model=to_dict(cfg.model),
        sde=to_dict(cfg.sde),
        loss=to_dict(cfg.loss),
        head=to_dict(cfg.get("head")),
        stationary_anchor=cfg.get("stationary_anchor", "constant"),  # as conf/train.yaml
    )


def _trainer(cfg: DictConfig, trainer_kw: dict[str, Any], source: TrainSource, resume, guard):
    """The Trainer with conf/callbacks/ and conf/logger/ instantiated for this run's heads,
    the resume state every run checkpoints, and the preemption stop under submitit."""
    import hydra
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar

    from mamba_denoiser.callbacks import StopWhenPreempted

    skip = {
        # the figure draws the diffusion head's x̂0, which a predictive-only model lacks
        "validation_figure": source.heads == "predictive",
        # the predictive head's own best: only where the main checkpoint follows another
        # metric (heads=both; heads=predictive's main checkpoint already follows it)
        "predictive_checkpoint": source.heads != "both",
    }
    # the residual head's checkpoint follows its future-target risk, the plain head its NLL
    monitor = {"monitor": PREDICTIVE_METRICS[0] if source.residual else PREDICTIVE_METRICS[1]}
    callbacks = [
        hydra.utils.instantiate(c, **(monitor if name == "predictive_checkpoint" else {}))
        for name, c in (cfg.callbacks or {}).items()
        if not skip.get(name, False)
    ]
    callbacks.append(resume)
    if guard is not None:
        callbacks.append(StopWhenPreempted(guard.requested))
    interactive = sys.stdout.isatty()
    if interactive:
        callbacks.append(RichProgressBar())
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values()]
    return L.Trainer(
        **trainer_kw,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=interactive,
        plugins=launch.trainer_plugins() or None,
    )


def _interrupted(record: RunRecord, where: launch.Launch) -> str:
    """summary.json of a run stopped by Ctrl-C and, in a multirun, summary.md of the sweep
    so far (an interrupted multirun never reaches the SweepSummary callback)."""
    line = record.interrupt()
    if where.multirun and where.sweep_dir:
        from mamba_denoiser.sweep import collect_summaries, write_summary_table

        rows = collect_summaries(Path(where.sweep_dir))
        if rows:
            write_summary_table(rows, Path(where.sweep_dir))
    return line
