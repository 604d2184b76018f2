"""The steady state of a linear Gaussian filter, x_t = F x_{t-1} + w (Q), y_t = H x_t + v (R).

Its one-step prediction covariance P solves the discrete algebraic Riccati equation
(scipy), checked to be a fixed point of the recursion; where scipy fails or its answer is
not one (a singular Q, a state the observations do not reach), the recursion itself is
iterated from P0 to convergence. evaluation/headroom.py (the planted panel's exact
filters) and inference/spread.py (each feature's fitted filter) both use it.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_discrete_are


def riccati_step(P, F, Q, H, R):
    """One step from the prediction covariance P: (the next prediction covariance, the
    filtered covariance after observing y_t)."""
    S = H @ P @ H.T + R
    K = P @ H.T @ np.linalg.inv(S)
    Pf = P - K @ H @ P
    return F @ Pf @ F.T + Q, Pf


def steady_prediction_cov(F, Q, H, R, P0) -> np.ndarray:
    """(n, n) the steady-state one-step prediction covariance (module docstring)."""
    try:
        P = solve_discrete_are(F.T, H.T, Q, R)
        nxt, _ = riccati_step(P, F, Q, H, R)
        if np.allclose(nxt, P, rtol=1e-7, atol=1e-10 * np.abs(P).max()):
            return P
    except (np.linalg.LinAlgError, ValueError):
        pass
    P = np.array(P0, dtype=np.float64)
    for _ in range(200_000):
        nxt, _ = riccati_step(P, F, Q, H, R)
        if np.allclose(nxt, P, rtol=1e-12, atol=0.0):
            return nxt
        P = nxt
    raise RuntimeError("the Riccati recursion did not converge")
