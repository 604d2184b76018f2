"""Training callbacks that Lightning does not ship: a warm-up EMA of the weights, a quality
figure and plain epoch logs."""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

log = logging.getLogger("mamba_denoiser.train")


class ValidationFigure(L.Callback):
    """Every `every_n_epochs`, log a figure of validation windows: observed vs x̂0.

    x̂0 is the one-step estimate from the window diffused to `t_star` with a fixed ε, so
    figures are comparable across epochs. Drawn inside validation, i.e. with the EMA
    weights that validation uses.
    """

    def __init__(self, every_n_epochs: int = 5, t_star: int = 100, n_features: int = 3):
        self.every_n_epochs = every_n_epochs
        self.t_star = t_star
        self.n_features = n_features

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs and trainer.current_epoch:
            return
        tb = next((lg for lg in trainer.loggers if hasattr(lg.experiment, "add_figure")), None)
        if tb is None:
            return
        x0, mask = batch["x"][:1], batch["mask"][:1]  # (1, L, F)
        g = torch.Generator().manual_seed(0)
        eps = torch.randn(x0.shape, generator=g).to(x0.device)
        t = torch.full((1,), self.t_star, device=x0.device, dtype=torch.long)
        with torch.no_grad():
            x_t, _ = pl_module.sde.sample(torch.where(mask, x0, torch.zeros_like(x0)), t, noise=eps)
            x0_hat = pl_module.sde.predict_x0(x_t, t, pl_module(x_t, t, mask))
        from mamba_denoiser.plots import validation_window_figure

        names = pl_module.hparams.cluster["features"]
        fig = validation_window_figure(
            x0[0].float().cpu().numpy(),
            x0_hat[0].float().cpu().numpy(),
            mask[0].cpu().numpy(),
            names,
            n_features=self.n_features,
            title=f"c{pl_module.hparams.cluster['id']} epoch {trainer.current_epoch}: "
            f"observed vs x̂0 (t={self.t_star})",
        )
        tb.experiment.add_figure("val/denoised_windows", fig, global_step=trainer.global_step)


class EpochSummary(L.Callback):
    """One log line per epoch: losses and time. Readable in CI logs and batch jobs."""

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics

        def get(k):
            return f"{m[k].item():.4f}" if k in m else "-"

        log.info(
            "c%s epoch %d/%d  train/loss %s  val/loss %s  val/noise_mse %s  (%.1fs)",
            pl_module.hparams.cluster["id"],
            trainer.current_epoch + 1,
            trainer.max_epochs,
            get("train/loss_epoch"),
            get("val/loss"),
            get("val/noise_mse"),
            time.perf_counter() - getattr(self, "_t0", time.perf_counter()),
        )


def warmup_ema_avg_fn(decay: float = 0.999):
    """EMA whose decay ramps up as min(decay, (1+n)/(10+n)): short runs are not stuck
    near the initial weights, long runs get the full decay."""

    @torch.no_grad()
    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)

    return avg_fn


class EMA(WeightAveraging):
    """Lightning's weight-averaging callback with a warm-up EMA; validation uses the EMA
    weights and checkpoints store them as `state_dict` (the raw weights are kept too)."""

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1):
        super().__init__(avg_fn=warmup_ema_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self.every_n_steps = every_n_steps

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.every_n_steps == 0
