"""Clustering benchmark on the built-in synthetic panel: speed and recovery of the truth.

    python benchmarks/cluster.py                 # default panel (9000 rows, seed 0)
    python benchmarks/cluster.py --seeds 0 1 2   # several panels

For each seed: generate the panel, validate it and split it chronologically (the same
``panel_from_frame`` the pipeline uses: train 0.70 / val 0.15 / test 0.15, 60-row
embargo), compute the 11 statistics on the observed TRAIN values of the continuous
features, choose K and cluster. Prints the time of each step, the chosen K, the adjusted
Rand index against the planted process families and, per cluster, its type next to the
type expected for the planted family that dominates it. Target: < 60 s in total on
2 CPU cores, K = 7, ARI >= 0.8, every type as expected.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from sklearn.metrics import adjusted_rand_score

from mamba_denoiser.clustering.grouping import cluster_features
from mamba_denoiser.clustering.stats import compute_feature_stats
from mamba_denoiser.data.panel import SplitSpec, panel_from_frame
from mamba_denoiser.data.synthetic import make_synthetic_panel


def run(n_rows: int, seed: int, criterion: str) -> bool:
    t0 = time.perf_counter()
    sp = make_synthetic_panel(n_rows=n_rows, seed=seed)
    t1 = time.perf_counter()
    panel = panel_from_frame(
        sp.frame,
        source=f"synthetic(n={n_rows}, seed={seed})",
        split=SplitSpec(train=0.70, val=0.15, test=0.15, embargo=60),
    )
    series = {f: panel.observed(f, "train") for f in panel.continuous}
    t2 = time.perf_counter()
    stats = compute_feature_stats(series)
    t3 = time.perf_counter()
    res = cluster_features(stats, criterion=criterion, seed=0)
    t4 = time.perf_counter()

    truth = [sp.process[f] for f in stats.index]
    ari = adjusted_rand_score(truth, res.labels)
    shape = f"{sp.frame.shape[0]}x{len(sp.feature_columns)}"
    print(
        f"== seed {seed}: panel {shape}, {len(series)} continuous features clustered, "
        f"{len(panel.passthrough)} passthrough"
    )
    print(f"generate panel     {t1 - t0:7.2f} s")
    print(f"validate + split   {t2 - t1:7.2f} s")
    print(f"11 statistics      {t3 - t2:7.2f} s")
    print(f"choose K + k-means {t4 - t3:7.2f} s   ({criterion}, K in 2..12, n_init=20)")
    print(f"total              {t4 - t0:7.2f} s")
    curve = ", ".join(f"{r['k']}:{r['silhouette']:.3f}" for r in res.selection)
    print(f"chosen K = {res.k}   ARI vs planted families = {ari:.3f}")
    print(f"silhouette by K: {curve}")
    print(
        f"{'cluster':>7}  {'n':>3}  {'type':<15} {'strategy':<9} {'planted (count)':<28} "
        f"{'expected':<15} ok"
    )
    all_ok = True
    for c, members in res.members().items():
        counts = Counter(sp.process[f] for f in members)
        family, count = counts.most_common(1)[0]
        expected = sp.expected_type[family]
        ok = expected == res.types[c]
        all_ok &= ok
        planted = ", ".join(f"{p} ({n})" for p, n in counts.most_common())
        print(
            f"{c:>7}  {len(members):>3}  {res.types[c]:<15} {res.strategies[c]:<9} "
            f"{planted:<28} {expected:<15} {'yes' if ok else 'NO'}"
        )
    return all_ok and res.k == 7 and ari >= 0.8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=9000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--criterion", default="silhouette", choices=["silhouette", "elbow", "gap"])
    args = ap.parse_args(argv)
    results = [run(args.rows, s, args.criterion) for s in args.seeds]
    print(
        "targets met (K = 7, ARI >= 0.8, types) for seeds:",
        [s for s, ok in zip(args.seeds, results) if ok],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
