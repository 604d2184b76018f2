"""Live use: ``Denoiser.update`` one new row at a time against ``transform`` of the grown
panel (api.py), on the built-in panel (85 features, 7 clusters): time per new row and the
largest difference between the streamed and the batch values (goal: none).

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
    t0 = time.perf_counter()
    streamed = pd.concat([live.update(frame.iloc[n + i : n + i + 1]) for i in range(args.days)])
    per_row = (time.perf_counter() - t0) / args.days
    classical.clear_cache()  # no memo hits from the updates: a cold batch run
    t0 = time.perf_counter()
    batch = live.transform(frame)  # the held decisions over the grown panel
    t_batch = time.perf_counter() - t0
    diff = max(
        np.nanmax(np.abs(streamed[f].to_numpy() - batch[f].to_numpy()[n:]), initial=0.0)
        for f in live.features
    )
    print(f"{len(live.features)} features, {len(live.models)} clusters, {n} history rows")
    print(f"  first transform (fits the decisions): {t_first:.1f} s")
    print(
        f"  update: {per_row * 1e3:.0f} ms per new row vs transform of the grown panel "
        f"{t_batch:.1f} s ({t_batch / per_row:.0f}x)"
    )
    print(f"  largest |streamed - batch|: {diff:.3g} (bit-identical: {diff == 0})")


if __name__ == "__main__":
    main()
