"""LightningModule: MultivariateMambaDenoiser + VPSDE + DenoisingLoss for one cluster.

The module's hyper-parameters are the checkpoint contract (docs/design.md, "Checkpoint"):
they carry the cluster (id, type, strategy, features), the window size, the train-split
scaler (z-score, window scale, anchor length), the model settings (direction included)
and the SDE/loss settings, so denoise.py needs nothing but the checkpoint.

Heads (``heads``, docs/design.md "Predictive head"): "diffusion" (ε-prediction loss, the
default and what checkpoints without the key hold), "predictive" (the one-step mixture's
NLL, diffusion/predictive.py) or "both". With "both" each batch is split, not duplicated: the
first half gets the diffusion loss at random t, the second half the predictive NLL, in one
backbone pass (``forward_heads``), and

    loss = diffusion loss + predictive["weight"] · NLL       (weight 1.0 by default)

with the NLL a per-cell mean over scored cells (``predictive.target_mask``). Both terms are
O(1) per cell in window units, so equal weights keep either from drowning the other.
``noise_sigma`` (F,) is the observation-noise std in window units (train rows only, see
train_job), floored at ``predictive.SIGMA_FLOOR``; the NLL needs it.

Validation (fixed order, no randomness in the predictive part): ``val/predictive_nll``, and
``val/predictive_sure_mse``, SURE of the head's closed-form denoiser, an unbiased estimate
of its MSE to the clean signal (window units², per cell), with
``val/predictive_sure_ratio`` = that MSE / mean σ² (< 1: it removes noise).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mamba_denoiser.diffusion import predictive as pred
from mamba_denoiser.diffusion import residual
from mamba_denoiser.errors import NonFiniteLossError
from mamba_denoiser.network import NetworkMixin, network_defaults

Loss = tuple[Tensor, dict[str, Tensor]]  # (the loss to minimise, the terms to log)

# t_sampling defaults: a checkpoint without the key was trained with uniform t; the
# configs (conf/train.yaml) choose lognormal.
T_SAMPLING_DEFAULTS: dict[str, Any] = {
    "kind": "uniform",
    "c": 0.5,
    "spread": 0.5,
    "uniform_share": 0.2,
}


class DenoiserModule(NetworkMixin, L.LightningModule):
    """The training side of one cluster's network: its losses, logging and optimiser.
    forward and predict_mixture come from NetworkMixin (network.py), shared with the
    Lightning-free ClusterNetwork that denoise.py loads checkpoints into."""

    def __init__(
        self,
        *,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        compile: bool = False,
        source: dict[str, Any] | None = None,  # data provenance (path, sha256, split)
        t_sampling: dict[str, Any] | None = None,  # how training draws t (sample_t)
        **network: Any,  # the network's: NetworkMixin._build_network (cluster, window_size, ...)
    ):
        super().__init__()
        # Not sent to the loggers as-is (the scaler alone is hundreds of numbers): train.py
        # logs a flat, comparable summary with the final metrics to TensorBoard's HPARAMS.
        self.save_hyperparameters(logger=False)
        # every network argument in the checkpoint, defaults included: denoising reads them
        self.hparams.update({k: v for k, v in network_defaults().items() if k not in network})
        # model, noise_sigma_w, anchor_len, sde, heads, predictive, strategy, use_mask: built
        # as ClusterNetwork builds them (network.py), so denoising needs no Lightning
        self.loss_fn = self._build_network(**network)
        self.t_sampling = {**T_SAMPLING_DEFAULTS, **(t_sampling or {})}
        if self.t_sampling["kind"] not in ("uniform", "lognormal"):
            raise ValueError(
                f"t_sampling.kind={self.t_sampling['kind']!r}: choose uniform or lognormal"
            )
        if self.t_sampling["kind"] == "lognormal":
            if network.get("noise_sigma") is None:
                raise ValueError("t_sampling.kind=lognormal needs noise_sigma (window units)")
            # log τ's centre and spread (sample_t), once: σ_w is fixed, and reading it back
            # from the GPU every step would synchronise
            log_s = self.noise_sigma_w.double().log()
            spread = float(log_s.std()) if log_s.numel() > 1 else 0.0
            self._log_tau = (
                math.log(self.t_sampling["c"]) + float(log_s.mean()),
                math.hypot(self.t_sampling["spread"], spread),
            )

    # ---- where training spends its steps -----------------------------------------------
    def sample_t(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,) diffusion timesteps for a batch (on the CPU when a generator is given).

        "uniform": t ~ U{0..T-1} (DDPM). "lognormal" (EDM's log-normal noise levels, Karras
        et al. 2022): the posterior mean works at τ_t = c·σ (conf/sampler/posterior_mean.yaml
        ``c``), so log τ ~ N(log c + mean log σ_w, spread² + Var log σ_w) over the
        cluster's features, mapped to the nearest t on the τ grid; a share
        ``uniform_share`` of the draws stays uniform so every t keeps some training (the
        SDEdit sampler and the re-noised form use larger t).
        """
        T = self.sde.num_timesteps
        device = "cpu" if generator is not None else self.device
        uniform = torch.randint(0, T, (n,), generator=generator, device=device)
        ts = self.t_sampling
        if ts["kind"] == "uniform":
            return uniform
        from mamba_denoiser.diffusion.sampling import diffusion_noise

        centre, scale = self._log_tau
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        tau = diffusion_noise(self.sde).to(device)  # (T,) increasing in t
        t = torch.searchsorted(tau, (centre + scale * z).exp()).clamp(0, T - 1)
        keep = torch.rand(n, generator=generator, device=device) < ts["uniform_share"]
        return torch.where(keep, uniform, t)

    # ---- the diffusion training objective -------------------------------------------
    def diffusion_loss(
        self, x0: Tensor, mask: Tensor, t: Tensor | None = None, eps: Tensor | None = None
    ) -> Loss:
        """ε-prediction loss on observed positions of x0 (B, L, F) at random or given t (B,)."""
        if t is None:
            t = self.sample_t(x0.shape[0]).to(x0.device)
        eps = torch.randn_like(x0) if eps is None else eps
        x_t = self._diffuse(x0, mask, t, eps)
        return self._diffusion_terms(x_t, t, eps, self(x_t, t, mask), mask)

    def _diffuse(self, x0, mask, t, eps) -> torch.Tensor:
        # Unobserved cells: the network zeroes them and reads the mask bit (models/denoiser.py),
        # the loss skips them; the 0 here only keeps NaN out of the arithmetic.
        x_t, _ = self.sde.sample(torch.where(mask, x0, torch.zeros_like(x0)), t, noise=eps)
        return x_t

    def _diffusion_terms(self, x_t, t, eps, eps_hat, mask):
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

    # ---- the predictive objective (predict_mixture: NetworkMixin) -----------------------
    def predictive_loss(
        self,
        y: torch.Tensor,
        mask: torch.Tensor,
        mixture=None,
        *,
        with_sure: bool = False,
        priors: dict[str, Tensor] | None = None,
    ) -> Loss:
        """Per-cell mean NLL of observed y (B, L, F) under the one-step mixture (computed
        here unless given); ``with_sure`` adds the SURE terms of the closed-form denoiser.
        A residual head needs ``priors`` (the batch's prior_mu, prior_var, noise_var, eps)."""
        if self.residual:
            return self._residual_loss(y, mask, mixture, priors, with_sure)
        mixture = self.predict_mixture(y, mask) if mixture is None else mixture
        sigma = self.noise_sigma_w
        nll = pred.window_nll(mixture, y, mask, sigma=sigma, anchor_len=self.anchor_len)
        terms = {"predictive_nll": nll.detach()}
        if with_sure:
            with torch.no_grad():
                s_hat, div, _ = pred.window_posterior(
                    mixture, y, mask, sigma=sigma, anchor_len=self.anchor_len
                )
                s2 = sigma.square().expand_as(s_hat)
                terms.update(_sure_terms(y, s_hat, div, s2))
        return nll, terms

    def _residual_loss(self, y, mask, out, priors, with_sure) -> Loss:
        """The residual head's NLL (diffusion/residual.py) over its scored cells, and the
        SURE of its denoiser with the noise law's variance."""
        if priors is None:
            raise ValueError("a residual predictive head needs the batch's filter priors")
        mu, var, nv, ep, fw = _filter_terms(priors)
        if out is None:
            out = self.predict_residual(
                y, mask, residual.innovations(y, mask, mu, var[..., 0], nv, ep)
            )
        s_hat, div, logp, keep = residual.window_outputs(
            out, y, mask, mu, var, nv, ep, fw, anchor_len=self.anchor_len
        )
        zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
        nll = -torch.where(keep, logp, zero).sum() / keep.sum().clamp(min=1)
        terms = {"predictive_nll": nll.detach()}
        if with_sure:
            with torch.no_grad():
                h = (nv * ep).sum(-1)  # NaN for a column without a fit: its ŝ is NaN too
                terms.update(_sure_terms(y, s_hat, div, h.expand_as(s_hat)))
                if "target" in priors:
                    terms["predictive_risk"] = _future_risk(s_hat, priors["target"])
        return nll, terms

    def joint_loss(
        self,
        x0: Tensor,
        mask: Tensor,
        t: Tensor | None = None,
        eps: Tensor | None = None,
        priors: dict[str, Tensor] | None = None,
    ) -> Loss:
        """heads="both": the first ceil(B/2) windows get the diffusion loss at t (random if
        None; shape (ceil(B/2),)), the rest the predictive NLL, in one backbone pass."""
        n_d = (x0.shape[0] + 1) // 2
        xd, md, yp, mp = x0[:n_d], mask[:n_d], x0[n_d:], mask[n_d:]
        if t is None:
            t = self.sample_t(n_d).to(x0.device)
        eps = torch.randn_like(xd) if eps is None else eps
        x_t = self._diffuse(xd, md, t, eps)
        is_pred = torch.arange(x0.shape[0], device=x0.device) >= n_d  # (B,)
        t_all = torch.cat([t, torch.zeros(x0.shape[0] - n_d, dtype=t.dtype, device=t.device)])
        x_in = torch.cat([x_t, yp.to(x_t.dtype)])
        m_in = mask if self.use_mask else None
        if self.residual:
            p_pred = {k: v[n_d:] for k, v in priors.items()}
            mu, var, nv, ep, _ = _filter_terms(priors)
            # the diffusion rows' innovations are zeroed by forward_heads
            innov = residual.innovations(x0, mask, mu, var[..., 0], nv, ep)
            eps_hat, out = self.model.forward_heads(x_in, t_all, m_in, is_pred, innov=innov)
            p_out = (out[0][n_d:], out[1][n_d:], out[2])
        else:
            p_pred = None
            eps_hat, mixture = self.model.forward_heads(x_in, t_all, m_in, is_pred)
            p_out = tuple(p[n_d:] for p in mixture)
        loss, terms = self._diffusion_terms(x_t, t, eps, eps_hat[:n_d], md)
        nll, p_terms = self.predictive_loss(yp, mp, p_out, priors=p_pred)
        terms.update(p_terms)
        terms["diffusion_loss"] = loss.detach()
        return loss + self.predictive["weight"] * nll, terms

    def objective(self, x0: torch.Tensor, mask: torch.Tensor, priors=None):
        """The training loss of this module's heads: (loss, logged terms). ``priors``: the
        batch's filter priors, for a residual predictive head."""
        if self.heads == "diffusion":
            return self.diffusion_loss(x0, mask)
        if self.heads == "predictive":
            return self.predictive_loss(x0, mask, priors=priors)
        return self.joint_loss(x0, mask, priors=priors)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, terms = self.objective(batch["x"], batch["mask"], _priors(batch))
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
        bs = x0.shape[0]
        loss = torch.zeros((), device=x0.device)
        terms: dict[str, torch.Tensor] = {}
        if self.heads != "predictive":
            # every window, not half: val/noise_mse stays comparable with diffusion-only runs
            # of the same t_sampling (its t draws are the training distribution's)
            g = torch.Generator(device="cpu").manual_seed(1000 + batch_idx)
            t = self.sample_t(bs, generator=g)  # the training distribution, fixed draws
            eps = torch.randn(x0.shape, generator=g)
            d_loss, terms = self.diffusion_loss(
                x0, mask, t.to(x0.device), eps.to(x0.device, x0.dtype)
            )
            loss = loss + d_loss
        if self.heads != "diffusion":
            nll, p_terms = self.predictive_loss(x0, mask, with_sure=True, priors=_priors(batch))
            terms.update(p_terms)
            loss = loss + (self.predictive["weight"] if self.heads == "both" else 1.0) * nll
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


PRIOR_KEYS = ("prior_mu", "prior_var", "noise_var", "eps", "jump")  # data/windows.py WindowDataset


def _filter_terms(priors: dict[str, Tensor]):
    """(prior_mu (B, L, F), prior_var (B, L, F, 2), noise_var, eps, jump weights (F, ·)):
    the laws are the same in every window of a batch."""
    p = priors
    return p["prior_mu"], p["prior_var"], p["noise_var"][0], p["eps"][0], p["jump"][0]


def _priors(batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The residual head's filter priors in a batch, or None (a plain head's batch)."""
    if "prior_mu" not in batch:
        return None
    return {k: batch[k] for k in (*PRIOR_KEYS, "target") if k in batch}


def _future_risk(s_hat: Tensor, target: Tensor) -> Tensor:
    """Mean (ŝ − u)² over the cells where both exist: u the future target, so this is the
    estimate's MSE to the clean signal plus a constant that no model changes (the noise
    and innovations after row t), for any noise law: what selects the residual head."""
    ok = torch.isfinite(s_hat) & torch.isfinite(target)
    zero = torch.zeros((), dtype=s_hat.dtype, device=s_hat.device)
    sq = torch.where(ok, s_hat - torch.where(ok, target, zero), zero).square()
    return sq.sum() / ok.sum().clamp(min=1)


def _sure_terms(y: Tensor, s_hat: Tensor, div: Tensor, s2: Tensor) -> dict[str, Tensor]:
    """Mean SURE over the cells where ŝ is defined, and its ratio to the mean noise
    variance s2 (< 1: the denoiser removes noise)."""
    keep = ~torch.isnan(s_hat)
    sure = pred.sure_cells(y.float(), s_hat, div, s2.sqrt())
    n = keep.sum().clamp(min=1)
    zero = torch.zeros((), device=y.device)
    mse = torch.where(keep, sure, zero).sum() / n
    ratio = mse / (torch.where(keep, s2, zero).sum() / n).clamp(min=1e-12)
    return {"predictive_sure_mse": mse, "predictive_sure_ratio": ratio}
