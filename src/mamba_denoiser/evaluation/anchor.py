"""The anchor row of every quality table: the best classical causal filter per feature,
chosen exactly as the denoiser chooses its candidates.

Per feature: raw, or the causal output of one of the classical baselines, whichever has
the best SURE gain on the validation rows above the margin; a white y (Ljung-Box on the
train rows) stays raw, as in the denoiser. Every baseline is linear in y given its fitted
parameters, so its divergence ∂out_t/∂y_t is its exact weight on the current observation
(BaselineOutput.causal_gain) and SURE is exact. σ is the same per feature as the
denoiser's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mamba_denoiser.inference.gate import choose_by_risk, gain_db, mean_and_se, sure_terms


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
) -> Anchor:
    names = list(baselines)
    g = slice(*rows)
    risk = np.array(
        [
            mean_and_se(
                sure_terms(raw[g], baselines[b].causal[g], baselines[b].causal_gain[g], sigma),
                n_boot=1,
            )[0]
            for b in names
        ]
    )
    risk = risk.reshape(len(names), raw.shape[1])
    risk[:, np.asarray(white, bool)] = np.nan
    pick = choose_by_risk(risk, sigma, margin_db)  # as the denoiser's gate ranks SURE
    gains = gain_db(risk, sigma)  # NaN where SURE is not positive: never shown as a gain
    out = raw.copy()
    for j, k in enumerate(pick):
        if k >= 0:
            col = baselines[names[k]].causal[:, j]
            ok = np.isfinite(col)
            out[ok, j] = col[ok]
    choice = [names[k] if k >= 0 else "raw" for k in pick]
    return Anchor(out, choice, {b: gains[i] for i, b in enumerate(names)})
