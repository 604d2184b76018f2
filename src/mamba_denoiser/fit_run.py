"""``Denoiser.fit``: cluster.py + train.py on a DataFrame, in this process, through the same
job functions and Hydra configs as the scripts (run_cluster, then run_train per cluster).

The default budget is a demo (``experiment=smoke``: a tiny model, a few batches per
cluster, seconds on a CPU): enough to try the API end to end, not to denoise well. For
real use train with the scripts (``python train.py experiment=cpu_all_clusters``, or
``all_clusters`` on a GPU) and wrap the run with ``Denoiser.from_run`` (or pass a bigger
budget in ``train_overrides``).

Everything is written under ``workdir`` (outputs/ as the scripts lay it out), so the run
can be inspected, re-served with ``Denoiser.from_run(log_dir=workdir / "outputs")``, or
trained further with the scripts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from mamba_denoiser.errors import PanelError
from mamba_denoiser.vocabulary import ID_COL

DEMO_TRAIN = ("experiment=smoke", "logger=csv")


@contextlib.contextmanager
def _library_errors() -> Iterator[None]:
    """The jobs' failure policy prints one line and exits (cli.fail_cleanly): right for a
    script, wrong inside a caller's Python. HYDRA_FULL_ERROR=1 makes it re-raise."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _compose(config: str, overrides: list[str], out: Path):
    """The stage's config as its script would compose it, with the run directory set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from mamba_denoiser.console import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)  # the jobs read their overrides from it (stage.py)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    return cfg


def _write_csv(frame: pd.DataFrame, path: Path, id_col: str) -> Path:
    """The frame as the CSV cluster.py reads: with a DatetimeIndex, the row number is the
    id (the Denoiser is positional; the dates only order the rows)."""
    if id_col not in frame.columns:
        if not isinstance(frame.index, pd.DatetimeIndex):
            raise PanelError(f"fit: no id column '{id_col}' and no DatetimeIndex; give one of them")
        if not frame.index.is_monotonic_increasing or frame.index.has_duplicates:
            raise PanelError("fit: dates must be strictly increasing (sort the frame first)")
        frame = frame.reset_index(drop=True)
        frame.insert(0, id_col, range(len(frame)))
    frame.to_csv(path, index=False)
    return path


SPLIT_BY_ID = ("data.split.train_end=", "data.split.val_end=")


def _dates_to_rows(frame: pd.DataFrame, overrides: Sequence[str], id_col: str) -> list[str]:
    """``data.split.train_end=DATE`` / ``val_end=DATE`` for a frame with a DatetimeIndex
    (whose CSV ids are row numbers): the row number of the last date on or before DATE.
    Other overrides, and frames with an id column, pass unchanged."""
    if id_col in frame.columns or not isinstance(frame.index, pd.DatetimeIndex):
        return list(overrides)
    out = []
    for o in overrides:
        key = next((k for k in SPLIT_BY_ID if o.lstrip("+").startswith(k)), None)
        value = o.split("=", 1)[1] if key else ""
        if key is None or value in ("", "null"):
            out.append(o)
            continue
        try:
            date = pd.Timestamp(value)
        except (TypeError, ValueError):
            raise PanelError(f"fit: {o}: the frame is indexed by dates; give a date") from None
        n = int((frame.index <= date).sum())
        if n == 0:
            raise PanelError(f"fit: {o}: before the first date ({frame.index[0].date()})")
        out.append(f"{key}{n - 1}")
    return out


def fit_run(
    frame: pd.DataFrame,
    *,
    workdir: str | Path | None = None,
    cluster_overrides: Sequence[str] = (),
    train_overrides: Sequence[str] = DEMO_TRAIN,
    id_col: str = ID_COL,
) -> Path:
    """Cluster ``frame`` and train every cluster; returns the training sweep folder."""
    from mamba_denoiser.cluster_job import run_cluster
    from mamba_denoiser.train_job import register_cluster_options, run_train

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mamba_denoiser_fit_"))
    root.mkdir(parents=True, exist_ok=True)
    csv = _write_csv(frame, root / "train.csv", id_col)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    base = [f"paths.root_dir={root}"]
    with _library_errors():
        ov = [*base, "data=csv", f"data.path={csv}", f"data.id_col={id_col}", "plots=false"]
        cluster_dir = root / "outputs" / "cluster" / stamp
        cluster_overrides = _dates_to_rows(frame, cluster_overrides, id_col)
        doc = run_cluster(_compose("cluster", [*ov, *cluster_overrides], cluster_dir))
        clusters = cluster_dir / "clusters.json"
        sweep = root / "outputs" / "train_multirun" / stamp
        for spec in doc["clusters"]:  # one job per cluster, as experiment=all_clusters
            cid = int(spec["id"])
            ov = [*base, f"clusters={clusters}", f"cluster=c{cid}", *train_overrides]
            register_cluster_options(ov)  # the cluster=c<id> options, from clusters.json
            run_train(_compose("train", ov, sweep / f"{cid}_c{cid}"))
    return sweep
