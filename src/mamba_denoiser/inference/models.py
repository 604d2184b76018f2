"""A trained cluster denoiser read back from its checkpoint, ready to apply."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mamba_denoiser.checkpoint import CheckpointError, load_checkpoint


@dataclass
class ClusterModel:
    """A trained cluster denoiser and everything needed to apply it (from its checkpoint)."""

    module: Any  # DenoiserModule in eval mode
    path: Path
    cluster: dict[str, Any]
    window: int
    mean: np.ndarray  # (F,) train-split z-score
    std: np.ndarray
    window_scale: np.ndarray  # (F,) in z units
    anchor_len: int
    direction: str
    heads: str = "diffusion"  # which heads were trained: diffusion | predictive | both
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return list(self.cluster["features"])

    @property
    def name(self) -> str:
        return f"c{self.cluster['id']}"

    @property
    def unit(self) -> np.ndarray:
        """(F,) native units per window unit: w = (y - a·std - mean) / (std · window_scale)."""
        return self.std * self.window_scale

    def has_head(self, head: str) -> bool:
        return self.heads in (head, "both")


def _first_line(err: BaseException) -> str:
    return next((s.strip() for s in str(err).splitlines() if s.strip()), type(err).__name__)


def load_cluster_model(path: str | Path, device: str = "cpu") -> ClusterModel:
    """Build the module from the checkpoint's hyper-parameters and load its (EMA) weights,
    reading the file with weights_only=True (a shared checkpoint cannot run code)."""
    import torch

    from mamba_denoiser.training import DenoiserModule

    ck = load_checkpoint(path, map_location=device)
    hp = dict(ck["hyper_parameters"])
    hp["compile"] = False
    try:
        module = DenoiserModule(**hp)
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
        keys = ("mean", "std", "window_scale")
        arrays = {k: np.asarray(sc[k], dtype=np.float64) for k in keys}
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"{path}: unreadable scaler in its hyper-parameters ({_first_line(e)}); "
            "use a .ckpt written by train.py"
        ) from None
    if any(a.shape != (n_f,) for a in arrays.values()):
        raise CheckpointError(f"{path}: scaler sizes do not match its {n_f} features")
    return ClusterModel(
        module=module,
        path=Path(path),
        cluster=hp["cluster"],
        window=int(hp["window_size"]),
        anchor_len=int(sc.get("anchor_len", 10)),
        direction=str(hp["model"].get("direction", "causal")),  # the model's default
        heads=str(hp.get("heads", "diffusion")),
        source=dict(hp.get("source") or {}),
        **arrays,
    )
