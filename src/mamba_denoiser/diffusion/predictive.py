"""Predictive head: a one-step Gaussian mixture for the clean signal, and its closed-form
denoiser (docs/design.md, "Predictive head").

Window units throughout. Observed y_l = s_l + n_l, n white N(0, σ_f²) per feature f. The
causal backbone's output at window position l-1 (it has seen y_<l only) gives, per feature,
a K-component Gaussian mixture prior for the clean value at position l:

    p(s_l | y_<l) = Σ_k π_k N(s_l; μ_k, v_k)

Because the noise is white, y_<l carries no information about n_l: the prediction is a valid
blind spot, and y_l | y_<l ~ Σ_k π_k N(μ_k, v_k + σ²) is what training maximises
(``mixture_nll``). Observing y_l updates every component with a scalar Kalman step and
reweights the components by their evidence (``mixture_posterior``):

    S_k = v_k + σ²,   g_k = v_k / S_k,   m_k = μ_k + g_k (y − μ_k)
    w_k ∝ π_k N(y; μ_k, S_k),            ŝ = E[s | y, y_<l] = Σ_k w_k m_k

and its exact divergence, for SURE (E(ŝ−s)² = E(ŝ−y)² + 2σ² E ∂ŝ/∂y − σ²):

    d_k = ∂ log N(y; μ_k, S_k)/∂y = −(y − μ_k)/S_k,   d̄ = Σ_k w_k d_k
    ∂w_k/∂y = w_k (d_k − d̄)
    ∂ŝ/∂y = Σ_k w_k g_k + Σ_k w_k (d_k − d̄)(m_k − ŝ)

(the second sum is the weights' derivative; Σ_k ∂w_k/∂y = 0 lets m_k − ŝ stand for m_k,
which keeps it well conditioned). K = 1 is exactly the Kalman filter's measurement update.

Which positions are scored: a window's anchor a (data/windows.py) is the mean of its first
``anchor_len`` rows, so only positions l >= anchor_len have inputs that do not depend on
y_l itself. A feature with no observation in those rows is anchored at its first observed
value, so the position of that value (and the rows before it) is excluded too: a target needs
an earlier observation of its feature in the window (``target_mask``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Window units (the RMS of a train window's deviation from its anchor is 1). Below 0.05 the
# noise is ~26 dB under the signal: nothing to gain from denoising, and a smaller σ would only
# let the NLL spike on near-exact predictions. An unknown (NaN) or zero σ gets the floor too.
SIGMA_FLOOR = 0.05
_LOG_2PI = math.log(2 * math.pi)


def sigma_to_window_units(
    sigma: np.ndarray,  # (F,) native units, NaN where unknown
    unit: np.ndarray,  # (F,) native units per window unit: train std · window_scale
    *,
    floor: float = SIGMA_FLOOR,
) -> np.ndarray:
    """(F,) native σ -> (F,) window-unit σ, max(σ/unit, floor); NaN or <= 0 -> floor."""
    s = np.asarray(sigma, dtype=np.float64) / np.asarray(unit, dtype=np.float64)
    return np.where(np.isfinite(s) & (s > 0), np.maximum(s, floor), floor)


def _gaussian_terms(y, mu, var, sigma):
    """Shared pieces of the NLL and the posterior. y (...,), mu/var (..., K), sigma
    broadcastable to y. Returns (S, r) = (v + σ², y − μ), each (..., K)."""
    s2 = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device).square()
    S = var + s2.unsqueeze(-1)  # (..., K)
    return S, y.unsqueeze(-1) - mu


def _log_evidence(logit_pi, S, r):
    """log π_k + log N(y; μ_k, S_k): (..., K)."""
    return torch.log_softmax(logit_pi, dim=-1) - 0.5 * (_LOG_2PI + S.log() + r.square() / S)


def _promote(*xs):
    dt = torch.promote_types(xs[0].dtype, torch.float32)  # float64 stays float64 (tests)
    return [x.to(dt) for x in xs]


def mixture_posterior(
    y: torch.Tensor,  # (...,) observed value, window units
    mu: torch.Tensor,  # (..., K) component means of the prior for s
    var: torch.Tensor,  # (..., K) component variances (> 0)
    logit_pi: torch.Tensor,  # (..., K) unnormalised log weights
    sigma: torch.Tensor | float,  # noise std, broadcastable to y (e.g. (F,))
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean ŝ = E[s | y] under Σ π_k N(μ_k, v_k) and y = s + N(0, σ²), and its
    exact divergence ∂ŝ/∂y (module docstring). Both (...,), float32 at least."""
    y, mu, var, logit_pi = _promote(y, mu, var, logit_pi)
    S, r = _gaussian_terms(y, mu, var, sigma)
    g = var / S  # Kalman gain per component
    m = mu + g * r  # per-component posterior mean
    w = torch.softmax(_log_evidence(logit_pi, S, r), dim=-1)  # posterior weights
    s_hat = (w * m).sum(-1)
    d = -r / S
    d_bar = (w * d).sum(-1, keepdim=True)
    div = (w * g).sum(-1) + (w * (d - d_bar) * (m - s_hat.unsqueeze(-1))).sum(-1)
    return s_hat, div


def mixture_nll_cells(y, mu, var, logit_pi, sigma) -> torch.Tensor:
    """−log Σ_k π_k N(y; μ_k, v_k + σ²) per cell: (...,)."""
    y, mu, var, logit_pi = _promote(y, mu, var, logit_pi)
    S, r = _gaussian_terms(y, mu, var, sigma)
    return -torch.logsumexp(_log_evidence(logit_pi, S, r), dim=-1)


def mixture_nll(
    y: torch.Tensor,  # (...,) NaN allowed where mask is False
    mu: torch.Tensor,  # (..., K)
    var: torch.Tensor,  # (..., K)
    logit_pi: torch.Tensor,  # (..., K)
    sigma: torch.Tensor | float,  # broadcastable to y
    mask: torch.Tensor,  # (...,) bool, True where the cell is scored
) -> torch.Tensor:
    """Mean NLL of y over the masked cells (0 when there are none, still differentiable)."""
    y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))  # keep NaN out
    nll = mixture_nll_cells(y, mu, var, logit_pi, sigma)
    nll = torch.where(mask, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum() / mask.sum().clamp(min=1)


def forecast_mask(mask: torch.Tensor, anchor_len: int) -> torch.Tensor:
    """(B, L, F) observed -> (B, L, F) positions with a valid one-step prediction: position
    >= max(anchor_len, 1) and an earlier observation of the same feature in the window
    (module docstring: otherwise the inputs or the anchor depend on y_l)."""
    mask = mask.bool()
    seen_before = (mask.cumsum(1) - mask.long()) > 0  # (B, L, F)
    pos = torch.arange(mask.shape[1], device=mask.device)[None, :, None]
    return seen_before & (pos >= max(int(anchor_len), 1))


def target_mask(mask: torch.Tensor, anchor_len: int) -> torch.Tensor:
    """(B, L, F) cells a one-step prediction is scored on: observed and ``forecast_mask``."""
    return mask.bool() & forecast_mask(mask, anchor_len)


def shift_forward(x: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:
    """(B, L, ...) output at position l-1 -> (B, L, ...) prediction for position l;
    position 0 has none (``fill``)."""
    return torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)


def window_nll(
    mixture: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # 3 x (B, L, F, K), unshifted
    y: torch.Tensor,  # (B, L, F) observed windows, NaN where unobserved
    mask: torch.Tensor,  # (B, L, F) bool
    *,
    sigma: torch.Tensor,  # (F,) window units
    anchor_len: int,
) -> torch.Tensor:
    """Training loss: per-cell mean NLL of y_l under the mixture predicted at l-1, over
    ``target_mask`` cells."""
    mu, var, logit_pi = (p[:, :-1] for p in mixture)  # predictions for positions 1..L-1
    keep = target_mask(mask, anchor_len)[:, 1:]
    return mixture_nll(y[:, 1:], mu, var, logit_pi, sigma, keep)


def window_posterior(
    mixture: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # 3 x (B, L, F, K), unshifted
    y: torch.Tensor,  # (B, L, F), NaN where unobserved
    mask: torch.Tensor,  # (B, L, F) bool
    *,
    sigma: torch.Tensor,  # (F,) window units
    anchor_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ŝ, ∂ŝ/∂y, prior mean Σπμ), each (B, L, F), from unshifted mixture outputs.

    ŝ and the divergence are NaN outside ``target_mask`` (unobserved cells, l < anchor_len,
    no earlier observation). The prior mean (a one-step forecast from y_<l) is also given
    at unobserved cells, NaN only where no valid prediction exists (l < anchor_len or no
    earlier observation)."""
    mu, var, logit_pi = (shift_forward(p.float(), fill=0.0) for p in mixture)  # (B, L, F, K)
    var = var.clamp(min=torch.finfo(var.dtype).tiny)  # position 0 is filled with 0
    y0 = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
    s_hat, div = mixture_posterior(y0, mu, var, logit_pi, sigma)
    mu_mix = (torch.softmax(logit_pi, dim=-1) * mu).sum(-1)
    ok = forecast_mask(mask, anchor_len)
    keep = ok & mask.bool()
    nan = torch.full((), float("nan"), dtype=s_hat.dtype, device=s_hat.device)
    return (
        torch.where(keep, s_hat, nan),
        torch.where(keep, div, nan),
        torch.where(ok, mu_mix, nan),
    )


def predict_windows(
    net,
    w: torch.Tensor,  # (B, L, F) observed windows, window units, NaN where unobserved
    mask: torch.Tensor,  # (B, L, F) bool, True where observed
    *,
    sigma: torch.Tensor | float,  # (F,) or scalar noise std, window units
    anchor_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The predictive head's denoiser on a batch of windows: (ŝ, div, mu_mix), each (B, L, F).

    ``net``: a DenoiserModule or MultivariateMambaDenoiser with a predictive head (anything
    with ``predict_mixture(w, mask) -> (mu, var, logit_pi)``, each (B, L, F, K), the output
    at position l being the mixture for position l+1). Put it in eval mode first (dropout).
    Runs under no_grad. ŝ (window units) = E[s_l | y_l, y_<l]; div = ∂ŝ_l/∂y_l exactly
    (the anchor does not depend on y_l at these positions, so this is also the divergence in
    native units); mu_mix = E[s_l | y_<l]. NaN: see ``window_posterior``. Causal: rows <= l
    of every output depend on rows <= l of ``w`` only.
    """
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=w.device)
    with torch.no_grad():
        mixture = net.predict_mixture(w, mask)
        return window_posterior(mixture, w, mask, sigma=sig, anchor_len=anchor_len)


def sure_cells(y, s_hat, div, sigma) -> torch.Tensor:
    """Per-cell SURE of the denoising MSE, (ŝ − y)² + 2σ² ∂ŝ/∂y − σ² (unbiased for
    E(ŝ − s)² when y = s + N(0, σ²)); NaN where ŝ is NaN."""
    s2 = torch.as_tensor(sigma, dtype=s_hat.dtype, device=s_hat.device).square()
    return (s_hat - y).square() + 2 * s2 * div - s2
