"""A training run's record: its summary.json (the states sweep.py tabulates and artifacts.py
serves from) and the TensorBoard HPARAMS entry, written by rank zero only.

summary.json "status":
- "ok": trained to the end;
- "worse_than_reference": trained, but the best val noise MSE is above the i.i.d. reference;
- "failed": with "error" and "exit_code";
- "interrupted": Ctrl-C; the best checkpoint so far is kept;
- "preempted": stopped by its launcher's preemption or timeout signal and requeued; the
  requeued job resumes from last.ckpt and writes its own status over this one.

A resumed run records "resumed_from" (the checkpoint).

sweep.py adds "no summary.json" for a job folder without one (a job killed from outside).
Nothing here imports Lightning or torch at module level: sweep.py runs after every stage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mamba_denoiser")

SUMMARY_FILE = "summary.json"
OK = "ok"
WORSE_THAN_REFERENCE = "worse_than_reference"
FAILED = "failed"
INTERRUPTED = "interrupted"
PREEMPTED = "preempted"
NO_SUMMARY = "no summary.json"  # sweep.py: a job folder without a summary.json
# statuses whose best checkpoint is served (worse_than_reference trained to the end; the
# SURE gate still decides per feature whether it helps)
USABLE = (OK, WORSE_THAN_REFERENCE)
# the predictive head's checkpoint follows its future-target risk when it is residual
# (an estimate of its signal error under any noise law), else its NLL
PREDICTIVE_METRICS = ("val/predictive_risk", "val/predictive_nll")


def clean(summary: dict[str, Any]) -> dict[str, Any]:
    """NaN -> None: JSON has no NaN."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in summary.items()}


def metric(metrics: dict[str, float], key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None


def checkpoint_epoch(path: str | None) -> int | None:
    """The epoch (0-based, as in best-epochNNN.ckpt) stored in a checkpoint; None if none."""
    import torch

    if not path or not Path(path).is_file():
        return None
    try:  # mmap: reads the small header, not the weights
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return None


def best_score(trainer) -> float:
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb and ckpt_cb.best_model_score is not None:
        return float(ckpt_cb.best_model_score)
    return float("nan")


def progress(trainer) -> dict[str, Any]:
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
    last_epoch = checkpoint_epoch(str(last) if last is not None else None)
    # an interrupt between an epoch's last checkpoint and Lightning's epoch count: count it
    epochs = max(int(trainer.current_epoch), -1 if last_epoch is None else last_epoch + 1)
    return {
        "epochs": epochs,
        "global_step": int(trainer.global_step),
        "monitor": monitor,
        "best_score": best,
        "best_val_noise_mse": best if monitor == "val/noise_mse" else None,
        "best_epoch": checkpoint_epoch(best_path),
        "best_checkpoint": best_path,
        "last_checkpoint": str(last) if last is not None and last.is_file() else "",
    }


def predictive_choice(trainer, init: dict[str, float]) -> dict[str, Any]:
    """Which weights serve the predictive head, chosen on VALIDATION rows by its own
    metric: the best predictive checkpoint, or, for a residual head whose untrained state
    (its filter, ``validate_at_init``) scored better, "filter"."""
    cbs = [c for c in trainer.checkpoint_callbacks if c.monitor in PREDICTIVE_METRICS]
    if not cbs or cbs[0].best_model_score is None:
        return {}
    cb = cbs[0]
    best, start = float(cb.best_model_score), metric(init, cb.monitor)
    residual = bool(getattr(trainer.lightning_module, "residual", False))
    use_filter = residual and start is not None and start <= best
    return {
        "predictive_monitor": cb.monitor,
        "best_val_predictive": best,
        "init_val_predictive": start,
        "predictive_checkpoint": "filter" if use_filter else str(cb.best_model_path),
    }


def flat_hparams(
    cluster: dict, hp: dict, *, lr: float, batch_size: int, seed: int
) -> dict[str, Any]:
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
        "lr": float(lr),
        "batch_size": int(batch_size),
        "seed": int(seed),
    }


def log_hparams(trainer, params: dict[str, Any], summary: dict[str, Any]) -> None:
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


class RunRecord:
    """summary.json of one run, in `out`: the job's name and cluster from the start, the
    cluster's details once its source is resolved (`describe`), the validation baseline
    (`baseline`), then the result (`finish`), or how it stopped (`failure`, `interrupt`)."""

    def __init__(self, out: Path, cluster_id: Any = None, cluster_type: Any = None):
        self.out = Path(out)
        self.summary: dict[str, Any] = {
            "status": "running",
            "job": str(self.out.name),
            "cluster_id": cluster_id,
            "type": cluster_type,
        }
        self.trainer = None  # set once it exists

    @property
    def path(self) -> Path:
        return self.out / SUMMARY_FILE

    def _write(self, doc: dict[str, Any]) -> None:
        from mamba_denoiser.io import atomic_write_json

        atomic_write_json(self.path, clean(doc))

    def describe(self, cluster: dict[str, Any], direction: str, heads: str) -> None:
        self.summary.update(
            cluster_id=cluster["id"],
            type=cluster["type"],
            strategy=cluster["strategy"],
            n_features=len(cluster["features"]),
            features=list(cluster["features"]),
            direction=direction,
            heads=heads,
        )

    def start(self, dm, module) -> None:
        """The train/val gap in the summary and the opening log line."""
        cluster = module.hparams.cluster
        n_params = sum(p.numel() for p in module.parameters())
        gap = dm.distribution_gap()
        self.summary["train_val_gap"] = gap
        log.info(
            "Training c%d (%s, %d features: %s) on %d train / %d val windows; %s model, "
            "%.2fM parameters; train/val gap (median/p90/max, window scale) %.2f/%.2f/%.2f",
            cluster["id"],
            cluster["type"],
            len(cluster["features"]),
            ", ".join(cluster["features"][:8]),
            len(dm.train_starts),
            len(dm.val_starts),
            self.summary["direction"],
            n_params / 1e6,
            gap["window"]["median"],
            gap["window"]["p90"],
            gap["window"]["max"],
        )

    def baseline(self, init: dict[str, float]) -> None:
        """The validation before training (known now, so a failed or interrupted run
        reports it too)."""
        self.summary.update(
            init_val_noise_mse=metric(init, "val/noise_mse"),
            val_noise_mse_iid_baseline=metric(init, "val/noise_mse_iid_baseline"),
        )

    def finish(
        self, trainer, dm, init: dict[str, float], best: float, hparams: dict[str, Any]
    ) -> dict[str, Any]:
        """summary.json of a run that trained to the end, TensorBoard's HPARAMS entry
        (`hparams`: flat_hparams) and the closing log lines."""
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        ckpt_cb = trainer.checkpoint_callback
        monitor = ckpt_cb.monitor if ckpt_cb else None
        best_mse = best if monitor == "val/noise_mse" else None
        summary = self.summary
        iid = final.get("val/noise_mse_iid_baseline", summary.get("val_noise_mse_iid_baseline"))
        worse = best_mse is not None and iid is not None and best_mse > iid
        best_epoch = checkpoint_epoch(ckpt_cb.best_model_path if ckpt_cb else None)
        best_is_last = best_epoch is not None and best_epoch == trainer.current_epoch - 1
        summary.update(
            status=WORSE_THAN_REFERENCE if worse else OK,
            epochs=int(trainer.current_epoch),
            global_step=int(trainer.global_step),
            monitor=monitor,
            best_score=best,
            best_epoch=best_epoch,
            best_is_last_epoch=best_is_last,
            best_val_noise_mse=best_mse,
            init_val_noise_mse=metric(init, "val/noise_mse"),
            init_val_predictive_nll=metric(init, "val/predictive_nll"),
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
        summary.update(predictive_choice(trainer, init))
        self._write(summary)
        log_hparams(trainer, hparams, summary)
        _log_result(summary, trainer.current_epoch)
        return summary

    def failure(self, message: str, exit_code: int = 1) -> None:
        doc = {**self.summary, **progress(self.trainer)}
        doc.update(status=FAILED, error=message, exit_code=exit_code)
        self._write(doc)

    def preempted(self) -> None:
        doc = {**self.summary, **progress(self.trainer), "status": PREEMPTED}
        self._write(doc)

    def interrupt(self) -> str:
        """summary.json of a run stopped by Ctrl-C, and the line to print."""
        # (fail_cleanly, the caller, has given SIGINT back its default handler already)
        doc = {**self.summary, **progress(self.trainer), "status": INTERRUPTED}
        self._write(doc)
        where = f"c{doc.get('cluster_id', '?')} stopped after {doc.get('epochs', 0)} epoch(s)"
        kept = doc.get("best_checkpoint") or "no checkpoint yet"
        return f"interrupted: {where}; best checkpoint so far: {kept} ({self.path})"


def _log_result(summary: dict[str, Any], epochs: int) -> None:
    cid, monitor = summary["cluster_id"], summary["monitor"]
    if summary["status"] == WORSE_THAN_REFERENCE:
        log.warning(
            "c%d: best val noise MSE %.4f is above its i.i.d. reference %.4f (status "
            "worse_than_reference): the model did no better than knowing the scale",
            cid,
            summary["best_val_noise_mse"],
            summary["val_noise_mse_iid_baseline"],
        )
    if summary["best_is_last_epoch"]:
        log.info(
            "c%d: the best %s came in the last epoch (%d of %d): more epochs "
            "(trainer.max_epochs=...) would likely help",
            cid,
            monitor,
            summary["best_epoch"] + 1,
            epochs,
        )
    log.info(
        "c%d done: best %s %.4f -> %s",
        cid,
        monitor,
        summary["best_score"],
        summary["best_checkpoint"],
    )
