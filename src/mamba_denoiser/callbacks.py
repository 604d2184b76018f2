"""Training callbacks that Lightning does not ship: a warm-up EMA of the weights, a quality
figure, plain epoch logs, and what an exact resume and a clean preemption need
(ResumeState, StopWhenPreempted; train_job adds these two to every run)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from mamba_denoiser.errors import Preempted

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


# ---- resume and preemption ----------------------------------------------------------------


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python's global random states, as tensors and plain
    numbers, so a checkpoint holding them still loads with torch.load(weights_only=True)."""
    import numpy as np

    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64)},
        "python_gauss_next": gauss_next,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    """The inverse of rng_states (CUDA where this process has as many devices or more)."""
    import numpy as np

    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"]), states["python_gauss_next"]))
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
        torch.cuda.set_rng_state_all(cuda)


class ResumeState(L.Callback):
    """What an exact resume needs beyond what Lightning checkpoints itself (weights, the EMA
    weights and their count, optimiser, LR schedule, loop counters, early stopping and
    checkpoint callbacks): the global random states at the moment of saving, which decide
    the rest of the run (the next epoch's shuffle, whose sampler draws its seed from torch's
    generator, and every t and ε drawn after it), and the validation before training
    (`init_metrics`, validate_at_init), which a resumed run does not repeat but its summary
    and the predictive head's choice read. Checkpoints are saved at the end of an epoch's
    validation, so a run resumed from one replays what followed exactly."""

    def __init__(self) -> None:
        self.init_metrics: dict[str, float] = {}
        self.restored = False

    def state_dict(self) -> dict[str, Any]:
        init = {k: float(v) for k, v in self.init_metrics.items()}
        return {"rng": rng_states(), "init_metrics": init}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict["rng"])
        self.init_metrics = dict(state_dict.get("init_metrics") or {})
        self.restored = True


class StopWhenPreempted(L.Callback):
    """Raises errors.Preempted at the first batch boundary after `requested()` turns true
    (launch.PreemptionGuard: a preemption or timeout signal), before anything of the
    unfinished epoch is saved; every rank stops at the same batch (the flag is reduced
    across them)."""

    def __init__(self, requested: Callable[[], bool]):
        self.requested = requested

    def _check(self, trainer) -> None:
        if trainer.strategy.reduce_boolean_decision(bool(self.requested()), all=False):
            raise Preempted(f"stopped at epoch {trainer.current_epoch}, step {trainer.global_step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._check(trainer)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._check(trainer)
