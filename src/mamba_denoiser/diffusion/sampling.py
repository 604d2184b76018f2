"""Denoising with a trained ε-predictor ε̂ = eps_fn(x_t, t, mask): posterior mean and SDEdit.

The network was trained on observed, NOISY windows y = s + n, n ~ N(0, σ²) white with a
per-feature σ (in the units of y), as a DDPM ε-predictor: x_t = √ᾱ_t y + √(1-ᾱ_t) ε.

Posterior mean, re-noised form (``posterior_mean_renoised``, Tweedie). Given y,
x_t = √ᾱ s + √(ᾱσ² + 1 - ᾱ) ξ, and ε̂ ≈ E[ε | x_t] = -√(1-ᾱ) ∇ log p(x_t), so
Tweedie's formula w.r.t. s gives

    E[s | x_t] = (x_t - (ᾱσ² + 1 - ᾱ) / √(1-ᾱ) · ε̂(x_t, t)) / √ᾱ,

averaged over ``n_draws`` draws of ε (the draws' std is an uncertainty proxy). This
re-noised form is Bayes for the noisier input x_t, not for y: it estimates s with the total
noise σ² + τ_t² (below) and adds τ_t²/n_draws of Monte-Carlo variance.

Noise2Score form (``posterior_mean_n2s``): deterministic, no noise added,

    ŝ = y - k/τ_t · ε̂(√ᾱ_t y, t),   k = σ² ("noise2score") or σ² + τ_t² ("total_noise").

Why. Let p_τ be the density of u = y + τ ξ (the training data smoothed by N(0, τ²)).
x_t = √ᾱ_t u with τ = τ_t, so the Bayes ε̂(x_t, t) = -√(1-ᾱ) ∇_x log p(x_t) =
-τ_t ∇ log p_τ(u): the network fed √ᾱ_t y returns -τ_t × the smoothed score at y. Tweedie
for the observation noise, E[s | y] = y + σ² ∇ log p_y(y), with ∇ log p_τ in place of
∇ log p_y gives k = σ²; Tweedie for the total noise σ² + τ² of u, evaluated at u = y,
gives k = σ² + τ². Both are exact only as τ -> 0 (p_τ -> p_y); in the eigenbasis of a
Gaussian signal (eigenvalue λ) the gains are (λ + τ²)/(λ + σ² + τ²) and λ/(λ + σ² + τ²)
against λ/(λ + σ²): σ² under-shrinks (gain τ²/(σ² + τ²) on pure-noise components), σ²+τ²
over-shrinks (error ∝ λ, small where noise dominates, which is most of a smooth signal's
spectrum). ``t_ref`` extrapolates two timesteps linearly in τ² to τ = 0 (p_τ is smooth in
τ²: the heat equation), cancelling the O(τ²) bias.

Measured with the exact ε̂ of Gaussian windows (tests/diffusion/test_exact_score.py, L = 31,
20,000 windows, SNR gain at the last row in dB, closed form; Monte Carlo agrees to 0.04):

    model                optimum  N2S τ=σ  σ/2   σ/4  Rich(σ/2,σ)  total σ/2  re-noised σ/2
    AR(1) φ=0.5, 0 dB     3.33     2.72    3.26  3.33    3.32        3.28        3.23
    AR(1) φ=0.9, 0 dB     5.18     3.60    4.91  5.15    5.12        5.14        5.08
    random walk, K=0.3    5.23     3.55    4.93  5.20    5.16        5.20        5.13
    random walk, K=0.5    3.01     2.36    2.92  3.00    2.99        2.98        2.90

(re-noised: n_draws = 8; at τ = σ it loses 0.5 dB, "total_noise" 0.3-0.45 dB.) So with the
exact score, N2S needs τ <= σ/4, "total_noise" or the Richardson pair reach the optimum
to within 0.1 dB from τ = σ/2, and τ = σ is 0.6-1.7 dB short for N2S.

Error amplification of the deterministic forms: an ε̂ error δ moves ŝ by k/τ · δ, i.e.
(σ/τ) σ δ for "noise2score" and (σ/τ + τ/σ) σ δ for "total_noise" (the A below); the
Richardson pair (σ/2, σ) by about 2.7 σ δ. With a white ε̂ error of RMS 0.05 added to the
exact ε̂ (a crude stand-in for a network), the gaps to the optimum are 0.17-0.25 dB for
"total_noise" at σ/2, 0.17-0.43 for N2S at σ/2, 0.34-0.57 for N2S at σ/4 and 0.17-0.32
for the Richardson pair: small τ trades bias for amplified error, so τ (and the form)
should be chosen on the data, e.g. by SURE: the forms are deterministic maps of y, so
SURE = |ŝ - y|² - nσ² + 2σ² div ŝ with the divergence from a probe b,
div ≈ bᵀ(ŝ(y + εb) - ŝ(y))/ε.

Effective diffusion noise. x_t / √ᾱ_t = y + τ_t ε with τ_t = √((1-ᾱ_t) / ᾱ_t) = 1/√SNR_t:
diffusing to t adds noise of std τ_t, in the units of y, on top of the noise σ.

Error amplification (re-noised form). An error δ in ε̂ moves the posterior mean by
(ᾱσ² + 1 - ᾱ) / (√ᾱ √(1-ᾱ)) · δ = (σ²/τ_t + τ_t) · δ, i.e. by

    A(σ, τ) · σ · δ,   A(σ, τ) = σ/τ + τ/σ >= 2, with equality at τ = σ,

relative to the noise σ being removed. Small t (τ << σ) loses the least information to the
added noise but amplifies ε̂ errors by σ/τ; large t (τ >> σ) by τ/σ.

Rule for t (``choose_t``): the smallest t with

    τ_t >= c · σ_ref,    clipped to [t_min, t_max],

where σ_ref is the geometric mean of the features' σ (one t per window: the network takes
one t per sample; the geometric mean minimises Σ_f (log τ - log σ_f)², and A depends on
σ and τ only through |log τ - log σ|). c = 1 minimises the amplification; c < 1 trades
some of it for less added noise. Default c = 0.5; a reported small conv-net on 0 dB OU windows did
best at t ≈ 50-100 of 1000 on the linear schedule, i.e. τ/σ ≈ 0.25-0.5 for unit-variance
windows. c is a knob to choose on validation data, not a derived constant.

Pass-through rule (``resolvable``): a feature is denoised only if an ε̂ error of RMS
``eps_error`` (in ε units) would add at most ``max_error_ratio`` × σ of error at the t used:

    eps_error · (σ/τ_t + τ_t/σ) <= max_error_ratio.

With the defaults (0.1, 0.5) that is σ/τ + τ/σ <= 5, i.e. τ_t/σ in [0.21, 4.8]. When each
feature gets its own t (``t=None``), τ = c·σ and the rule fails only at the ends of the
schedule: σ below ≈ τ_{t_min}/4.8 (too little noise for the smallest diffusion noise to
resolve; the ε̂ error would dwarf it) or σ above ≈ 4.8 τ_{t_max}. Non-finite σ (not
estimated) and σ = 0 (no noise) pass through too. ``eps_error`` is the network's ε̂ error
relative to the Bayes ε̂, which is unknown for a real model: 0.1 is a guess to be set from
validation, not a measured number.

SDEdit: diffuse y to t_start, run the reverse process to t = 0 (DDPM ancestral steps, or
DDIM on ``sde.ddim_timesteps``), ``n_samples`` samples at once; the mean and quantile
bands over samples. SDEdit conditions on y only through the start.

Guidance (SDEdit only): at each reverse step x̂0 = predict_x0(x_t, ε̂) is moved by a
gradient step on a smoothness penalty and ε̂ is recomputed from the moved x̂0, so the step
is consistent with it: "tv" lowers the total variation along time (mean-reverting), "fourier"
the energy above ``cutoff`` × Nyquist (trending), "balanced" both (the weights of
losses.STRATEGY_WEIGHTS). NOT causal: TV and the FFT along time use later rows of the
window, so a guided output at row l depends on rows > l of the same window
(``guidance_is_causal``).

Conventions. y, mask: (B, L, F); mask bool, True = observed; unobserved cells of y may be
anything (NaN included): eps_fn sees them as 0, together with the mask, exactly as in
training, and they are NaN in every output. eps_fn(x (N, L, F), t (N,) long, mask (N, L, F))
-> ε̂ (N, L, F). Everything is batched over windows, draws and samples (loops run over
diffusion steps only); ``max_batch`` caps the rows per eps_fn call. Random numbers come
from ``generator`` (``posterior_mean_n2s`` draws none) and are drawn for the full shape
before use, so they do not depend on the values of y: with a causal eps_fn, rows <= l of
the outputs do not change when rows > l of y (or of the mask) change. Computation is
float32, under torch.no_grad() (guidance enables grad on x̂0 only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from mamba_denoiser.diffusion.losses import high_frequency_energy, total_variation
from mamba_denoiser.diffusion.sde import VPSDE
from mamba_denoiser.vocabulary import STRATEGY_WEIGHTS

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
GUIDANCES = ("tv", "fourier", "balanced")
N2S_CONSTANTS = ("noise2score", "total_noise")
METHODS = ("ddpm", "ddim")


def guidance_is_causal(name: str | None) -> bool:
    """Whether guidance ``name`` keeps a window's output at row l free of rows > l.

    None / "none": True (no guidance). "tv", "fourier", "balanced": False, because total
    variation and the FFT along time couple each row to later rows of the window. A causal
    caller must refuse these, or use only the last row of each window.
    """
    if name is None or name == "none":
        return True
    if name in GUIDANCES:
        return False
    raise ValueError(f"unknown guidance {name!r}; choose one of {GUIDANCES} or None")


# ---------------------------------------------------------------- rules for t


def diffusion_noise(sde: VPSDE) -> torch.Tensor:
    """τ_t = √((1-ᾱ_t)/ᾱ_t), t = 0..T-1: the noise std diffusing to t adds to y. (T,)"""
    a = sde.alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


def _sigma_tensor(sigma, *, n_features: int | None = None) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float64).cpu().reshape(-1)
    if n_features is not None:
        if sigma.numel() == 1:
            sigma = sigma.expand(n_features)
        if sigma.numel() != n_features:
            raise ValueError(
                f"sigma must be a scalar or have {n_features} entries, got {sigma.numel()}"
            )
    return sigma


def _clip_range(sde: VPSDE, t_min: int, t_max: int | None) -> tuple[int, int]:
    T = sde.num_timesteps
    t_max = T - 1 if t_max is None else t_max
    if not 0 <= t_min <= t_max <= T - 1:
        raise ValueError(f"need 0 <= t_min <= t_max <= {T - 1}, got t_min={t_min}, t_max={t_max}")
    return t_min, t_max


def choose_t(
    sde: VPSDE,
    sigma,
    *,
    c: float = 0.5,
    t_min: int = 1,
    t_max: int | None = None,
    reduce: str | None = "geomean",
):
    """The smallest t with τ_t >= c · σ, clipped to [t_min, t_max] (module docstring).

    sigma: (F,) noise std per feature, in the units of y (or a scalar). reduce="geomean":
    one int t for σ_ref = geometric mean of the finite, positive σ (features that
    ``resolvable`` rejects should be left out first). reduce=None: a (F,) long tensor, one
    t per feature (t_min where σ is not finite and positive).
    """
    if c <= 0:
        raise ValueError(f"c must be > 0, got {c}")
    t_min, t_max = _clip_range(sde, t_min, t_max)
    sigma = _sigma_tensor(sigma)
    usable = torch.isfinite(sigma) & (sigma > 0)
    tau = diffusion_noise(sde).cpu()  # increasing in t; sigma is on the CPU too
    if reduce is None:
        target = torch.where(usable, c * sigma, torch.zeros_like(sigma))
    elif reduce == "geomean":
        if not usable.any():
            raise ValueError(
                "no feature has a finite, positive sigma; nothing to denoise "
                "(check resolvable() and the noise estimates)"
            )
        target = c * sigma[usable].log().mean().exp().reshape(1)
    else:
        raise ValueError(f"reduce must be 'geomean' or None, got {reduce!r}")
    t = torch.searchsorted(tau, target).clamp(t_min, t_max)
    return t if reduce is None else int(t)


def resolvable(
    sde: VPSDE,
    sigma,
    *,
    t: int | None = None,
    c: float = 0.5,
    t_min: int = 1,
    t_max: int | None = None,
    eps_error: float = 0.1,
    max_error_ratio: float = 0.5,
) -> tuple[torch.Tensor, list[str]]:
    """Which features to denoise: (ok (F,) bool, reasons (F,) str; "ok" where denoised).

    The rule (module docstring): eps_error · (σ/τ_t + τ_t/σ) <= max_error_ratio, with τ_t
    at the given shared ``t``, or at each feature's own choose_t(..., reduce=None) when
    t is None. Non-finite σ and σ <= 0 pass through.
    """
    sigma = _sigma_tensor(sigma)
    tau_all = diffusion_noise(sde).cpu()
    if t is None:
        t_f = choose_t(sde, sigma, c=c, t_min=t_min, t_max=t_max, reduce=None)
    else:
        if not 0 <= int(t) < sde.num_timesteps:
            raise ValueError(f"t must be in [0, {sde.num_timesteps - 1}], got {t}")
        t_f = torch.full(sigma.shape, int(t), dtype=torch.long)
    tau = tau_all[t_f]
    ok = torch.zeros(sigma.shape, dtype=torch.bool)
    reasons = []
    for f in range(sigma.numel()):  # per feature, for the reason strings only
        s, tf, tu = float(sigma[f]), int(t_f[f]), float(tau[f])
        if not math.isfinite(s):
            reasons.append("sigma not estimated (not finite)")
            continue
        if s <= 0:
            reasons.append("sigma = 0: no observation noise to remove")
            continue
        added = eps_error * (s / tu + tu / s)  # error added per unit σ
        if added <= max_error_ratio:
            ok[f] = True
            reasons.append("ok")
        elif tu > s:
            reasons.append(
                f"sigma={s:.3g} is below what t={tf} resolves (tau_t={tu:.3g}): an eps error "
                f"of {eps_error} would add {added:.2g} sigma of error"
            )
        else:
            reasons.append(
                f"sigma={s:.3g} is large for t={tf} (tau_t={tu:.3g}): eps errors amplified to "
                f"{added:.2g} sigma; use a larger t"
            )
    return ok, reasons


# ---------------------------------------------------------------- shared helpers


def _prepare(y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y with unobserved cells = 0, as float32; mask as bool), both (B, L, F)."""
    if y.dim() != 3:
        raise ValueError(f"y must have shape (B, L, F), got {tuple(y.shape)}")
    if mask.shape != y.shape:
        raise ValueError(f"mask must have y's shape {tuple(y.shape)}, got {tuple(mask.shape)}")
    mask = mask.to(device=y.device, dtype=torch.bool)
    y = y.float()
    if not torch.isfinite(y[mask]).all():
        raise ValueError("y has non-finite values at observed cells (mask True); mask them out")
    return torch.where(mask, y, torch.zeros((), device=y.device)), mask


def _prepare_with_sigma(y: torch.Tensor, mask: torch.Tensor, sigma):
    """``_prepare``'s (y0, mask) and sigma as an (F,) float64 tensor, every entry finite
    and >= 0 (the posterior means need a known noise level for every feature)."""
    y0, mask = _prepare(y, mask)
    sigma = _sigma_tensor(sigma, n_features=y0.shape[-1])
    if not (torch.isfinite(sigma) & (sigma >= 0)).all():
        raise ValueError(
            "sigma must be finite and >= 0 for every feature; pass features with unknown "
            "sigma through unchanged (see resolvable())"
        )
    return y0, mask, sigma


def _eps(
    eps_fn: EpsFn, x: torch.Tensor, t: int, mask: torch.Tensor, max_batch: int | None
) -> torch.Tensor:
    """ε̂ for x (N, L, F), unobserved cells fed as 0, in chunks of at most max_batch rows."""
    x = torch.where(mask, x, torch.zeros((), device=x.device))
    n = x.shape[0]
    step = n if max_batch is None else max(1, int(max_batch))
    out = []
    for i in range(0, n, step):
        xi, mi = x[i : i + step], mask[i : i + step]
        ti = torch.full((xi.shape[0],), t, dtype=torch.long, device=x.device)
        out.append(eps_fn(xi, ti, mi).float())
    eps_hat = out[0] if len(out) == 1 else torch.cat(out)
    if eps_hat.shape != x.shape:
        raise ValueError(f"eps_fn returned shape {tuple(eps_hat.shape)}, expected {tuple(x.shape)}")
    return eps_hat


def _randn(shape, y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=y.device, dtype=torch.float32)


def _nan_outside(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.full((), float("nan"), device=x.device))


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile q over dim 0, linear interpolation (torch.quantile's default), without
    torch.quantile's input-size limit."""
    xs = x.sort(dim=0).values
    pos = q * (x.shape[0] - 1)
    lo, frac = int(math.floor(pos)), pos - math.floor(pos)
    hi = min(lo + 1, x.shape[0] - 1)
    return xs[lo] + frac * (xs[hi] - xs[lo])


def _check_t(sde: VPSDE, t, name: str) -> int:
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"{name} must be one timestep (the network takes one t per sample)")
        t = t.item()
    if int(t) != t or not 0 <= int(t) < sde.num_timesteps:
        raise ValueError(f"{name} must be an integer in [0, {sde.num_timesteps - 1}], got {t}")
    return int(t)


# ---------------------------------------------------------------- posterior mean


@torch.no_grad()
def posterior_mean_renoised(
    eps_fn: EpsFn,
    sde: VPSDE,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    t: int,
    sigma,
    n_draws: int = 8,
    generator: torch.Generator | None = None,
    return_std: bool = False,
    max_batch: int | None = None,
):
    """E[s | x_t] averaged over ``n_draws`` draws of x_t = √ᾱ_t y + √(1-ᾱ_t) ε.

    y, mask: (B, L, F); t: one timestep (choose_t); sigma: (F,) (or scalar)
    observation-noise std in the units of y; max_batch: as ``posterior_mean_n2s``'s.
    Returns the mean (B, L, F), or (mean, std) with ``return_std=True`` (std over draws,
    n_draws >= 2): NaN at unobserved cells.

    Tweedie for x_t is the "total_noise" Noise2Score map at u = y + τ_t ε (x_t = √ᾱ_t u):
    (x_t - (ᾱσ² + 1 - ᾱ)/√(1-ᾱ) · ε̂(x_t))/√ᾱ = u - (σ² + τ_t²)/τ_t · ε̂(√ᾱ_t u), so that is
    how it is computed, on all n_draws · B re-noised windows at once.

    With the Bayes ε̂ the mean over draws tends to E_ε[E[s | x_t] | y], which is not
    E[s | y]: for s ~ N(0, a²) per cell it is ᾱa² / (ᾱ(a² + σ²) + 1 - ᾱ) · y against
    a² / (a² + σ²) · y, the same as t -> 0.
    """
    t = _check_t(sde, t, "t")
    if n_draws < 1 or (return_std and n_draws < 2):
        raise ValueError(f"n_draws must be >= 1 (>= 2 with return_std), got {n_draws}")
    y0, mask = _prepare(y, mask)
    B, L, F = y0.shape
    tau = float(diffusion_noise(sde)[t])
    eps = _randn((n_draws, B, L, F), y0, generator)  # all draws first: independent of y
    u = (y0 + tau * eps).reshape(n_draws * B, L, F)  # x_t / √ᾱ_t
    masks = mask.expand(n_draws, B, L, F).reshape(n_draws * B, L, F)
    s_hat = posterior_mean_n2s(
        eps_fn, sde, u, masks, sigma=sigma, t=t, constant="total_noise", max_batch=max_batch
    )
    s_hat = s_hat.reshape(n_draws, B, L, F)  # NaN at unobserved cells
    if not return_std:
        return s_hat.mean(dim=0)
    return s_hat.mean(dim=0), s_hat.std(dim=0)


@torch.no_grad()
def posterior_mean_n2s(
    eps_fn: EpsFn,
    sde: VPSDE,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    sigma,
    t: int,
    t_ref: int | None = None,
    constant: str = "noise2score",
    max_batch: int | None = None,
) -> torch.Tensor:
    """E[s | y] from the score at y, deterministic: ŝ = y - k/τ_t · ε̂(√ᾱ_t y, t).

    y, mask: (B, L, F); sigma: (F,) (or scalar) observation-noise std in the units of y;
    t: one timestep, τ_t = √((1-ᾱ_t)/ᾱ_t) (diffusion_noise). No noise is added: the
    network sees √ᾱ_t y, which it reads as y plus diffusion noise τ_t, so -ε̂/τ_t is the
    score of p_y smoothed by N(0, τ_t²), evaluated at y (module docstring). Returns
    (B, L, F) float32, NaN at unobserved cells.

    constant: "noise2score", k = σ² (Tweedie for the observation noise, with the smoothed
    score in place of p_y's); "total_noise", k = σ² + τ_t² (Tweedie for the total noise,
    i.e. ``posterior_mean_renoised``'s constant without the re-noising). Both tend to E[s | y] as
    τ_t -> 0; on Gaussian windows "total_noise" is the less biased at a given τ_t, and
    amplifies ε̂ errors by (σ/τ + τ/σ) σ against σ/τ · σ (module docstring).

    t_ref: a second timestep (τ_ref != τ_t); the two estimates are extrapolated linearly
    in τ² to τ = 0 (Richardson), ŝ = (τ_ref² ŝ_t - τ_t² ŝ_ref) / (τ_ref² - τ_t²). That
    cancels the O(τ²) bias of smoothing the score, at the cost of two eps_fn calls.

    Both forms are deterministic maps of y (so SURE with a probe applies directly) and
    keep eps_fn's causality: ŝ at row l depends on y at row l and ε̂ at row l only.
    """
    t = _check_t(sde, t, "t")
    t_ref = None if t_ref is None else _check_t(sde, t_ref, "t_ref")
    if constant not in N2S_CONSTANTS:
        raise ValueError(f"unknown constant {constant!r}; choose one of {N2S_CONSTANTS}")
    y0, mask, sigma = _prepare_with_sigma(y, mask, sigma)
    var = sigma**2  # (F,) float64
    tau = diffusion_noise(sde).cpu()  # float64 from the float32 ᾱ the network was trained on

    def at(t_: int) -> tuple[torch.Tensor, float]:
        a = float(sde.alpha_bar(t_))
        eps_hat = _eps(eps_fn, math.sqrt(a) * y0, t_, mask, max_batch)  # (B, L, F)
        tau_t = float(tau[t_])
        k = var + tau_t**2 if constant == "total_noise" else var  # (F,)
        k = (k / tau_t).to(device=y0.device, dtype=torch.float32)
        # σ = 0 passes y through under "noise2score" only; "total_noise" still shrinks
        return y0 - k * eps_hat, tau_t

    if t_ref is not None and float(tau[t_ref]) == float(tau[t]):
        raise ValueError(f"t_ref must differ from t (both give tau = {float(tau[t]):.4g})")
    s_hat, tau_t = at(t)
    if t_ref is not None:
        s_ref, tau_r = at(t_ref)
        # weights sum to 1: where both ŝ equal y (σ = 0, "noise2score") so does the result
        w_t, w_r = tau_r**2 / (tau_r**2 - tau_t**2), -(tau_t**2) / (tau_r**2 - tau_t**2)
        s_hat = w_t * s_hat + w_r * s_ref
    return _nan_outside(s_hat, mask)


# ---------------------------------------------------------------- SDEdit


class SDEditResult(NamedTuple):
    mean: torch.Tensor  # (B, L, F) mean over samples; NaN where unobserved
    lower: torch.Tensor  # (B, L, F) quantiles[0] over samples
    upper: torch.Tensor  # (B, L, F) quantiles[1] over samples


def _guided_eps(
    sde: VPSDE,
    x_t: torch.Tensor,
    t: int,
    eps_hat: torch.Tensor,
    mask: torch.Tensor,
    *,
    weights: tuple[float, float],
    scale: float,
    cutoff: float,
) -> torch.Tensor:
    """ε̂ consistent with x̂0 moved by one gradient step on the smoothness penalty.

    The penalty is summed over pairs / cells rather than averaged (the loss functions'
    means times their counts), so a cell's gradient does not depend on the batch size or
    on other windows' masks: TV's is in {-2w, ..., 2w}; HF's is 2w × the high-passed x̂0.
    ``scale`` is thus a step in the units of y. The sampler's output is the last step's
    (moved) x̂0, so ``scale`` sets the final move; earlier moves carry over through the
    trajectory, so the total effect grows with the number of steps (DDPM from t_start
    guides more than a 10-step DDIM at the same scale).
    """
    w_tv, w_f = weights
    a = float(sde.alpha_bar(t))
    x0_hat = (x_t - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
    with torch.enable_grad():
        x0 = x0_hat.detach().requires_grad_(True)
        penalty = x0.new_zeros(())
        if w_tv:
            n_pairs = (mask[:, 1:] & mask[:, :-1]).sum()
            penalty = penalty + w_tv * total_variation(x0, mask) * n_pairs
        if w_f:
            penalty = penalty + w_f * high_frequency_energy(x0, cutoff, mask) * mask.sum()
        (grad,) = torch.autograd.grad(penalty, x0)
    x0_moved = x0_hat - scale * grad
    return (x_t - math.sqrt(a) * x0_moved) / math.sqrt(1 - a)


@torch.no_grad()
def sdedit(
    eps_fn: EpsFn,
    sde: VPSDE,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    t_start: int,
    steps: int | None = None,
    method: str = "ddpm",
    n_samples: int = 8,
    eta: float = 0.0,
    guidance: str | None = None,
    guidance_scale: float = 0.02,
    cutoff: float = 0.25,
    generator: torch.Generator | None = None,
    quantiles: Sequence[float] = (0.05, 0.95),
    max_batch: int | None = None,
) -> SDEditResult:
    """Diffuse y to t_start, reverse to t = 0 with ``n_samples`` samples; SDEditResult.

    method="ddpm": every ancestral step t_start, ..., 0 (``steps`` must be None).
    method="ddim": ``steps`` (None = t_start + 1, every step) timesteps from
    sde.ddim_timesteps(steps, t_start), with ``eta`` (0 = deterministic given the start).
    guidance: None, "tv", "fourier" or "balanced" with step ``guidance_scale`` (units of
    y) and ``cutoff`` (fraction of Nyquist, for "fourier"); NOT causal, see
    guidance_is_causal. quantiles: (lower, upper) levels for the band over samples.
    """
    t_start = _check_t(sde, t_start, "t_start")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "ddpm" and (steps is not None or eta != 0):
        raise ValueError(
            "method='ddpm' takes every step from t_start with its own noise; for fewer "
            "steps or eta use method='ddim' (eta=1 gives stochastic strided steps)"
        )
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    q_lo, q_hi = (float(q) for q in quantiles)
    if not 0 <= q_lo <= q_hi <= 1:
        raise ValueError(
            f"quantiles must be (lower, upper) with 0 <= lower <= upper <= 1, got {quantiles}"
        )
    guidance_is_causal(guidance)  # validates the name
    weights = STRATEGY_WEIGHTS[guidance] if guidance not in (None, "none") else None

    y0, mask = _prepare(y, mask)
    B, L, F = y0.shape
    N = n_samples * B
    masks = mask.expand(n_samples, B, L, F).reshape(N, L, F)

    if method == "ddpm":
        ts = list(range(t_start, -1, -1))
    else:
        ts = sde.ddim_timesteps(t_start + 1 if steps is None else steps, t_start).tolist()
    prevs = ts[1:] + [-1]

    a = float(sde.alpha_bar(t_start))
    eps = _randn((n_samples, B, L, F), y0, generator)  # all samples first: independent of y
    x = (math.sqrt(a) * y0 + math.sqrt(1 - a) * eps).reshape(N, L, F)  # x_{t_start}
    for t, t_prev in zip(ts, prevs):
        eps_hat = _eps(eps_fn, x, t, masks, max_batch)  # (N, L, F)
        if weights is not None:
            eps_hat = _guided_eps(
                sde, x, t, eps_hat, masks, weights=weights, scale=guidance_scale, cutoff=cutoff
            )
        t_b = torch.full((N,), t, dtype=torch.long, device=x.device)
        if method == "ddpm":
            x = sde.denoise_step(x, t_b, eps_hat, generator=generator)
        else:
            x = sde.ddim_step(x, t_b, t_prev, eps_hat, eta=eta, generator=generator)

    samples = x.reshape(n_samples, B, L, F)
    return SDEditResult(
        mean=_nan_outside(samples.mean(dim=0), mask),
        lower=_nan_outside(_quantile(samples, q_lo), mask),
        upper=_nan_outside(_quantile(samples, q_hi), mask),
    )
