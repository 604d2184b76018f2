"""Noise σ per planted family on the built-in synthetic panel: moment estimator vs noise_sigma.

For every continuous feature of ``make_synthetic_panel`` (85), σ̂ / σ_true from the train
rows only (the first ``--train-frac`` of rows), for the moment estimator
(``diffusion.noise.estimate_noise``, method "auto") and for the shared policy
``classical.noise_sigma`` (and its state-space candidate alone); prints, per planted
family and noise scale, the median and the range of the ratio, how often the moment
estimate was clipped, which source noise_sigma used, and the wall time of noise_sigma
over all features (cold cache, then cached).

    python benchmarks/noise_sigma.py                       # noise_scale 1 and 5
    python benchmarks/noise_sigma.py --scales 1 3 10 --rows 4000 --tolerance 1.25
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

import numpy as np

from mamba_denoiser.classical import clear_cache, noise_sigma
from mamba_denoiser.data.synthetic import make_synthetic_panel
from mamba_denoiser.diffusion.noise import estimate_noise


def _measure(
    n_rows: int, seed: int, noise_scale: float, train_frac: float, tolerance: float
) -> dict:
    panel = make_synthetic_panel(n_rows=n_rows, seed=seed, noise_scale=noise_scale)
    train = (0, int(train_frac * n_rows))
    cols = panel.continuous_columns
    ys = {c: panel.frame[c].to_numpy(dtype=np.float64) for c in cols}
    clear_cache()  # cold: every state-space fit is done here
    t0 = time.perf_counter()
    choices = {c: noise_sigma(ys[c], train, tolerance=tolerance) for c in cols}
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cols:  # warm: what a re-run of the pipeline on the same train rows costs
        noise_sigma(ys[c], train, tolerance=tolerance)
    warm = time.perf_counter() - t0
    rows = defaultdict(
        lambda: {"moment": [], "state_space": [], "policy": [], "clipped": 0, "sources": Counter()}
    )
    for c in cols:
        fam, truth = panel.process[c], panel.noise_std[c]
        moment = estimate_noise(ys[c][train[0] : train[1]])
        r = rows[fam]
        r["moment"].append(moment.sigma / truth)
        r["state_space"].append(choices[c].state_space_sigma / truth)
        r["policy"].append(choices[c].sigma / truth)
        r["clipped"] += int(moment.clipped)
        r["sources"][choices[c].source.split(":")[0] + ("+white" if choices[c].white else "")] += 1
    return {"rows": rows, "cold": cold, "warm": warm, "n": len(cols)}


def _fmt(ratios: list[float]) -> str:
    a = np.asarray(ratios, dtype=np.float64)
    if not np.isfinite(a).any():
        return f"{'nan':>5} [  nan,  nan]"
    return f"{np.nanmedian(a):5.2f} [{np.nanmin(a):5.2f},{np.nanmax(a):5.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=9000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--train-frac", type=float, default=0.6)
    ap.add_argument("--tolerance", type=float, default=2.0, help="noise_sigma's tolerance")
    args = ap.parse_args()
    for scale in args.scales:
        res = _measure(args.rows, args.seed, scale, args.train_frac, args.tolerance)
        print(
            f"\nnoise_scale={scale:g}  ({args.rows} rows, train = first {args.train_frac:.0%}, "
            f"tolerance {args.tolerance:g})"
        )
        print("σ̂/σ_true: median [min, max]")
        head = (
            f"{'family':<13}{'n':>3}  {'moment':<20}{'clip':>4}  {'state space':<20}"
            f"{'noise_sigma':<20}sources (+white: Ljung-Box white)"
        )
        print(head)
        print("-" * len(head))
        for fam, r in res["rows"].items():
            src = ", ".join(f"{k} {v}" for k, v in sorted(r["sources"].items()))
            print(
                f"{fam:<13}{len(r['moment']):>3}  {_fmt(r['moment']):<20}{r['clipped']:>4}  "
                f"{_fmt(r['state_space']):<20}{_fmt(r['policy']):<20}{src}"
            )
        print(
            f"noise_sigma wall time over {res['n']} features: {res['cold']:.1f} s cold, "
            f"{res['warm']:.2f} s cached"
        )


if __name__ == "__main__":
    main()
