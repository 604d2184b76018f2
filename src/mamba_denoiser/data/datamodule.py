"""LightningDataModule: one cluster's windows from the chronological splits."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from mamba_denoiser.data.panel import Panel, PanelError
from mamba_denoiser.data.scaler import Scaler
from mamba_denoiser.data.windows import (
    WindowDataset,
    collate_batch,
    gather_windows,
    window_starts,
)
from mamba_denoiser.vocabulary import ANCHOR_LEN, WINDOW_SIZE

log = logging.getLogger(__name__)


class ClusterDataModule(L.LightningDataModule):
    """Scale-free windows of `features` from a Panel (see data/windows.py).

    Two train-split fits: the per-feature z-score (mean, std) and the window scale c
    (RMS of z minus the window anchor over the train windows). Nothing is fitted on
    validation or test rows.

    `batch_size` is the global batch: under DDP each device gets batch_size // world_size.
    Train windows come from the train split with `stride`; validation windows from the val
    split with `val_stride`. The embargo between splits keeps them apart.
    """

    def __init__(
        self,
        panel: Panel,
        features: Sequence[str],
        *,
        window_size: int = WINDOW_SIZE,
        stride: int = 1,
        val_stride: int = 5,
        batch_size: int = 64,
        num_workers: int = 0,
        min_observed_frac: float = 0.5,
        anchor_len: int = ANCHOR_LEN,
        residual: bool = False,
    ):
        super().__init__()
        # Causal denoising serves each row from the back half of a window, which must lie
        # after the rows that set the window's level (inference.serving_plan).
        if not 0 <= anchor_len <= window_size - window_size // 2:  # 0: a constant anchor
            raise PanelError(
                f"data.anchor_len={anchor_len} must be in [0, window_size - window_size // 2 = "
                f"{window_size - window_size // 2}]; lower data.anchor_len"
            )
        missing = [f for f in features if f not in panel.frame.columns]
        if missing:
            raise PanelError(
                f"{panel.source}: cluster features {missing} are not in the panel; "
                "was clusters.json made from another file?"
            )
        self.features = list(features)
        self.window_size = window_size
        self.stride = stride
        self.val_stride = val_stride
        self.batch_size = batch_size
        self.batch_size_per_device = batch_size
        self.num_workers = num_workers
        self.min_observed_frac = min_observed_frac
        self.anchor_len = anchor_len
        self.bounds = panel.bounds

        raw = panel.frame[self.features].to_numpy(dtype=np.float64)  # (T, F)
        zscore = Scaler.zscore(raw, self.bounds["train"], anchor_len)
        self.values = zscore.to_z(raw)  # NaN stays NaN
        observed = ~np.isnan(self.values)
        kw = dict(window=window_size, min_observed_frac=min_observed_frac)
        self.train_starts = window_starts(
            observed,
            stride=stride,
            start=self.bounds["train"][0],
            stop=self.bounds["train"][1],
            **kw,
        )
        self.val_starts = window_starts(
            observed,
            stride=val_stride,
            start=self.bounds["val"][0],
            stop=self.bounds["val"][1],
            **kw,
        )
        if len(self.train_starts) == 0:
            raise PanelError(
                f"{panel.source}: no training window of {window_size} rows is at least "
                f"{min_observed_frac:.0%} observed for features {self.features[:5]}...; "
                "lower data.window_size or data.min_observed_frac"
            )
        if len(self.val_starts) == 0:
            raise PanelError(
                f"{panel.source}: the val split {self.bounds['val']} holds no usable window of "
                f"{window_size} rows; raise data.split.val or lower data.window_size"
            )
        self.fitted = zscore.with_window_scale(self.values, self.train_starts, window_size)
        # the residual head's start: each feature's robust filter, fitted on train rows
        self.priors = self._filter_priors(raw) if residual else None

    def _filter_priors(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The robust filter's one-step predictions in z units (``WindowDataset`` priors):
        fitted on the train rows only, run causally over the whole history."""
        from mamba_denoiser.classical import future_targets
        from mamba_denoiser.robust import filter_priors, fit_robust

        p = filter_priors(raw, *fit_robust(raw, self.bounds["train"]))
        sd = self.fitted.std
        # u_t, the future target of each feature's train-fitted dynamics (E[u_t | s] = s_t,
        # its error made of noise and innovations after row t): validation scores the
        # head's estimate against it, a signal-error proxy for any noise law. From the rows
        # up to the end of validation only (NaN where it would need later ones).
        stop = self.bounds["val"][1]
        target = np.full(raw.shape, np.nan)
        target[:stop] = future_targets(raw[:stop], self.bounds["train"])
        return {
            "target": (target - self.fitted.mean) / sd,
            "mean": (p.mean - self.fitted.mean) / sd,
            "var": p.var / sd**2,
            "var_jump": p.var_jump / sd**2,
            "noise_var": p.noise_var / sd[:, None] ** 2,
            "eps": p.noise_weights,
            "jump": p.jump_weights,
        }

    @property
    def scaler(self) -> dict:
        """Everything needed to map raw values to model windows and back (checkpointed):
        ``Scaler.to_dict`` of the train-split fit."""
        return self.fitted.to_dict()

    def distribution_gap(self) -> dict[str, dict[str, float]]:
        """How far validation windows sit from training windows, per feature:
        |mean_val - mean_train| / sd_train of the model's inputs, summarised over features
        (median, p90, max) for the plain z-score and for the scale-free windows."""
        import torch

        v = torch.as_tensor(self.values, dtype=torch.float64)
        out = {}
        for name in ("zscore", "window"):
            stats = []
            for starts in (self.train_starts, self.val_starts):
                z = gather_windows(v, torch.as_tensor(starts), self.window_size)
                mask = ~torch.isnan(z)
                if name == "window":
                    z, _ = self.fitted.to_windows(z, mask)
                zz = torch.where(mask, z, torch.zeros((), dtype=z.dtype))
                n = mask.sum((0, 1)).clamp(min=1)
                mean = zz.sum((0, 1)) / n
                var = (torch.where(mask, z - mean, torch.zeros((), dtype=z.dtype)) ** 2).sum(
                    (0, 1)
                ) / n
                stats.append((mean, var.sqrt().clamp(min=1e-12)))
            gap = ((stats[1][0] - stats[0][0]).abs() / stats[0][1]).numpy()
            out[name] = {
                "median": float(np.median(gap)),
                "p90": float(np.quantile(gap, 0.9)),
                "max": float(gap.max()),
            }
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            world = self.trainer.world_size
            if self.batch_size % world:
                raise ValueError(
                    f"batch_size {self.batch_size} is not divisible by the "
                    f"number of devices {world}"
                )
            self.batch_size_per_device = self.batch_size // world
        kw = dict(
            scale=self.fitted.window_scale, anchor_len=self.fitted.anchor_len, priors=self.priors
        )
        self.train_set = WindowDataset(self.values, self.train_starts, self.window_size, **kw)
        self.val_set = WindowDataset(self.values, self.val_starts, self.window_size, **kw)

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size_per_device,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
