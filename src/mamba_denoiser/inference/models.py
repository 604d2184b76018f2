"""A trained cluster denoiser read back from its checkpoint, ready to apply."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mamba_denoiser.checkpoint import CheckpointError, load_checkpoint
from mamba_denoiser.data.scaler import Scaler


@dataclass
class ClusterModel:
    """A trained cluster denoiser and everything needed to apply it (from its checkpoint)."""

    module: Any  # network.ClusterNetwork in eval mode
    path: Path
    cluster: dict[str, Any]
    window: int
    scaler: Scaler  # the train-split fit: raw values <-> windows
    direction: str
    heads: str = "diffusion"  # which heads were trained: diffusion | predictive | both
    source: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)  # the checkpoint's, as read
    # the predictive head's weights where train.py chose other ones on validation rows (its
    # own best checkpoint, or the untrained residual head = its filter); None: ``module``
    predictive_module: Any = None
    predictive_source: str | None = None  # "filter", a checkpoint path, or None

    @property
    def features(self) -> list[str]:
        return list(self.cluster["features"])

    @property
    def name(self) -> str:
        return f"c{self.cluster['id']}"

    @property
    def unit(self) -> np.ndarray:
        """(F,) native units per window unit: w = (y - a·std - mean) / (std · window_scale)."""
        return self.scaler.unit

    @property
    def anchor_len(self) -> int:
        return self.scaler.anchor_len

    def has_head(self, head: str) -> bool:
        return self.heads in (head, "both")


def _first_line(err: BaseException) -> str:
    return next((s.strip() for s in str(err).splitlines() if s.strip()), type(err).__name__)


def load_cluster_model(path: str | Path, device: str = "cpu") -> ClusterModel:
    """Build the network from the checkpoint's hyper-parameters and load its (EMA) weights,
    reading the file with weights_only=True (a shared checkpoint cannot run code).

    The network is a ``network.ClusterNetwork`` (plain torch, the sub-modules and numbers
    of training's DenoiserModule), so denoising never imports Lightning."""
    import torch

    from mamba_denoiser.network import ClusterNetwork

    ck = load_checkpoint(path, map_location=device)
    hp = dict(ck["hyper_parameters"])
    try:
        module = ClusterNetwork.from_hparams(hp)
        module.load_state_dict(ck["state_dict"])
    except torch.OutOfMemoryError:
        raise
    except (TypeError, RuntimeError, KeyError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its hyper-parameters describe "
            f"({_first_line(e)}); was it written by another version of train.py?"
        ) from None
    module.eval().to(device)
    sc = hp["scaler"]
    try:
        n_f = len(hp["cluster"]["features"])
        has_scale = "window_scale" in sc
    except (TypeError, KeyError) as e:
        raise CheckpointError(
            f"{path}: malformed cluster or scaler in its hyper-parameters ({_first_line(e)}); "
            "use a .ckpt written by train.py"
        ) from None
    if not has_scale:
        raise CheckpointError(
            f"{path}: no window scale in its scaler (a checkpoint from before scale-free "
            "windows); retrain this cluster with the current train.py"
        )
    try:
        scaler = Scaler.from_dict(sc, n_features=n_f)
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"{path}: unreadable scaler in its hyper-parameters ({_first_line(e)}); "
            "use a .ckpt written by train.py"
        ) from None
    return ClusterModel(
        module=module,
        path=Path(path),
        cluster=hp["cluster"],
        window=int(hp["window_size"]),
        scaler=scaler,
        direction=str(hp["model"].get("direction", "causal")),  # the model's default
        heads=str(hp.get("heads", "diffusion")),
        source=dict(hp.get("source") or {}),
        hparams=hp,
    )
