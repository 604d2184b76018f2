"""The residual predictive head: a one-step mixture that starts at the classical filter's
prediction, and its closed-form denoiser under a noise law with outliers
(docs/design.md, "Predictive head"; the plain head is diffusion/predictive.py).

Window units throughout. Per feature, the train-fitted robust filter (robust.py; the
Kalman filter where its laws are Gaussian) gives the one-step prediction of the clean
value from y_<l over the whole history, N(μ_F, v_F) without a jump at row l and
N(μ_F, v_F^jump) with one (weights 1 − δ, δ), and a noise law

    n ~ Σ_j ε_j N(0, σ_j²),      j = core, outlier         (ε_outlier = 0: Gaussian)

The network adds what the filter cannot see. Its output at position l-1 (rows <= l-1 of
every feature of the group) and, through a zero-diagonal layer, the current row's
innovations of the OTHER features (``cross``; never y_l of the feature itself) give

    component 0:   μ_0 = μ_F + √v_F (a_0 + cross),   v_0 = v_F e^{b_0}
                   (and its jump twin, v_0^jump = v_F^jump e^{b_0}, weight δ within)
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
The evidence is computed in float64 with the groups' log weights log(1 − ρ), log ρ, exact
for any innovation and at ρ = 0; the gradient at ρ = 0, which log ρ cannot give, is added
straight-through (``posterior``).
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
    prior_var: torch.Tensor,  # (B, L, F) its variance (without a jump)
    noise_var: torch.Tensor,  # (F, J) noise-law variances
    eps: torch.Tensor,  # (F, J) noise-law weights
) -> torch.Tensor:
    """(B, L, F) the filter's standardised one-step innovations (y_l − μ_F)/√(v_F + E σ²),
    squashed to ±INNOVATION_CLIP; 0 where y_l or the prediction is missing."""
    h = (noise_var * eps).sum(-1)  # (F,) total noise variance
    e = (y - prior_mu) / (prior_var + h).sqrt()
    e = INNOVATION_CLIP * torch.tanh(e / INNOVATION_CLIP)
    ok = mask.bool() & torch.isfinite(e)
    return torch.where(ok, e, torch.zeros((), dtype=e.dtype, device=e.device))


def assemble(
    raw: torch.Tensor,  # (B, L, F, 3, K) head output, already aligned with row l
    cross: torch.Tensor,  # (B, L, F) the zero-diagonal current-row term
    lam: torch.Tensor,  # (F,) the extra components' multiplier
    prior_mu: torch.Tensor,  # (B, L, F)
    prior_var: torch.Tensor,  # (B, L, F, S) the filter's S sub-components (no jump, jump)
    filter_w: torch.Tensor,  # (F, S) their weights (1 − δ, δ)
):
    """-> (mu, var, log_w) each (B, L, F, S + K − 1), rho (B, L, F): the filter's S
    sub-components (with component 0's corrections) first, then the K − 1 extras; log_w is
    the log weight within each group (module docstring: ρ weighs the groups)."""
    a, b, c = raw.float().unbind(-2)  # (B, L, F, K) each
    S = prior_var.shape[-1]
    sd = prior_var[..., 0].clamp(min=0).sqrt().unsqueeze(-1)  # (B, L, F, 1)
    mu0 = prior_mu.unsqueeze(-1)
    shift0 = (a[..., :1] + cross.float().unsqueeze(-1)) * sd
    var_b = b.clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND).exp()
    mu = torch.cat([(mu0 + shift0).expand(*mu0.shape[:-1], S), mu0 + sd * a[..., 1:]], -1)
    var = torch.cat([prior_var * var_b[..., :1], prior_var[..., :1] * var_b[..., 1:]], -1)
    log_fw = filter_w.float().log().expand(*prior_mu.shape, S)
    log_w = torch.cat([log_fw, torch.log_softmax(c[..., 1:], dim=-1)], -1)
    rho = lam.float().clamp(0.0, 1.0) * torch.sigmoid(c[..., 0])
    if a.shape[-1] == 1:  # no extra component to give weight to
        rho = torch.zeros_like(rho)
    return mu, var, log_w, rho


def _pair_terms(y, mu, var, noise_var, eps):
    """Per (component, noise) pair: (S, r, log ε_j + log N(y; μ_c, S)), each (..., C, J)."""
    nv = noise_var.unsqueeze(-2)  # (..., 1, J)
    S = var.unsqueeze(-1) + nv  # (..., C, J)
    r = (y.unsqueeze(-1) - mu).unsqueeze(-1)  # (..., C, 1)
    log_n = eps.log().unsqueeze(-2) - 0.5 * (_LOG_2PI + S.log() + r.square() / S)
    return S, r, log_n


def posterior(
    y: torch.Tensor,  # (...,) observed value (finite; callers zero the unobserved)
    mu: torch.Tensor,  # (..., C)
    var: torch.Tensor,  # (..., C)
    log_w: torch.Tensor,  # (..., C) log weights within each group
    rho: torch.Tensor,  # (...,) the extras' group weight
    noise_var: torch.Tensor,  # (..., J) broadcastable
    eps: torch.Tensor,  # (..., J) broadcastable
    *,
    n_filter: int = 1,  # the first n_filter components are the filter's group
):
    """(ŝ, ∂ŝ/∂y, log p(y | y_<l)), each (...,): the posterior mean over the C×J pairs, its
    exact divergence and the evidence, the groups weighted 1 − ρ (filter) and ρ (extras).

    In float64, in log space with the groups' log weights log(1 − ρ) and log ρ, so a
    40-sd jump under a tiny noise variance (the extras' evidence e^800 times the filter's)
    stays exact. ρ = 0 is exact too (log ρ = −∞, the extras' weights exactly 0); its
    gradient there, which log ρ cannot give, is the first-order one, expm1(Δ) with the
    evidence ratio Δ capped at 20, added straight-through (forward value unchanged)."""
    dt = y.dtype
    y, mu, var, log_w, rho, noise_var, eps = (
        t.double() for t in (y, mu, var, log_w, rho, noise_var, eps)
    )
    S, r, log_n = _pair_terms(y, mu, var, noise_var, eps)
    log_n = log_n + log_w.unsqueeze(-1)  # (..., C, J)
    n_extra = mu.shape[-1] - n_filter
    rho = rho.clamp(0.0, 0.999)
    log_group = torch.log1p(-rho).unsqueeze(-1).expand(*rho.shape, n_filter)
    total = torch.logsumexp(log_n[..., :n_filter, :], dim=(-2, -1))  # the filter group
    if n_extra > 0:
        on = rho > 0
        log_rho = torch.where(on, torch.where(on, rho, 1.0).log(), -torch.inf)
        l0 = total
        le = torch.logsumexp(log_n[..., n_filter:, :], dim=(-2, -1))
        total = torch.logaddexp(torch.log1p(-rho) + l0, log_rho + le)
        first = rho * torch.expm1((le - l0).clamp(max=20.0)).detach()
        total = total + torch.where(on, 0.0, first - first.detach())  # gradient at ρ = 0
        log_group = torch.cat([log_group, log_rho.unsqueeze(-1).expand(*rho.shape, n_extra)], -1)
    w = torch.exp(log_n + log_group.unsqueeze(-1) - total[..., None, None])  # (..., C, J)
    g = var.unsqueeze(-1) / S
    m = mu.unsqueeze(-1) + g * r
    s_hat = (w * m).sum((-2, -1))
    d = -r / S
    d_bar = (w * d).sum((-2, -1), keepdim=True)
    div = (w * g).sum((-2, -1)) + (w * (d - d_bar) * (m - s_hat[..., None, None])).sum((-2, -1))
    out_dt = torch.promote_types(dt, torch.float32)
    return s_hat.to(out_dt), div.to(out_dt), total.to(out_dt)


def _sanitised(prior_mu, prior_var, noise_var, eps, filter_w):
    """NaN-free copies (a feature without a filter fit, rows before its first observation)
    and where the prediction is usable: NaN in an unused branch of torch.where still
    poisons gradients."""
    ok = torch.isfinite(prior_mu) & torch.isfinite(prior_var).all(-1) & (prior_var > 0).all(-1)
    zero, one = (torch.tensor(v, dtype=prior_mu.dtype, device=prior_mu.device) for v in (0, 1))
    law_ok = torch.isfinite(noise_var).all(-1, keepdim=True) & (noise_var > 0).all(-1, True)
    law_ok = law_ok & torch.isfinite(filter_w).all(-1, keepdim=True)
    first = torch.zeros_like(eps)
    first[..., 0] = 1.0  # one component: the Gaussian law, no jump
    return (
        torch.where(ok, prior_mu, zero),
        torch.where(ok.unsqueeze(-1), prior_var, one),
        torch.where(law_ok, noise_var, one),
        torch.where(law_ok, eps, first),
        torch.where(law_ok, filter_w, first),
        ok,
    )


def window_outputs(
    out,  # ``predict_residual``'s (raw (B, L, F, 3, K) unshifted, cross (B, L, F), λ (F,))
    y: torch.Tensor,  # (B, L, F) window units, NaN where unobserved
    mask: torch.Tensor,  # (B, L, F) bool
    prior_mu: torch.Tensor,  # (B, L, F) window units, NaN where none
    prior_var: torch.Tensor,  # (B, L, F, 2) without / with a jump
    noise_var: torch.Tensor,  # (F, J) window units
    eps: torch.Tensor,  # (F, J)
    filter_w: torch.Tensor,  # (F, 2) (1 − δ, δ)
    *,
    anchor_len: int,
):
    """(ŝ, ∂ŝ/∂y, log p(y_l | y_<l), keep), each (B, L, F): the denoiser on the cells
    ``keep`` (observed, a valid one-step position as in predictive.forecast_mask, and a
    filter prediction); ŝ, div and the evidence are NaN elsewhere."""
    raw, cross, lam = out
    mu_f, var_f, nv, ep, fw, ok = _sanitised(prior_mu, prior_var, noise_var, eps, filter_w)
    raw = shift_forward(raw.float(), fill=0.0)  # position l: the output at l-1, for row l
    mu, var, log_w, rho = assemble(raw, cross, lam, mu_f, var_f, fw)
    y0 = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device)).float()
    s_hat, div, logp = posterior(
        y0, mu, var, log_w, rho, nv.float(), ep.float(), n_filter=var_f.shape[-1]
    )
    keep = mask.bool() & ok & forecast_mask(mask, anchor_len)
    nan = torch.full((), float("nan"), dtype=s_hat.dtype, device=s_hat.device)
    return (
        torch.where(keep, s_hat, nan),
        torch.where(keep, div, nan),
        torch.where(keep, logp, nan),
        keep,
    )
