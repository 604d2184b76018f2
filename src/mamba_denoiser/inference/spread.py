"""How much a realised gain moves from one block of rows to the next: the spread the gate's
lower prediction bound needs for the new block (inference/gate.py ``GateResult.lower``).

A gain realised on N rows is 10·log10(mean n²/mean e²), n the noise and e = d - s the
denoiser's error. Its log is the mean of a_t = n_t²/σ² - e_t²/MSE (delta method), whose
variance, for a linear filter of a stationary state-space model with noise of excess
kurtosis κ (κ4/σ⁴) and process innovations η of excess kurtosis κ_η, e_t = Σ_k c_k n_{t-k}
+ Σ_k a_k η_{t-k}, is

    N · Var(ln ratio) = 4 (S_e - q) + (κ + κ_η) (1 - q)²,
    S_e = Σ_{k>=0} ρ_e(k)²   (ρ_e the error's autocorrelation),
    q = σ² Σ_k c_k² / MSE    (the share of the error that is passed-through noise),

from Cov(X², Y²) = 2 Cov(X, Y)² + κ4 Σ α_j² β_j² for linear forms of independent noise
(Isserlis plus the fourth cumulant; summed over all lags, each source's term is κ times
the square of its share of the error, and 1 − q is the process's). Leaving y alone (e = n:
S_e = q = 1) has no spread;
a filter whose error is persistent (S_e large) has much. The errors of the feature's
steady-state Kalman filter stand for any candidate's: the spread is a property of how
persistent a good filter's error is, which the candidates share far more than their
levels. Measured on the built-in default noise before this was used: the realised gains
of 64 features moved by 0.18 dB (sd) between the validation and the test rows, where the
SURE standard errors, taken as the new block's spread too, allowed 0.04-0.09 dB; for
the AR(1) at a 1.4 dB gain the formula gives 0.13 dB per block, 0.18 for the pair.

κ and κ_η come from the feature's robust noise law (robust.py, fitted on the train rows;
0 where the law is Gaussian): a two-component law (1 - ε) N(0, σ_c²) + ε N(0, k²σ_c²) has
κ = 3 ((1 - ε) + ε k⁴) / ((1 - ε) + ε k²)² - 3, and jumps in the signal (a row's process
innovation k_j times wider with weight δ) κ_η by the same formula in (δ, k_j). A jump law
matters most: at δ = 0.05, k_j = 10, κ_η ≈ 40, so a block's gain rests on the few jumps in
it (seed 1, ×5 jumps: without this term 14 of 71 changed features fell short of their
bounds, trends by up to 1.4 dB).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_discrete_lyapunov

from mamba_denoiser.recursion import state_space_form
from mamba_denoiser.riccati import steady_prediction_cov


def _mixture_kurtosis(w: float, ratio: float) -> float:
    """κ of (1 − w) N(0, 1) + w N(0, ratio²)."""
    if w <= 0:
        return 0.0
    k2 = float(ratio) ** 2
    return 3 * ((1 - w) + w * k2**2) / ((1 - w) + w * k2) ** 2 - 3


def excess_kurtosis(law) -> float:
    """κ of a robust.NoiseLaw's noise (0 for None or the Gaussian law)."""
    return 0.0 if law is None else _mixture_kurtosis(float(law.eps), law.ratio)


def jump_kurtosis(law) -> float:
    """κ_η of the process innovations under a robust.NoiseLaw's jumps (0 without jumps)."""
    return 0.0 if law is None else _mixture_kurtosis(float(law.jump), law.jump_ratio)


def _sum_squares(A: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """Σ_{k>=0} (u' A^k v)², by (I - A⊗A)^-1 (A stable)."""
    AA = np.kron(A, A)
    x = np.linalg.solve(np.eye(len(AA)) - AA, np.kron(v, v))
    return float(np.kron(u, u) @ x)


def row_spread(fit, law=None) -> float:
    """N · Var of the log gain ratio realised on N rows (module docstring), for the
    feature's classical.StateSpaceFit ``fit``; NaN where it cannot be formed (no fit, a
    noiseless or unstable filter)."""
    if fit is None:
        return float("nan")
    F, q, P0 = state_space_form(fit)
    r = float(fit.params.get("noise_var", np.nan))
    if not (np.isfinite(r) and r > 0 and np.isfinite(q)):
        return float("nan")
    Z = np.array([1.0, 0.0])
    try:
        P = steady_prediction_cov(F, np.diag([q, 0.0]), Z[None], np.array([[r]]), P0)
    except RuntimeError:  # the recursion did not settle
        return float("nan")
    K = P[:, 0] / (P[0, 0] + r)  # the steady-state Kalman gain
    A = (np.eye(2) - np.outer(K, Z)) @ F  # the filtered error's transition
    if not np.all(np.abs(np.linalg.eigvals(A)) < 1 - 1e-9):
        return float("nan")
    B_eta = (np.eye(2) - np.outer(K, Z)) @ Z  # the process noise enters state 0
    # stationary error covariance Σ = A Σ A' + q B_η B_η' + r K K'
    Sigma = solve_discrete_lyapunov(A, q * np.outer(B_eta, B_eta) + r * np.outer(K, K))
    mse = float(Sigma[0, 0])
    if not mse > 0:
        return float("nan")
    s_e = _sum_squares(A, Z, Sigma @ Z) / mse**2  # Σ_k ρ_e(k)², ρ_e(k) = Z A^k Σ Z' / MSE
    share = r * _sum_squares(A, Z, K) / mse  # σ² Σ_k c_k² / MSE, c_k = -Z A^k K
    kappa = max(excess_kurtosis(law), 0.0) + max(jump_kurtosis(law), 0.0)
    return float(max(4 * (s_e - share), 0.0) + kappa * (1 - share) ** 2)
