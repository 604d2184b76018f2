"""Live use: ``Denoiser.update`` one new row at a time against ``transform`` of the grown
panel (api.py), on the built-in panel (85 features, 7 clusters): time per new row (after
the first update, which opens each cluster's live steps on the history), and the
largest difference between the streamed and the batch values, in units of each feature's
noise σ, apart for the features served by a classical filter (goal ≤ 1e-9) and by a
learned head (goal ≤ 1e-5). Both are bit-identical by design (docs/design.md, "Live
serving"); the classical filters and the combiner's sums continue from their held state
(inference/stream.py: recursion.Stepper, combiner.CombinerStream), and a network serves
the new row's window in the batch runs' own call size (inference/plan.BATCH_WINDOWS).

    python benchmarks/streaming.py [--checkpoints SWEEP] [--days 20]

Needs a trained sweep (``make run`` leaves one; default: the newest under outputs/).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from mamba_denoiser import Denoiser, classical
from mamba_denoiser.data.source import synthetic_csv_path

LEARNED = ("diffusion", "sdedit", "predictive")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--days", type=int, default=20)
    args = ap.parse_args()
    frame = pd.read_csv(synthetic_csv_path("outputs/data/synthetic_n9000_seed0.csv"))
    n = len(frame) - args.days
    live = Denoiser.from_run(args.checkpoints)
    t0 = time.perf_counter()
    live.transform(frame.iloc[:n])
    t_first = time.perf_counter() - t0
    days, times = [], []
    for i in range(args.days):  # the first opens the live steps on the history (O(T) once)
        t0 = time.perf_counter()
        days.append(live.update(frame.iloc[n + i : n + i + 1]))
        times.append(time.perf_counter() - t0)
    streamed = pd.concat(days)
    t_open, steady = times[0], np.array(times[1:])
    per_row = float(steady.mean())
    classical.clear_cache()  # no memo hits from the updates: a cold batch run
    t0 = time.perf_counter()
    batch = live.transform(frame)  # the held decisions over the grown panel
    t_batch = time.perf_counter() - t0
    served = {}  # feature -> (candidate family, σ)
    for cid, m in live.models.items():
        dec = live._decisions[cid]
        for f, name, sig in zip(m.features, dec["choice"], dec["sigma"]):
            served[f] = ((name or "raw").split("@")[0], sig)
    gap = {"classical": 0.0, "learned": 0.0, "raw": 0.0}
    for f, (fam, sig) in served.items():
        d = np.abs(streamed[f].to_numpy() - batch[f].to_numpy()[n:])
        kind = "learned" if fam in LEARNED else "raw" if fam == "raw" else "classical"
        if np.isfinite(d).any():
            gap[kind] = max(gap[kind], float(np.nanmax(d)) / (sig or 1.0))
    counts = pd.Series([fam for fam, _ in served.values()]).value_counts()
    print(f"{len(live.features)} features, {len(live.models)} clusters, {n} history rows")
    print("  served by: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"  first transform (fits the decisions): {t_first:.1f} s")
    print(f"  first update (opens the live steps on the history): {t_open * 1e3:.0f} ms")
    print(
        f"  update: {per_row * 1e3:.1f} ms per new row (median {np.median(steady) * 1e3:.1f}, "
        f"max {steady.max() * 1e3:.1f}) vs transform of the grown panel "
        f"{t_batch:.1f} s ({t_batch / per_row:.0f}x)"
    )
    for kind, v in gap.items():
        print(f"  largest |streamed - batch| / σ, {kind} features: {v:.3g}")


if __name__ == "__main__":
    main()
