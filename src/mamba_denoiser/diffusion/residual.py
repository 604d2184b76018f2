"""The residual predictive head: a one-step mixture that starts at the classical filter's
prediction, and its closed-form denoiser under a noise law with outliers
(docs/design.md, "Predictive head"; the plain head is diffusion/predictive.py).

Window units throughout. Per feature, the train-fitted robust filter (robust.py; the
Kalman filter where its noise law is Gaussian) gives the one-step prediction of the clean
value, N(μ_F, v_F), from y_<l over the whole history, and a noise law

    n ~ Σ_j ε_j N(0, σ_j²),      j = core, outlier         (ε_outlier = 0: Gaussian)

The network adds what the filter cannot see. Its output at position l-1 (rows <= l-1 of
every feature of the group) and, through a zero-diagonal layer, the current row's
innovations of the OTHER features (``cross``; never y_l of the feature itself) give

    component 0:   μ_0 = μ_F + √v_F (a_0 + cross),   v_0 = v_F e^{b_0}
    component k≥1: μ_k = μ_F + √v_F a_k,             v_k = v_F e^{b_k}
    weights:       π_0 = 1 − ρ,  π_k = ρ q_k,  q = softmax(c_1..c_{K-1}),
                   ρ = clamp(λ, 0, 1) · sigmoid(c_0)

with λ (F,) a multiplier initialised to exactly 0, and a, b_0, cross initialised to 0: the
untrained head IS the filter (the extra components carry weight exactly 0, not a small
logit that a 6-sd innovation, i.e. the jump or outlier row, would overturn).

Observing y_l: each pair (k, j) of prior and noise components is a scalar Kalman step,
reweighted by its evidence,

    S_kj = v_k + σ_j²,  g_kj = v_k / S_kj,  m_kj = μ_k + g_kj (y − μ_k)
    w_kj ∝ π_k ε_j N(y; μ_k, S_kj),          ŝ = Σ w_kj m_kj

with the exact divergence of predictive.py over the K×J pairs. K = 1 is the robust filter's
measurement update, which collapses the same pairs to their mean: the same number.
The evidence is computed as log N_0 + log1p(ρ·expm1(log N_e − log N_0)) so that ρ = 0 is
exact and its gradient finite (log ρ would be −∞ with an infinite derivative).
"""

from __future__ import annotations

import math

import torch

from mamba_denoiser.diffusion.predictive import forecast_mask, shift_forward

LOG_VAR_BOUND = 8.0  # |log variance ratio| of a component to the filter's prediction
INNOVATION_CLIP = 4.0  # innovations (in sd) enter the network as 4·tanh(e/4): a far outlier
# of another feature must not drag a neighbour's prediction without bound
_LOG_2PI = math.log(2 * math.pi)


def innovations(
    y: torch.Tensor,  # (B, L, F) window units, NaN where unobserved
    mask: torch.Tensor,  # (B, L, F) bool
    prior_mu: torch.Tensor,  # (B, L, F) the filter's prediction of s_l, NaN where none
    prior_var: torch.Tensor,  # (B, L, F)
    noise_var: torch.Tensor,  # (B, F, J) or (F, J) noise-law variances
    eps: torch.Tensor,  # (B, F, J) or (F, J) noise-law weights
) -> torch.Tensor:
    """(B, L, F) the filter's standardised one-step innovations (y_l − μ_F)/√(v_F + E σ²),
    squashed to ±INNOVATION_CLIP; 0 where y_l or the prediction is missing."""
    h = (noise_var * eps).sum(-1)  # total noise variance
    h = h.unsqueeze(-2) if h.dim() == 2 else h.unsqueeze(-2)  # (B or 1, 1, F)
    e = (y - prior_mu) / (prior_var + h).sqrt()
    e = INNOVATION_CLIP * torch.tanh(e / INNOVATION_CLIP)
    ok = mask.bool() & torch.isfinite(e)
    return torch.where(ok, e, torch.zeros((), dtype=e.dtype, device=e.device))


def assemble(
    raw: torch.Tensor,  # (B, L, F, 3, K) head output, already aligned with row l
    cross: torch.Tensor,  # (B, L, F) the zero-diagonal current-row term
    lam: torch.Tensor,  # (F,) the extra components' multiplier
    prior_mu: torch.Tensor,  # (B, L, F)
    prior_var: torch.Tensor,  # (B, L, F)
):
    """-> (mu (B, L, F, K), var (B, L, F, K), logit_q (B, L, F, K-1), rho (B, L, F))."""
    a, b, c = raw.float().unbind(-2)  # (B, L, F, K) each
    a = a + torch.nn.functional.pad(cross.float().unsqueeze(-1), (0, a.shape[-1] - 1))
    sd = prior_var.clamp(min=0).sqrt().unsqueeze(-1)
    mu = prior_mu.unsqueeze(-1) + sd * a
    var = prior_var.unsqueeze(-1) * b.clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND).exp()
    rho = lam.float().clamp(0.0, 1.0) * torch.sigmoid(c[..., 0])
    if a.shape[-1] == 1:  # no extra component to give weight to
        rho = torch.zeros_like(rho)
    return mu, var, c[..., 1:], rho


def _pair_terms(y, mu, var, noise_var, eps):
    """Per (k, j) pair: (S, r, log ε_j + log N(y; μ_k, S)), each (..., K, J)."""
    nv = noise_var.unsqueeze(-2)  # (..., 1, J)
    S = var.unsqueeze(-1) + nv  # (..., K, J)
    r = (y.unsqueeze(-1) - mu).unsqueeze(-1)  # (..., K, 1)
    log_n = eps.log().unsqueeze(-2) - 0.5 * (_LOG_2PI + S.log() + r.square() / S)
    return S, r, log_n


def log_evidence(y, mu, var, logit_q, rho, noise_var, eps):
    """(log p(y | y_<l), log ℓ_kj (..., K, J), log q (..., K-1)); ρ = 0 exactly gives the
    filter's own evidence (module docstring)."""
    _, _, log_n = _pair_terms(y, mu, var, noise_var, eps)
    l0 = torch.logsumexp(log_n[..., 0, :], dim=-1)  # (...,)
    if mu.shape[-1] == 1:
        return l0, log_n, logit_q
    log_q = torch.log_softmax(logit_q, dim=-1)
    le = torch.logsumexp(log_n[..., 1:, :] + log_q.unsqueeze(-1), dim=(-2, -1))
    delta = (le - l0).clamp(-80.0, 80.0)  # keeps expm1 finite; ρ·expm1 stays exact at ρ = 0
    return l0 + torch.log1p(rho * torch.expm1(delta)), log_n, log_q


def posterior(
    y: torch.Tensor,  # (...,) observed value (finite; callers zero the unobserved)
    mu: torch.Tensor,  # (..., K)
    var: torch.Tensor,  # (..., K)
    logit_q: torch.Tensor,  # (..., K-1)
    rho: torch.Tensor,  # (...,)
    noise_var: torch.Tensor,  # (..., J) broadcastable
    eps: torch.Tensor,  # (..., J) broadcastable
):
    """(ŝ, ∂ŝ/∂y, log p(y | y_<l)), each (...,): the posterior mean over the K×J pairs, its
    exact divergence and the evidence (the NLL's negative)."""
    total, log_n, log_q = log_evidence(y, mu, var, logit_q, rho, noise_var, eps)
    S, r, _ = _pair_terms(y, mu, var, noise_var, eps)
    # prior weight of component k: 1 − ρ, then ρ q_k, multiplied (not added in logs) so
    # that ρ = 0 gives weights exactly 0 and finite gradients
    w = torch.exp(log_n - total[..., None, None])  # (..., K, J) ε_j N_kj / p(y)
    pk = torch.cat([(1 - rho).unsqueeze(-1), rho.unsqueeze(-1) * log_q.exp()], dim=-1)
    w = w * pk.unsqueeze(-1)
    g = var.unsqueeze(-1) / S
    m = mu.unsqueeze(-1) + g * r
    s_hat = (w * m).sum((-2, -1))
    d = -r / S
    d_bar = (w * d).sum((-2, -1), keepdim=True)
    div = (w * g).sum((-2, -1)) + (w * (d - d_bar) * (m - s_hat[..., None, None])).sum((-2, -1))
    return s_hat, div, total


def _sanitised(prior_mu, prior_var, noise_var, eps):
    """NaN-free copies (a feature without a filter fit, rows before its first observation)
    and where the prediction is usable: NaN in an unused branch of torch.where still
    poisons gradients."""
    ok = torch.isfinite(prior_mu) & torch.isfinite(prior_var) & (prior_var > 0)
    zero, one = (torch.tensor(v, dtype=prior_mu.dtype, device=prior_mu.device) for v in (0, 1))
    law_ok = torch.isfinite(noise_var).all(-1, keepdim=True) & (noise_var > 0).all(-1, True)
    gauss = torch.zeros_like(eps)
    gauss[..., 0] = 1.0
    return (
        torch.where(ok, prior_mu, zero),
        torch.where(ok, prior_var, one),
        torch.where(law_ok, noise_var, one),
        torch.where(law_ok, eps, gauss),
        ok,
    )


def window_outputs(
    out,  # ``predict_residual``'s (raw (B, L, F, 3, K) unshifted, cross (B, L, F), λ (F,))
    y: torch.Tensor,  # (B, L, F) window units, NaN where unobserved
    mask: torch.Tensor,  # (B, L, F) bool
    prior_mu: torch.Tensor,  # (B, L, F) window units, NaN where none
    prior_var: torch.Tensor,  # (B, L, F)
    noise_var: torch.Tensor,  # (F, J) window units
    eps: torch.Tensor,  # (F, J)
    *,
    anchor_len: int,
):
    """(ŝ, ∂ŝ/∂y, log p(y_l | y_<l), keep), each (B, L, F): the denoiser on the cells
    ``keep`` (observed, a valid one-step position as in predictive.forecast_mask, and a
    filter prediction); ŝ, div and the evidence are NaN elsewhere."""
    raw, cross, lam = out
    mu_f, var_f, nv, ep, ok = _sanitised(prior_mu, prior_var, noise_var, eps)
    raw = shift_forward(raw.float(), fill=0.0)  # position l: the output at l-1, for row l
    mu, var, logit_q, rho = assemble(raw, cross, lam, mu_f, var_f)
    y0 = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device)).float()
    s_hat, div, logp = posterior(y0, mu, var, logit_q, rho, nv.float(), ep.float())
    keep = mask.bool() & ok & forecast_mask(mask, anchor_len)
    nan = torch.full((), float("nan"), dtype=s_hat.dtype, device=s_hat.device)
    return (
        torch.where(keep, s_hat, nan),
        torch.where(keep, div, nan),
        torch.where(keep, logp, nan),
        keep,
    )
