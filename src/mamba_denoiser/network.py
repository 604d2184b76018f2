"""One cluster's network without Lightning: the denoiser, its VP-SDE and its noise σ.

``NetworkMixin`` builds and runs what training (``training.DenoiserModule``, a
LightningModule) and denoising (``ClusterNetwork``, a plain ``nn.Module``) share, from
the checkpoint's hyper-parameters (docs/design.md, "Checkpoint"): the same sub-modules
under the same names, so both have the same state_dict keys (``model.…``; the SDE's
coefficients and ``noise_sigma_w`` are non-persistent buffers) and compute the same
numbers. denoise.py reads checkpoints into a ``ClusterNetwork`` and so never imports
Lightning.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from mamba_denoiser.diffusion import VPSDE, DenoisingLoss
from mamba_denoiser.diffusion import predictive as pred
from mamba_denoiser.models import MultivariateMambaDenoiser
from mamba_denoiser.models.denoiser import HEADS
from mamba_denoiser.vocabulary import ANCHOR_LEN, WINDOW_SIZE

# residual: the head starts at the robust filter's prediction (diffusion/residual.py); a
# checkpoint without the key holds the plain head
PREDICTIVE_DEFAULTS = {"n_components": 3, "weight": 1.0, "var_floor": 1e-4, "residual": False}
# DenoiserModule's own arguments, which only training reads (optimiser, compile, how t is
# drawn, provenance); the rest of its hyper-parameters are the network's. A test checks it.
TRAINING_ONLY = (
    "lr",
    "weight_decay",
    "betas",
    "warmup_steps",
    "min_lr_ratio",
    "compile",
    "source",
    "t_sampling",
)


def network_defaults() -> dict[str, Any]:
    """``_build_network``'s defaults: what a checkpoint records for an argument not given."""
    params = inspect.signature(NetworkMixin._build_network).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


class NetworkMixin:
    """The network part of an ``nn.Module`` subclass: ``_build_network`` in ``__init__``
    (after ``nn.Module.__init__``), then ``forward`` and ``predict_mixture``."""

    def _build_network(
        self,
        *,
        cluster: dict[str, Any],  # {id, type, strategy, features}
        window_size: int = WINDOW_SIZE,
        scaler: dict[str, Any] | None = None,  # train-split {mean, std, window_scale, anchor_len}
        model: dict[str, Any] | None = None,  # MultivariateMambaDenoiser kwargs
        sde: dict[str, Any] | None = None,  # VPSDE kwargs
        loss: dict[str, Any] | None = None,  # DenoisingLoss kwargs (strategy, weights)
        heads: str = "diffusion",  # diffusion | predictive | both
        predictive: dict[str, Any] | None = None,  # {n_components, weight, var_floor}
        noise_sigma: list[float] | None = None,  # (F,) window units; the NLL and lognormal t
    ) -> DenoisingLoss:
        """The network's hyper-parameters, here only (ClusterNetwork and DenoiserModule pass
        theirs on). Set model, noise_sigma_w, anchor_len, sde, heads, predictive, strategy and
        use_mask; return the DenoisingLoss the ``loss`` settings describe (it also
        resolves the guidance strategy, stored as ``strategy``)."""
        n_features = len(cluster["features"])
        if heads not in HEADS:
            raise ValueError(f"heads={heads!r}: choose one of {HEADS}")
        unknown = sorted(set(predictive or {}) - set(PREDICTIVE_DEFAULTS))
        if unknown:
            raise ValueError(
                f"predictive: unknown keys {unknown}; known: {list(PREDICTIVE_DEFAULTS)}"
            )
        self.heads = heads
        self.predictive = {**PREDICTIVE_DEFAULTS, **(predictive or {})}
        head_kw = {}
        if heads != "diffusion":
            head_kw = {
                "heads": heads,
                "n_components": int(self.predictive["n_components"]),
                "var_floor": float(self.predictive["var_floor"]),
                "residual": bool(self.predictive["residual"]),
            }
            if noise_sigma is None or len(noise_sigma) != n_features:
                raise ValueError(
                    f"heads={heads!r} needs noise_sigma: one noise std per feature "
                    f"({n_features}) in window units (train_job computes it on the train rows)"
                )
        self.model = MultivariateMambaDenoiser(
            n_features=n_features, window_size=window_size, **(model or {}), **head_kw
        )
        # not persistent: it lives in the hyper-parameters, and old checkpoints lack it
        sig = torch.as_tensor(
            [float("nan")] * n_features if noise_sigma is None else noise_sigma,
            dtype=torch.float32,
        )
        sig = torch.where(torch.isfinite(sig), sig.clamp(min=pred.SIGMA_FLOOR), pred.SIGMA_FLOOR)
        self.register_buffer("noise_sigma_w", sig, persistent=False)  # (F,)
        self.anchor_len = int((scaler or {}).get("anchor_len", ANCHOR_LEN))
        self.sde = VPSDE(**(sde or {}))
        loss = dict(loss or {})
        strategy = loss.pop("strategy", "auto")
        loss_fn = DenoisingLoss(cluster_type=cluster["type"], strategy=strategy, **loss)
        self.strategy = loss_fn.strategy  # the guidance the loss trained with
        self.use_mask = self.model.use_mask
        return loss_fn

    def predict_mixture(self, y: torch.Tensor, mask: torch.Tensor | None = None):
        """(B, L, F) observed windows -> (mu, var, logit_pi), each (B, L, F, K), unshifted:
        what ``predictive.predict_windows`` calls."""
        if self.use_mask:
            return self.model.predict_mixture(y, mask)
        if mask is not None:  # a model without mask channels must not see NaN
            y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
        return self.model.predict_mixture(y)

    @property
    def residual(self) -> bool:
        """Whether the predictive head is the residual one (needs the filter's priors)."""
        return bool(getattr(self.model, "residual", False))

    def predict_residual(self, y: torch.Tensor, mask: torch.Tensor, innov: torch.Tensor):
        """The residual head's raw outputs (``MultivariateMambaDenoiser.predict_residual``)."""
        if self.use_mask:
            return self.model.predict_residual(y, mask, innov)
        y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
        return self.model.predict_residual(y, None, innov)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None):
        return self.model(x_t, t, mask=mask) if self.use_mask else self.model(x_t, t)


class ClusterNetwork(NetworkMixin, nn.Module):
    """A trained cluster's network for denoising: DenoiserModule's forward and
    predict_mixture (same sub-modules, same state_dict keys) without Lightning."""

    def __init__(self, **network: Any):
        """network: ``NetworkMixin._build_network``'s arguments (cluster, window_size, ...)."""
        super().__init__()
        self._build_network(**network)

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> ClusterNetwork:
        """From a checkpoint's ``hyper_parameters`` (DenoiserModule's arguments): the
        training-only ones are dropped, any other unknown key is a TypeError."""
        return cls(**{k: v for k, v in hparams.items() if k not in TRAINING_ONLY})
