"""Training loss: ε-prediction MSE plus a smoothness guidance term chosen by cluster type.

    loss = MSE(ε̂, ε) + guidance_weight · (w_tv · tv_weight · TV(x̂0)
                                          + w_f · fourier_weight · HF(x̂0))

with (w_tv, w_f) set by the strategy:

    strategy    cluster_type      w_tv  w_f   why
    "tv"        mean_reverting     2     0    piecewise-flat around a level: penalise jumps
    "fourier"   trending           0     2    smooth drift: penalise high-frequency wiggle
    "balanced"  random_walk        1     1    neither shape dominates
    "none"      -                  0     0    plain DDPM ε-MSE

``strategy="auto"`` (default) takes it from ``cluster_type``.

TV(x) is the mean absolute first difference along time, over adjacent pairs (the mean,
not the sum, so its scale does not depend on the window length: a unit step in a window of
L points has TV = 1 / (L - 1)). HF(x) is the mean-square value of the part of x above
``cutoff`` × Nyquist: the real FFT along time (orthonormal, so by Parseval the energies add
up to Σ x²), bins whose normalised frequency 2k/L exceeds ``cutoff``, energy divided by the
number of observed points. cutoff = 0.25 penalises periods shorter than 8 steps.

Masking (``mask`` [B, L, F] bool, True = observed): nothing at an unobserved position can
change the loss. Every input is first replaced by 0 there (``torch.where``, so NaN
placeholders are fine and get zero gradient); the MSE averages observed entries; TV only
counts pairs of adjacent observed points; for HF, x̂0 is centred on its observed mean per
series and unobserved values are then set to 0 (i.e. to that mean, which avoids creating
an artificial jump to 0 at a missing block), and the energy is divided by the observed
count. Time is axis 1 of [B, L, F] inputs. Losses are computed in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from mamba_denoiser.vocabulary import CLUSTER_TYPES, STRATEGY, STRATEGY_WEIGHTS

STRATEGIES = ("auto", *STRATEGY_WEIGHTS)


def _observed(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    x = x.float()
    return x if mask is None else torch.where(mask, x, torch.zeros((), device=x.device))


def _sample_weight(w: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample weights as (B, 1, 1), float32; ones when None."""
    if w is None:
        return torch.ones(x.shape[0], 1, 1, device=x.device)
    if w.shape != (x.shape[0],):
        raise ValueError(f"sample_weight must have shape ({x.shape[0]},), got {tuple(w.shape)}")
    return w.float().reshape(-1, 1, 1)


def total_variation(
    x: torch.Tensor, mask: torch.Tensor | None = None, sample_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean |x_{t+1} - x_t| over adjacent (observed) pairs; x: [B, L, F]. 0 if no pairs.

    With ``sample_weight`` (B,), every pair of sample b counts with weight w_b (a weighted
    mean; all-ones gives the plain mean)."""
    x = _observed(x, mask)
    diff = (x[:, 1:] - x[:, :-1]).abs()  # (B, L-1, F)
    pairs = torch.ones_like(diff) if mask is None else (mask[:, 1:] & mask[:, :-1]).float()
    pairs = pairs * _sample_weight(sample_weight, x)
    return (diff * pairs).sum() / pairs.sum().clamp(min=1e-12)


def high_frequency_energy(
    x: torch.Tensor,
    cutoff: float = 0.25,
    mask: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean-square value of x above ``cutoff`` × Nyquist along time; x: [B, L, F].

    With ``sample_weight`` (B,), sample b's energy and observed count are weighted by w_b."""
    if not 0.0 <= cutoff <= 1.0:
        raise ValueError(f"cutoff is a fraction of the Nyquist frequency in [0, 1], got {cutoff}")
    x = _observed(x, mask)
    L = x.shape[1]
    w = _sample_weight(sample_weight, x)  # (B, 1, 1)
    if mask is None:
        n_obs = (w * L).sum() * x.shape[2]
        x = x - x.mean(dim=1, keepdim=True)  # changes only the DC bin, which is never penalised
    else:
        counts = mask.sum(dim=1, keepdim=True)  # (B, 1, F)
        mean = x.sum(dim=1, keepdim=True) / counts.clamp(min=1)
        x = torch.where(mask, x - mean, torch.zeros((), device=x.device))
        n_obs = (counts * w).sum()
    spec = torch.fft.rfft(x, dim=1, norm="ortho")  # (B, L//2 + 1, F)
    k = torch.arange(spec.shape[1], device=x.device)
    # one-sided spectrum: every bin except DC and (for even L) Nyquist stands for two
    weight = torch.full((spec.shape[1],), 2.0, device=x.device)
    weight[0] = 1.0
    if L % 2 == 0:
        weight[-1] = 1.0
    weight = weight * (2.0 * k / L > cutoff)  # normalised frequency, 1.0 = Nyquist
    energy = (spec.real**2 + spec.imag**2) * weight[None, :, None] * w
    return energy.sum() / n_obs.clamp(min=1e-12)


class DenoisingLoss(nn.Module):
    """ε-MSE + guidance on x̂0; see the module docstring for the terms and masking."""

    def __init__(
        self,
        cluster_type: str | None = None,
        guidance_weight: float = 0.02,
        tv_weight: float = 1.0,
        fourier_weight: float = 1.0,
        cutoff: float = 0.25,
        strategy: str = "auto",
    ):
        super().__init__()
        if cluster_type is not None:
            cluster_type = cluster_type.lower().replace("-", "_")
            if cluster_type not in CLUSTER_TYPES:
                raise ValueError(
                    f"unknown cluster_type {cluster_type!r}; valid: {', '.join(CLUSTER_TYPES)}"
                )
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
        if strategy == "auto":
            if cluster_type is None:
                raise ValueError(
                    "strategy='auto' takes the guidance from cluster_type; pass cluster_type "
                    f"(one of {', '.join(CLUSTER_TYPES)}) or an explicit strategy "
                    f"({', '.join(STRATEGY_WEIGHTS)})"
                )
            strategy = STRATEGY[cluster_type]
        if not 0.0 <= cutoff <= 1.0:
            raise ValueError(
                f"cutoff is a fraction of the Nyquist frequency in [0, 1], got {cutoff}"
            )
        self.cluster_type, self.strategy = cluster_type, strategy
        self.guidance_weight, self.cutoff = float(guidance_weight), float(cutoff)
        w_tv, w_f = STRATEGY_WEIGHTS[strategy]
        self.tv_coef = w_tv * float(tv_weight)  # multiplies TV(x̂0)
        self.fourier_coef = w_f * float(fourier_weight)  # multiplies HF(x̂0)

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_weight != 0 and (self.tv_coef != 0 or self.fourier_coef != 0)

    def forward(
        self,
        predicted_noise: torch.Tensor,
        true_noise: torch.Tensor,
        denoised_output: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_terms: bool = False,
        sample_weight: torch.Tensor | None = None,
    ):
        """ε̂, ε, x̂0: [B, L, F]; mask: [B, L, F] bool (True = observed) or None.

        ``sample_weight`` (B,) weights each sample's guidance terms (not the ε-MSE). Training
        passes ᾱ_t: at high noise x̂0 = (x_t - σ_t ε̂)/√ᾱ_t amplifies ε̂ by up to ~1/√ᾱ_T ≈
        160x, and an unweighted TV/Fourier term would be dominated by those near-meaningless
        estimates instead of shaping x̂0 where it carries signal.

        Returns the scalar loss, or (loss, terms) with ``return_terms=True``; terms holds
        detached float32 scalars total, noise_mse, tv, fourier, guidance (tv and fourier
        are NaN when no x̂0 was given).
        """
        if predicted_noise.shape != true_noise.shape:
            raise ValueError(
                f"predicted_noise {tuple(predicted_noise.shape)} and true_noise "
                f"{tuple(true_noise.shape)} must have the same shape"
            )
        if mask is not None:
            if mask.shape != predicted_noise.shape:
                raise ValueError(f"mask must have shape {tuple(predicted_noise.shape)}")
            mask = mask.bool()
        sq = (_observed(predicted_noise, mask) - _observed(true_noise, mask)) ** 2
        noise_mse = sq.mean() if mask is None else sq.sum() / mask.sum().clamp(min=1)

        if denoised_output is None:
            if self.uses_guidance:
                raise ValueError(
                    f"strategy {self.strategy!r} needs denoised_output (x̂0, e.g. from "
                    "VPSDE.predict_x0) for its guidance term"
                )
            nan = torch.full((), float("nan"), device=noise_mse.device)
            tv = fourier = nan
            guidance = torch.zeros((), device=noise_mse.device)
        else:
            # terms with zero weight are still computed for logging, but without a graph
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.tv_coef != 0):
                tv = total_variation(denoised_output, mask, sample_weight)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.fourier_coef != 0):
                fourier = high_frequency_energy(denoised_output, self.cutoff, mask, sample_weight)
            guidance = self.tv_coef * tv + self.fourier_coef * fourier
        total = noise_mse + self.guidance_weight * guidance
        if not return_terms:
            return total
        terms = {
            "total": total.detach(),
            "noise_mse": noise_mse.detach(),
            "tv": tv.detach(),
            "fourier": fourier.detach(),
            "guidance": guidance.detach(),
        }
        return total, terms

    def extra_repr(self) -> str:
        return (
            f"strategy={self.strategy!r}, cluster_type={self.cluster_type!r}, "
            f"guidance_weight={self.guidance_weight}, tv_coef={self.tv_coef}, "
            f"fourier_coef={self.fourier_coef}, cutoff={self.cutoff}"
        )
