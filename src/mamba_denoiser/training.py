"""LightningModule: MultivariateMambaDenoiser + VPSDE + DenoisingLoss for one cluster.

The module's hyper-parameters are the checkpoint contract (docs/design.md, "Checkpoint"):
they carry the cluster (id, type, strategy, features), the window size, the train-split
scaler (z-score, window scale, anchor length), the model settings (direction included)
and the SDE/loss settings, so denoise.py needs nothing but the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from mamba_denoiser.diffusion import VPSDE, DenoisingLoss
from mamba_denoiser.models import MultivariateMambaDenoiser


class NonFiniteLossError(FloatingPointError):
    """Training diverged; raised before the optimiser step so no broken weights are saved."""


class DenoiserModule(L.LightningModule):
    def __init__(
        self,
        *,
        cluster: dict[str, Any],  # {id, type, strategy, features}
        window_size: int = 60,
        scaler: dict[str, Any] | None = None,  # train-split {mean, std, window_scale, anchor_len}
        model: dict[str, Any] | None = None,  # MultivariateMambaDenoiser kwargs
        sde: dict[str, Any] | None = None,  # VPSDE kwargs
        loss: dict[str, Any] | None = None,  # DenoisingLoss kwargs (strategy, weights)
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        compile: bool = False,
        source: dict[str, Any] | None = None,  # data provenance (path, sha256, split)
    ):
        super().__init__()
        # Not sent to the loggers as-is (the scaler alone is hundreds of numbers): train.py
        # logs a flat, comparable summary with the final metrics to TensorBoard's HPARAMS.
        self.save_hyperparameters(logger=False)
        n_features = len(cluster["features"])
        self.model = MultivariateMambaDenoiser(
            n_features=n_features, window_size=window_size, **(model or {})
        )
        self.sde = VPSDE(**(sde or {}))
        loss = dict(loss or {})
        strategy = loss.pop("strategy", "auto")
        self.loss_fn = DenoisingLoss(cluster_type=cluster["type"], strategy=strategy, **loss)
        self.use_mask = self.model.use_mask

    # ---- the diffusion training objective -------------------------------------------
    def diffusion_loss(
        self,
        x0: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ε-prediction loss on observed positions of x0 (B, L, F) at random or given t (B,)."""
        if t is None:
            t = torch.randint(0, self.sde.num_timesteps, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0) if eps is None else eps
        # Unobserved cells: the network zeroes them and reads the mask bit (models/denoiser.py),
        # the loss skips them; the 0 here only keeps NaN out of the arithmetic.
        x_t, _ = self.sde.sample(torch.where(mask, x0, torch.zeros_like(x0)), t, noise=eps)
        eps_hat = self(x_t, t, mask)
        x0_hat = self.sde.predict_x0(x_t, t, eps_hat)
        loss, terms = self.loss_fn(
            eps_hat, eps, x0_hat, mask=mask, return_terms=True, sample_weight=self.sde.alpha_bar(t)
        )
        # Reference: the best ε-predictor that knows only that scaled values are N(0, 1)
        # i.i.d., E[ε | x_t] = σ_t x_t. Beating it means the model learned temporal or
        # cross-feature structure, not just the marginal scale.
        with torch.no_grad():
            sq = (self.sde.sigma(t).view(-1, 1, 1) * x_t - eps).float().square()
            terms["noise_mse_iid_baseline"] = (sq * mask).sum() / mask.sum().clamp(min=1)
        return loss, terms

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None):
        return self.model(x_t, t, mask=mask) if self.use_mask else self.model(x_t, t)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, terms = self.diffusion_loss(batch["x"], batch["mask"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step} (cluster c{self.hparams.cluster['id']}). Stopped before "
                "the optimiser step, so no broken weights are saved. Lower the learning rate "
                "(optim.lr=...), train in full precision (trainer.precision=32-true), or check "
                "the input data."
            )
        self.log_dict(
            {f"train/{k}": v for k, v in terms.items()},
            prog_bar=False,
            on_step=True,
            on_epoch=True,
            batch_size=batch["x"].shape[0],
        )
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=batch["x"].shape[0],
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # A fixed generator makes the validation loss comparable from epoch to epoch: same
        # t and ε for the same batch, so checkpoint selection is not driven by sampling luck.
        x0, mask = batch["x"], batch["mask"]
        g = torch.Generator(device="cpu").manual_seed(1000 + batch_idx)
        t = torch.randint(0, self.sde.num_timesteps, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        loss, terms = self.diffusion_loss(x0, mask, t.to(x0.device), eps.to(x0.device, x0.dtype))
        bs = x0.shape[0]
        self.log_dict(
            {f"val/{k}": v for k, v in terms.items()}, on_epoch=True, batch_size=bs, sync_dist=True
        )
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)

    # ---- optimisation -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # nn.Module.compile works in place: state_dict keys stay free of "_orig_mod.", so
        # checkpoints load into an uncompiled model for denoising.
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.model.compile()
            self._compiled = True

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # Norms, biases, A_log and D are not weights to shrink (as in mamba-ssm/nanoGPT).
            (no_decay if p.ndim < 2 or name.endswith(("A_log", "D")) else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(hp.warmup_steps, max(total // 10, 1))

        def lr_lambda(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (
                1 + math.cos(math.pi * progress)
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
