"""What the stages hand each other, found and checked in one place.

Every stage reads what an earlier one wrote: train.py a clusters.json, denoise.py and
evaluate.py a training sweep's checkpoints (and the clusters.json they were trained with).
This module finds the newest of each, loads a sweep's cluster models, and holds the one
policy for "was this artifact made from this data?":

- **split**: an artifact made with other train or validation bounds is always an error
  (its statistics, scaler and checkpoint selection would straddle this data's split);
  the test part may differ: it is what grows when rows are appended;
- **sha256** of the data file: an error when a stage *fits* on the artifact (train.py
  training from a clusters.json or resuming a checkpoint: the clustering statistics and
  the scaler belong to the other file), a warning when it *applies* it (denoise.py and
  evaluate.py running trained models on new data is what they are for);
- **a grown panel**: applying models to the training data with rows appended
  (``pinned_split``): the split is pinned to the ids the models were trained with (the
  fractions would move the bounds with the length), and where the rows up to the end of
  validation are the recorded ones (``Panel.rows_digest``) there is no other-data warning:
  only rows no fit read were added. Rows already served do not move.

Plain arguments, no Hydra: the *_job modules call it.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mamba_denoiser.errors import ConfigError
from mamba_denoiser.run_record import USABLE as USABLE_STATUS

log = logging.getLogger("mamba_denoiser")


# ---- finding -------------------------------------------------------------------------


def find_latest_sweep(log_dir: str | Path) -> Path:
    """The newest training sweep (outputs/train_multirun/<time>) holding a summary.json."""
    root = Path(log_dir) / "train_multirun"
    sweeps = sorted(p for p in root.glob("*") if any(p.glob("*/summary.json")))
    if not sweeps:
        raise ConfigError(
            f"no training sweep under {root}/. Train first (python train.py "
            "experiment=all_clusters), or pass checkpoints=DIR"
        )
    return sweeps[-1]


def _checkpoint_candidates(folder: Path) -> list[Path]:
    from mamba_denoiser.checkpoint import resolve_checkpoint

    candidates: list[Path] = []
    for s in sorted(folder.rglob("summary.json")):
        try:
            doc = json.loads(s.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{s}: not readable JSON ({e}); re-run train.py for it") from None
        ck = doc.get("best_checkpoint") or doc.get("last_checkpoint")
        if doc.get("status", "ok") in USABLE_STATUS and ck:
            path = resolve_checkpoint(s, ck)  # beside the summary, if the sweep was copied
            if path.is_file():
                candidates.append(path)
    if not candidates:
        candidates = sorted(folder.rglob("best*.ckpt")) or sorted(folder.rglob("last.ckpt"))
    return candidates


def load_models(folder: str | Path) -> dict[int, Any]:
    """cluster id -> ClusterModel, each checkpoint read once: each job's best checkpoint
    (by validation) from its summary.json; folders without summaries: every best*.ckpt
    (else last.ckpt) below. Two checkpoints of one cluster: the newer file wins."""
    from mamba_denoiser.inference import load_cluster_model

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"checkpoints={folder}: not a folder")
    candidates = _checkpoint_candidates(folder)
    if not candidates:
        raise ConfigError(f"checkpoints={folder}: no checkpoint (*.ckpt) found below it")
    found: dict[int, Any] = {}
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime):  # newest last, wins
        m = load_cluster_model(path)
        m.predictive_source = _predictive_source(path, m)
        m.predictive_module = predictive_module(m)
        cid = int(m.cluster["id"])
        if cid in found:
            log.warning("two checkpoints for c%d; using the newer: %s", cid, path)
        found[cid] = m
    return dict(sorted(found.items()))


def _predictive_source(path: Path, model) -> str | None:
    """Which weights serve the predictive head, as train.py chose them on validation rows
    (summary.json "predictive_checkpoint"): "filter" (a residual head untrained: exactly
    its filter), another checkpoint's path, or None (the main checkpoint's)."""
    from mamba_denoiser.checkpoint import resolve_checkpoint

    summary = path.parent.parent / "summary.json"  # <job>/checkpoints/<file>.ckpt
    try:
        choice = json.loads(summary.read_text()).get("predictive_checkpoint")
    except (OSError, ValueError):
        return None
    if not choice or not model.has_head("predictive"):
        return None
    if choice == "filter":
        return choice
    pred = resolve_checkpoint(summary, choice)
    if not pred.is_file() or pred.resolve() == path.resolve():
        return None
    return str(pred)


def predictive_module(model):
    """The network of ``model.predictive_source`` (None: serve ``model.module``)."""
    from mamba_denoiser.inference import load_cluster_model
    from mamba_denoiser.network import ClusterNetwork

    source = model.predictive_source
    if source is None:
        return None
    if source == "filter":  # every correction starts at exactly 0: whatever the backbone's
        import torch  # random start, the head gives its filter's numbers

        with torch.random.fork_rng():  # leave the caller's random stream as it was
            return ClusterNetwork.from_hparams(model.hparams).eval()
    return load_cluster_model(source).module


def recorded_data_config(clusters, models: dict) -> dict | None:
    """The data options cluster.py recorded (clusters.json; checkpoints copy them)."""
    first = next(iter(models.values()))
    return clusters.source.get("data_config") or first.source.get("data_config")


def load_trained(
    *,
    checkpoints: str | Path | None,
    log_dir: str | Path,
    clusters: str | Path | None,
    allow_partial: bool,
    data_options: Callable[[dict | None, str], dict],
) -> tuple[Any, dict[int, Any], Any, Path]:
    """(panel, cluster id -> ClusterModel, clusters, checkpoint folder), all checked to
    belong together: the models' features, window and split against the data.

    ``checkpoints``: a sweep or folder (None: the newest sweep under ``log_dir``);
    ``clusters``: its clusters.json (None: the one the models were trained with);
    ``data_options(recorded, recorded_by)``: the data options to read, given those
    cluster.py recorded (stage.remembered_data)."""
    from mamba_denoiser.clustering.artifact import load_clusters
    from mamba_denoiser.clustering.validate import check_clusters_against_panel
    from mamba_denoiser.data.source import panel_from_config

    ck_dir = Path(checkpoints) if checkpoints else find_latest_sweep(log_dir)
    models = load_models(ck_dir)
    clusters_path = clusters or next(iter(models.values())).source.get("clusters")
    if not clusters_path:
        raise ConfigError("which clusters.json? pass clusters=PATH")
    doc = load_clusters(clusters_path)
    options = data_options(recorded_data_config(doc, models), str(doc.path))
    panel = panel_from_config(options)
    recorded = next(iter(models.values())).source.get("split") or {}
    pinned = pinned_split(options, recorded, panel)
    if pinned is not None:  # the training data with rows appended: the trained split
        panel = panel_from_config(pinned)
    check_clusters_against_panel(doc, panel)
    missing = [c.name for c in doc.clusters if c.id not in models]
    if missing and not allow_partial:
        raise ConfigError(
            f"no checkpoint under {ck_dir} for clusters {missing}; train them, or pass "
            "allow_partial=true to leave them raw"
        )
    _check_models(doc, models, panel)
    return panel, models, doc, ck_dir


def _check_models(clusters, models: dict, panel) -> None:
    by_sha: dict[str, list[str]] = {}
    same_fit: list[str] = []  # another file, the same fitted rows (a grown panel)
    for c in clusters.clusters:
        m = models.get(c.id)
        if m is None:
            continue
        if list(c.features) != m.features:
            raise ConfigError(
                f"{m.path} was trained on {m.features[:5]}… but {clusters.path} lists "
                f"{list(c.features)[:5]}… for {c.name}; pass the clusters.json it was trained "
                "with (clusters=...)"
            )
        if m.window > panel.n_rows:
            raise ConfigError(f"{m.path}: window {m.window} is longer than the data")
        check_split(
            (m.source.get("split") or {}).get("bounds"),
            panel,
            artifact=str(m.path),
            error=ConfigError,
            fix="use the same data.split and data.window_size as in training",
        )
        sha = other_data(m.source, panel)
        if sha:
            by_sha.setdefault(sha, []).append(m.name)
        elif (m.source.get("sha256") or panel.sha256) != panel.sha256:
            same_fit.append(m.name)
    warn_other_data(by_sha, panel)  # applying models to other data: a warning
    if same_fit:
        log.info(
            "%s: another file than %s trained on, with the same rows up to the end of "
            "validation (the rows the fits read); later rows differ or were added",
            panel.source,
            ", ".join(same_fit),
        )
    extra = sorted(set(models) - {c.id for c in clusters.clusters})
    if extra:
        raise ConfigError(f"checkpoints for clusters {extra} are not in {clusters.path}")


# ---- the data policy -----------------------------------------------------------------


def split_bounds(panel) -> dict[str, list[int]]:
    """The panel's split as an artifact records it ({part: [start, stop]})."""
    return {k: list(v) for k, v in panel.bounds.items()}


FITTED_PARTS = ("train", "val")  # the parts fits and choices read; test may grow


def check_split(recorded: dict | None, panel, *, artifact: str, error: type, fix: str) -> None:
    """``recorded``: an artifact's split bounds (None: not recorded, nothing to check);
    the train and validation bounds must match (the test part grows with the panel)."""
    mine = split_bounds(panel)
    if recorded and any(list(recorded.get(k, [])) != mine[k] for k in FITTED_PARTS):
        raise error(
            f"{artifact} was made with split bounds {recorded}, the data now gives {mine}; {fix}"
        )


def pinned_split(options: dict, recorded: dict, panel) -> dict | None:
    """The data options with the split pinned to the recorded one by id, where the panel
    is the recorded data with rows appended and its own split moved with the length
    (fractions); None where there is nothing to pin (same bounds, no recorded ids, or the
    ids at the recorded bounds are not this panel's: then check_split reports it)."""
    bounds, ids = recorded.get("bounds") or {}, recorded.get("ids") or {}
    if not bounds or all(list(bounds.get(k, [])) == split_bounds(panel)[k] for k in FITTED_PARTS):
        return None
    if "train" not in ids or "val" not in ids or panel.n_rows < int(bounds["val"][1]):
        return None
    from mamba_denoiser.data.panel import json_id

    have = panel.frame[panel.id_col].to_numpy()
    at = {k: [json_id(have[int(bounds[k][0])]), json_id(have[int(bounds[k][1]) - 1])] for k in ids}
    if any(at.get(k) != list(ids[k]) for k in FITTED_PARTS):
        return None
    split = dict(options.get("split") or {})
    split.update(train_end=ids["train"][1], val_end=ids["val"][1])
    log.info(
        "Split pinned to the one the models were trained with, by id (train ends at %s, "
        "validation at %s): the data have %d rows, the rows after validation are test rows",
        ids["train"][1],
        ids["val"][1],
        panel.n_rows,
    )
    return {**options, "split": split}


def other_data(source: dict | None, panel) -> str | None:
    """The artifact's data sha256 when it differs from this panel's and the rows it was
    fitted on (up to the end of validation, ``rows_digest``) differ too, else None: a
    panel grown by later rows is the same data."""
    source = source or {}
    sha = source.get("sha256")
    if not (sha and panel.sha256 and sha != panel.sha256):
        return None
    digest, bounds = source.get("rows_digest"), (source.get("split") or {}).get("bounds") or {}
    if digest and "val" in bounds and panel.n_rows >= int(bounds["val"][1]):
        if panel.rows_digest(int(bounds["val"][1])) == digest:
            return None
    return sha


def check_fit_data(source: dict | None, panel, *, artifact: str, error: type, fix: str) -> None:
    """Fitting on an artifact: it must come from this very data file (module docstring)."""
    sha = (source or {}).get("sha256")
    if sha and panel.sha256 and sha != panel.sha256:
        raise error(
            f"{artifact} was made from {(source or {}).get('path')} (sha256 {sha[:12]}…), "
            f"but data is {panel.source} (sha256 {panel.sha256[:12]}…). {fix}"
        )


def warn_other_data(names_by_sha: dict[str, list[str]], panel) -> None:
    """Applying artifacts to other data: one warning line per training data file."""
    for sha, names in names_by_sha.items():
        warnings.warn(
            f"{', '.join(names)} trained on data with sha256 {sha[:12]}…, this data "
            f"({panel.source}) has {panel.sha256[:12]}…: denoising other data",
            stacklevel=3,
        )
