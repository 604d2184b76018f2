"""Coverage of ``Denoiser.intervals`` on the built-in panel: the share of test cells whose
clean value lies inside the band, overall and per (planted family, chosen candidate), for
the Kalman candidate alone and for every candidate (goal: the stated level).

    python benchmarks/interval_coverage.py [--checkpoints SWEEP] [--level 0.9]

Needs a trained sweep on the default built-in panel (``make run`` leaves one; default: the
newest under outputs/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mamba_denoiser import Denoiser
from mamba_denoiser.classical import set_fit_cache

DATA = Path("outputs/data/synthetic_n9000_seed0")


def coverage(den: Denoiser, frame, clean, process, level: float) -> dict:
    den.transform(frame)
    lo, hi = den.intervals(frame, level=level)
    rows = slice(den.bounds["test"][0], None)
    chosen = {
        f: (c or "raw").split("@")[0]
        for cid, d in den._decisions.items()
        for f, c in zip(den.models[cid].features, d["choice"])
    }
    by: dict[tuple[str, str], list[int]] = {}
    for f in den.features:
        a, b, s = (t[f].to_numpy()[rows] for t in (lo, hi, clean))
        ok = np.isfinite(a) & np.isfinite(s)
        if ok.any():
            c = by.setdefault((process.get(f, "?"), chosen[f]), [0, 0])
            c[0] += int(((s[ok] >= a[ok]) & (s[ok] <= b[ok])).sum())
            c[1] += int(ok.sum())
    return by


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--level", type=float, default=0.9)
    args = ap.parse_args()
    set_fit_cache(Path("outputs/cache/fits"))  # the stages' fits, as make run left them
    frame = pd.read_csv(f"{DATA}.csv")
    clean = pd.read_csv(f"{DATA}_clean.csv")
    process = json.loads(Path(f"{DATA}_truth.json").read_text())["process"]
    for cands in (["kalman"], None):
        den = Denoiser.from_run(args.checkpoints, candidates=cands)
        by = coverage(den, frame, clean, process, args.level)
        hit, n = (sum(v[i] for v in by.values()) for i in (0, 1))
        print(f"candidates={cands or 'all'}: {args.level:.0%} bands cover {hit / n:.3f} of {n}")
        for (fam, cand), (h, m) in sorted(by.items()):
            print(f"  {fam:14s} {cand:12s} {h / m:.3f}  ({m} cells)")


if __name__ == "__main__":
    main()
