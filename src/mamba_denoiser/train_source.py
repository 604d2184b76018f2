"""What one training run trains, resolved once into a ``TrainSource``: from clusters.json
and the configured network, or from a checkpoint (resume), whose hyper-parameters then
decide the cluster, window, scaler and network.

Every check that can fail (clusters.json against the data, the checkpoint against the data
and the requested cluster) runs here, before the first batch. The source then builds the
run's data module and LightningModule. Plain arguments only: train_job passes the config's
values in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamba_denoiser.artifacts import check_fit_data, check_split
from mamba_denoiser.cli import ROOT_ENV
from mamba_denoiser.errors import CheckpointError, ClustersError, ConfigError
from mamba_denoiser.vocabulary import ANCHOR_LEN

log = logging.getLogger("mamba_denoiser")

# what a run's network is, besides what the data decide (scaler, noise_sigma): the checkpoint
# hyper-parameters a resumed run keeps (network.py, NetworkMixin._build_network)
NETWORK_KEYS = ("cluster", "window_size", "model", "sde", "loss", "heads", "predictive")
LOADER_KEYS = ("stride", "val_stride", "batch_size", "num_workers", "min_observed_frac")
# (data options recorded by an artifact or None, that artifact's path) -> the data options
DataOptions = Callable[[dict | None, str], dict]


# ---- which clusters.json: from the command line, before Hydra composes ----------------


def argv_value(argv: list[str], key: str) -> str | None:
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
    log_dir = argv_value(argv, "paths.log_dir")
    if log_dir:
        return Path(log_dir) / "cluster"
    root = argv_value(argv, "paths.root_dir") or os.environ.get(ROOT_ENV) or os.getcwd()
    return Path(root) / "outputs" / "cluster"


def resolve_clusters_path(argv: list[str]) -> Path:
    from mamba_denoiser.clustering.artifact import find_latest_clusters

    given = argv_value(argv, "clusters")
    return Path(given) if given else find_latest_clusters(clusters_dir(argv))


# ---- which checkpoint a run resumes from ----------------------------------------------

RESUME_MODES = ("auto", "last")  # ckpt_path= values that name the run folder's last.ckpt


def resume_checkpoint(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint a run resumes from. ckpt_path=PATH: that file. ckpt_path=last:
    <checkpoint_dir>/last.ckpt, which must exist. ckpt_path=auto (the default): that file
    when it exists, as for a job its launcher requeued into the same run folder, else None
    (a fresh start). null: None."""
    if not ckpt_path:
        return None
    if str(ckpt_path) not in RESUME_MODES:
        return str(ckpt_path)
    last = Path(checkpoint_dir) / "last.ckpt"
    if last.is_file():
        log.info("Resuming from %s (ckpt_path=%s)", last, ckpt_path)
        return str(last)
    if ckpt_path == "last":
        raise CheckpointError(
            f"ckpt_path=last: there is no {last} to resume from. ckpt_path=auto starts "
            "afresh when there is none; ckpt_path=PATH resumes from another run's checkpoint"
        )
    return None


# ---- the source -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSource:
    """One run's panel, data options and network, from clusters.json or a checkpoint."""

    panel: Any
    data: dict[str, Any]  # the data options the panel was read with
    network: dict[str, Any]  # NETWORK_KEYS -> value
    clusters_path: str | None
    anchor_len: int
    ckpt_path: str | None = None  # resume from this checkpoint
    hp: dict[str, Any] | None = None  # its hyper-parameters

    @property
    def cluster(self) -> dict[str, Any]:
        return self.network["cluster"]

    @property
    def heads(self) -> str:
        return str(self.network["heads"])

    @property
    def window(self) -> int:
        return int(self.network["window_size"])

    @property
    def direction(self) -> str:
        return self.network["model"].get("direction", "causal")

    @property
    def residual(self) -> bool:
        """A residual predictive head (its checkpoint follows the future-target risk)."""
        pred = self.network.get("predictive") or {}
        return self.heads != "diffusion" and bool(pred.get("residual"))

    def datamodule(self, **loader: Any):
        """The cluster's windows (`loader`: LOADER_KEYS); a resumed run's train-split
        scaler must be the checkpoint's."""
        from mamba_denoiser.data.datamodule import ClusterDataModule

        dm = ClusterDataModule(
            self.panel,
            self.cluster["features"],
            window_size=self.window,
            anchor_len=self.anchor_len,
            residual=self.residual,
            **loader,
        )
        key = dm.fitted.differs_from(self.hp["scaler"]) if self.hp is not None else None
        if key:
            raise ConfigError(
                f"{self.ckpt_path}: its train-split scaler ({key}) differs from this "
                "data's; resume with the same data and data.split as the checkpoint"
            )
        return dm

    def module(
        self,
        dm,
        *,
        optim: dict[str, Any],
        compile: bool = False,
        t_sampling: dict[str, Any] | None = None,
    ):
        """The LightningModule; a resumed run keeps its own t draws (a checkpoint without
        the key drew uniform t) and σ."""
        from mamba_denoiser.training import DenoiserModule

        if self.hp is not None:
            t_sampling = self.hp.get("t_sampling")
        noise_sigma = None
        # σ is needed by the predictive NLL and by log-normal t
        if self.heads != "diffusion" or (t_sampling or {}).get("kind") == "lognormal":
            noise_sigma = (self.hp or {}).get("noise_sigma") or (
                noise_sigma_window_units(self.panel, self.cluster["features"], dm)
            )
        return DenoiserModule(
            **self.network,
            scaler=dm.scaler,
            noise_sigma=noise_sigma,
            compile=compile,
            source={**self.panel.summary(), "clusters": self.clusters_path},
            t_sampling=t_sampling,
            **optim,
        )


def resolve_source(
    *,
    option: dict[str, Any],
    clusters: str | None,
    ckpt_path: str | None,
    data_options: DataOptions,
    model: dict[str, Any],
    sde: dict[str, Any],
    loss: dict[str, Any],
    head: dict[str, Any] | None,
    stationary_anchor: str = "constant",
) -> TrainSource:
    """The run's source. `option`: the `cluster=` option (id, type, n_features,
    clusters_file); `clusters`: clusters=PATH if given; `ckpt_path`: resume from it;
    `data_options(recorded, recorded_by)`: the data options given, or where none was given,
    the ones the clusters.json or checkpoint recorded (stage.remembered_data)."""
    from mamba_denoiser.data.source import panel_from_config

    heads, pred_kw = head_kwargs(head)
    if ckpt_path:
        return _resumed(str(ckpt_path), option, heads, data_options)
    from mamba_denoiser.clustering.artifact import load_clusters

    path = clusters or option.get("clusters_file")
    doc = load_clusters(path) if path else None
    recorded = doc.source.get("data_config") if doc is not None else None
    data = data_options(recorded, str(doc.path) if doc is not None else "")
    panel = panel_from_config(data)
    cluster, clusters_path = _cluster_from_clusters(doc, option, panel)
    network = {
        "cluster": cluster,
        "window_size": int(data["window_size"]),
        "model": model,
        "sde": sde,
        "loss": loss,
        "heads": heads,
        "predictive": pred_kw,
    }
    anchor = anchor_len(stationary_anchor, cluster, data)
    return TrainSource(panel, data, network, clusters_path, anchor)


def _cluster_from_clusters(doc, option: dict[str, Any], panel) -> tuple[dict[str, Any], str]:
    from mamba_denoiser.clustering.validate import check_clusters_against_panel

    if doc is None:
        raise ClustersError("no clusters.json; run `python cluster.py` first")
    spec = doc.get(int(option["id"]))
    if spec.type != option["type"] or len(spec.features) != option["n_features"]:
        raise ClustersError(f"{doc.path} changed since start-up; run again")
    src, where = doc.source, str(doc.path)
    fix = "Re-run cluster.py on this data or pass the matching clusters=PATH."
    check_fit_data(src, panel, artifact=where, error=ClustersError, fix=fix)
    check_split(
        (src.get("split") or {}).get("bounds"),
        panel,
        artifact=where,
        error=ClustersError,
        fix="use the same data.split and data.window_size for every stage",
    )
    check_clusters_against_panel(doc, panel)
    cluster = {
        "id": spec.id,
        "type": spec.type,
        "strategy": spec.strategy,
        "features": list(spec.features),
    }
    return cluster, str(Path(doc.path).resolve())


def _resumed(
    ckpt_path: str, option: dict[str, Any], heads: str, data_options: DataOptions
) -> TrainSource:
    """Resume: the checkpoint decides the cluster, window, scaler and network."""
    from mamba_denoiser.checkpoint import load_checkpoint
    from mamba_denoiser.data.source import panel_from_config
    from mamba_denoiser.network import network_defaults

    hp = load_checkpoint(ckpt_path)["hyper_parameters"]
    data = data_options((hp.get("source") or {}).get("data_config"), ckpt_path)
    panel = panel_from_config(data)
    c = hp["cluster"]
    if int(option["id"]) != int(c["id"]):
        raise ConfigError(
            f"ckpt_path={ckpt_path} is a checkpoint of cluster c{c['id']}, but "
            f"cluster={option.get('name')} was given. Drop cluster=... when resuming: the "
            "checkpoint decides the cluster."
        )
    check_fit_data(
        hp.get("source"),
        panel,
        artifact=ckpt_path,
        error=CheckpointError,
        fix="Resume with the same data (data=... data.path=...).",
    )
    missing = [f for f in c["features"] if f not in panel.continuous]
    if missing:
        raise CheckpointError(
            f"{ckpt_path}: features {missing} are not continuous columns of "
            f"{panel.source}; resume with the data it was trained on"
        )
    recorded = {**network_defaults(), **hp}
    network = {k: recorded[k] for k in NETWORK_KEYS}
    if heads != network["heads"]:  # the monitored metric (conf/head) must exist in this run
        raise ConfigError(
            f"ckpt_path={ckpt_path} was trained with head={network['heads']}, but "
            f"head={heads} is configured; resume with head={network['heads']}"
        )
    clusters_path = (hp.get("source") or {}).get("clusters")
    anchor = int(hp["scaler"].get("anchor_len", ANCHOR_LEN))
    return TrainSource(panel, data, network, clusters_path, anchor, ckpt_path, hp)


def head_kwargs(head: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(heads, predictive kwargs) of DenoiserModule from conf/head/."""
    head = head or {"name": "diffusion"}
    keys = ("n_components", "weight", "var_floor", "residual")
    return str(head.get("name", "diffusion")), {k: head[k] for k in keys if k in head}


def anchor_len(mode: str, cluster: dict[str, Any], data: dict[str, Any]) -> int:
    """data.anchor_len, or 0 (a constant anchor: the train mean) for a mean-reverting
    cluster when stationary_anchor=constant: typed mean_reverting needs an ADF rejection
    of a unit root (clustering/grouping.py), so its z-score stays in range, and its level
    comes from the whole train split instead of a window's first noisy rows."""
    if mode not in ("window", "constant"):
        raise ConfigError(f"stationary_anchor={mode!r}: choose window or constant")
    if mode == "constant" and cluster["type"] == "mean_reverting":
        return 0
    return int(data.get("anchor_len", ANCHOR_LEN))


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
