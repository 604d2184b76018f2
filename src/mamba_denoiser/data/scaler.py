"""The map between a cluster's raw values and the model's scale-free windows.

One object, fitted on the train split only and stored in every checkpoint, used by the
datamodule (training windows), inference (serving windows and back to native units) and
the resume check (the data must give the same fit). The window algebra is
data/windows.py's:

    z = (y - mean) / std                    train-split z-score, per feature   (T, F)
    w = (z - a) / c                         a: the window's anchor, c: window scale
    y = (w · c + a) · std + mean            exact inverse
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mamba_denoiser.data.windows import (
    denormalise_windows,
    fit_window_scale,
    normalise_windows,
)
from mamba_denoiser.errors import PanelError
from mamba_denoiser.vocabulary import ANCHOR_LEN

KEYS = ("mean", "std", "window_scale")


def fit_zscore(values: np.ndarray, train: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the observed TRAIN rows only (honesty rule 1)."""
    tr = values[train[0] : train[1]]
    n_obs = np.sum(~np.isnan(tr), axis=0)
    if (n_obs < 2).any():
        raise PanelError(
            f"features at positions {np.flatnonzero(n_obs < 2).tolist()} have "
            "fewer than 2 observed train rows; they cannot be scaled"
        )
    mean = np.nanmean(tr, axis=0)
    std = np.nanstd(tr, axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean, std


@dataclass(frozen=True)
class Scaler:
    mean: np.ndarray  # (F,) native units
    std: np.ndarray  # (F,) native units
    window_scale: np.ndarray  # (F,) z units
    anchor_len: int = ANCHOR_LEN

    @classmethod
    def zscore(cls, raw: np.ndarray, train: tuple[int, int], anchor_len: int = ANCHOR_LEN):
        """The z-score half of the fit (window scale 1 until ``with_window_scale``)."""
        mean, std = fit_zscore(raw, train)
        return cls(mean, std, np.ones_like(mean), int(anchor_len))

    def with_window_scale(self, z: np.ndarray, starts: np.ndarray, window: int) -> Scaler:
        """The window scale fitted on the (train) windows starting at ``starts`` of z."""
        scale = fit_window_scale(z, starts, window, self.anchor_len)
        return Scaler(self.mean, self.std, scale, self.anchor_len)

    @property
    def unit(self) -> np.ndarray:
        """(F,) native units per window unit."""
        return self.std * self.window_scale

    def to_z(self, raw: np.ndarray) -> np.ndarray:
        """(T, F) native -> float32 z-scores; NaN stays NaN."""
        return ((raw - self.mean) / self.std).astype(np.float32)

    def to_windows(self, zw: torch.Tensor, mask: torch.Tensor):
        """(B, L, F) z windows -> (w, anchor (B, 1, F))."""
        scale = torch.as_tensor(self.window_scale, dtype=zw.dtype)
        return normalise_windows(zw, mask, scale, self.anchor_len)

    def from_windows(self, w: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """Window units -> z units (exact inverse of ``to_windows``; c in the anchor's dtype,
        as ``to_windows`` used it)."""
        scale = torch.as_tensor(self.window_scale, dtype=anchor.dtype)
        return denormalise_windows(w, anchor, scale)

    def to_native(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean

    # ---- the checkpoint form ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "window_scale": self.window_scale.tolist(),
            "anchor_len": self.anchor_len,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], n_features: int | None = None) -> Scaler:
        """Raises KeyError / ValueError on a malformed record (callers name the file)."""
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in KEYS}
        if n_features is not None and any(a.shape != (n_features,) for a in arrays.values()):
            raise ValueError(f"scaler sizes do not match its {n_features} features")
        return cls(**arrays, anchor_len=int(d.get("anchor_len", ANCHOR_LEN)))

    def differs_from(self, d: dict[str, Any]) -> str | None:
        """The first of mean / std / window_scale in the record ``d`` that this fit does not
        reproduce (np.allclose), else None: a resumed run must see the same data and split."""
        mine = self.to_dict()
        return next((k for k in KEYS if k in d and not np.allclose(d[k], mine[k])), None)
