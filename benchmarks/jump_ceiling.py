"""How far a Gaussian-sum filter can go on the x5 jumps panel: an analysis ceiling for the
"+1 dB over the best classical filter" goal of the jumps scenario, not a method.

For every feature of the four jump families, the robust filter (robust.py) with the
train-fitted state-space model and, in place of its fitted law, each point of a grid of
jump laws (δ, k_j), shared by the family; per family the point with the best mean gain on
the TEST rows (tuned on the rows it is scored on, with the clean signal: an optimistic
ceiling of the filter family, which no method may use). Printed beside it: the Kalman
filter and the robust filter with its fitted law, on the same rows, so the planted-panel
report's numbers can be read against the ceiling.

    python benchmarks/jump_ceiling.py [--seed 0] [--noise-scale 5]

Measured (2026-12-07, seed 0, x5; test rows), mean test-row SNR gain in dB:

    family        kalman  robust (fitted law)  best law on the grid (δ, k_j)
    ou_fast       1.88    4.75                 5.78 (0.02, 20)
    ou_slow       1.89    4.98                 5.00 (0.01, 30)
    random_walk   1.52    2.89                 2.89 (0.03, 10)
    trend         1.38    2.03                 2.13 (0.01, 10)

The report's predictive head alone: 5.39 / 4.97 / 2.86 / 2.03. The goal (+1 dB over the
robust filter: 5.75 / 5.98) asks on ou_slow for 0.98 dB more than any law on the grid
gives even when chosen on the test rows. About 45 s on one core.

Found with it: on ou_fast the fitted laws give 1 dB less than the best shared law. Two of
twelve features (S1, S4) got the Gaussian family (the held-out paired risk that chooses
the family did not separate them, its AR(1) target amplifying the noise by 1/φ ≈ 2), and
most others δ = 0.05 where 0.02 is planted (the likelihood within a family is not the
signal's error). The mix is not hurt there (it serves the predictive head, 5.40).
"""

from __future__ import annotations

import argparse

import numpy as np

from mamba_denoiser.classical import state_space_fits
from mamba_denoiser.data.panel import SplitSpec
from mamba_denoiser.data.synthetic import make_synthetic_panel
from mamba_denoiser.evaluation.metrics import snr_gain_db
from mamba_denoiser.robust import NoiseLaw, fit_robust, robust_filter
from mamba_denoiser.vocabulary import WINDOW_SIZE

FAMILIES = ("ou_fast", "ou_slow", "random_walk", "trend")
JUMP = (0.01, 0.02, 0.03, 0.05)
RATIO = (3, 5, 7, 10, 15, 20, 30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-scale", type=float, default=5.0)
    args = ap.parse_args()
    p = make_synthetic_panel(seed=args.seed, noise_scale=args.noise_scale, noise_dist="jumps")
    feats = [f for f, fam in p.process.items() if fam in FAMILIES]
    fam = np.array([p.process[f] for f in feats])
    raw, clean = p.frame[feats].to_numpy(float), p.clean[feats].to_numpy(float)
    b = SplitSpec(embargo=WINDOW_SIZE).bounds(len(raw))  # the reports' split (embargo: one window)
    test = slice(*b["test"])
    fits = state_space_fits(raw, b["train"])
    _, laws = fit_robust(raw, b["train"])
    rows = {
        "kalman": snr_gain_db(
            raw, robust_filter(raw, fits, [NoiseLaw(0.0, 1.0)] * len(feats)), clean, rows=test
        ),
        "robust (fitted law)": snr_gain_db(raw, robust_filter(raw, fits, laws), clean, rows=test),
    }
    best: dict[str, tuple[float, float, float]] = {}
    for d in JUMP:
        for k in RATIO:
            law = NoiseLaw(0.0, 1.0, d, float(k))
            g = snr_gain_db(raw, robust_filter(raw, fits, [law] * len(feats)), clean, rows=test)
            for f in FAMILIES:
                m = float(g[fam == f].mean())
                if m > best.get(f, (-np.inf,))[0]:
                    best[f] = (m, d, k)
    print(
        f"seed {args.seed}, x{args.noise_scale:g} jumps, test rows {b['test']}: mean SNR gain (dB)"
    )
    print(
        f"{'family':<12} {'kalman':>7} {'robust (fitted law)':>20}"
        f" {'best law on the grid (δ, k_j)':>31}"
    )
    for f in FAMILIES:
        m, d, k = best[f]
        k_, r_ = rows["kalman"][fam == f].mean(), rows["robust (fitted law)"][fam == f].mean()
        print(f"{f:<12} {k_:>7.2f} {r_:>20.2f} {m:>22.2f} ({d:g}, {k:g})")


if __name__ == "__main__":
    main()
