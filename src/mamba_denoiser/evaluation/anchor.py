"""The anchor row of every quality table: the best classical causal filter per feature,
chosen exactly as the denoiser chooses its candidates (inference/gate.py).

Per feature: raw, or the causal output of one of the classical baselines, or of the robust
Gaussian-sum filter (robust.py), whichever the gate ranks best on the validation rows
above the margin; a white y (Ljung-Box on the train rows) stays raw, as in the denoiser.
Every baseline is linear in y given its fitted parameters, so its divergence ∂out_t/∂y_t
is its exact weight on the current observation (BaselineOutput.causal_gain) and SURE is
exact; the robust filter is not linear, and is scored like the denoiser's nonlinear
candidates: by SURE with its exact divergence where the feature's noise law is Gaussian,
else by the paired future-target risk against the best linear one. σ is the same per
feature as the denoiser's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mamba_denoiser.inference.gate import gate


@dataclass
class Anchor:
    output: np.ndarray  # (T, F)
    choice: list[str]  # per feature: a baseline name or "raw"
    gains: dict[str, np.ndarray]  # baseline -> (F,) SURE gain on the validation rows, dB


def best_classical(
    raw: np.ndarray,  # (T, F)
    baselines: dict,  # name -> BaselineOutput (causal, causal_gain)
    *,
    sigma: np.ndarray,  # (F,) native units
    white: np.ndarray,  # (F,) bool: pass through
    rows: tuple[int, int],  # validation rows
    margin_db: float = 0.1,
    nonlinear: dict[str, np.ndarray] | None = None,  # name -> (T, F) causal output
    target: np.ndarray | None = None,  # (T, F) future target of the paired score
    groups: np.ndarray | None = None,  # (F,) cluster ids: paired scores pooled within each
    nonlinear_div: dict[str, np.ndarray] | None = None,  # name -> (T, F) exact ∂out/∂y
    gaussian: np.ndarray | None = None,  # (F,) bool: Gaussian noise law (SURE for all)
) -> Anchor:
    nonlinear, nonlinear_div = nonlinear or {}, nonlinear_div or {}
    names = [*baselines, *nonlinear]
    outs = [baselines[b].causal for b in baselines] + list(nonlinear.values())
    gains = [baselines[b].causal_gain for b in baselines]
    divs = gains + [nonlinear_div.get(n) for n in nonlinear]
    # a baseline without its exact gain is scored like a nonlinear one (the paired score)
    linear = [d is not None for d in gains] + [False] * len(nonlinear)
    g = slice(*rows)
    u = np.full(raw.shape, np.nan)
    if target is not None:  # only the targets the validation rows alone give
        u[: rows[1]] = target[: rows[1]]
    res = gate(
        raw[g],
        sigma,
        [o[g] for o in outs],
        [None if d is None else d[g] for d in divs],
        linear,
        u[g],
        margin_db=margin_db,
        usable=~np.asarray(white, bool) & np.isfinite(sigma) & (np.asarray(sigma) > 0),
        groups=groups,
        gaussian=gaussian,
    )
    out = raw.copy()
    for j, k in enumerate(res.choice):
        if k >= 0:
            col = outs[k][:, j]
            ok = np.isfinite(col)
            out[ok, j] = col[ok]
    choice = [names[k] if k >= 0 else "raw" for k in res.choice]
    gains = res.gain  # NaN where the risk estimate is not positive: never shown as a gain
    return Anchor(out, choice, {b: gains[i] for i, b in enumerate(names)})
