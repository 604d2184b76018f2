"""How many principal components of the panel's past the look-ahead statistic's linear
innovations need (evaluation/leakage.py ``cross_section``, ``CROSS_K``): the honest
combiner alone (a linear filter that pools its cluster) and the per-feature Kalman filter
alone, each fitted on the train rows, and the combiner with a 2 % one-row look-ahead
mixed in (the statistic's power), for each (k, lags) setting. Threshold: 5.

    python benchmarks/lookahead_components.py [--csv PANEL.csv] [--clusters clusters.json]
        [--settings 0:0,10:5,20:5,half:5]

The panel and clusters of seed 1 (the design seed), x5 factors, the defaults:
    python cluster.py data.noise_scale=5 data.noise_dist=factors data.seed=1
Measured there (2026-12-07), pooled |z| (largest feature): none 20.9 (8.25), k = 10 5.80
(5.21), 20 4.55 (5.34), F // 2 2.67 (3.77); the Kalman filter 0.02 throughout; the leak
at pooled >= 25. A classical-only run: about 2 minutes a setting on one core.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mamba_denoiser.classical import kalman_filters, state_space_fits
from mamba_denoiser.combiner import apply_combiner, fit_combiner
from mamba_denoiser.data.source import panel_from_config
from mamba_denoiser.evaluation import leakage
from mamba_denoiser.inference import plan_noise

TARGETS = ["forward_returns", "risk_free_rate", "market_forward_excess_returns"]


def alone_outputs(raw, names, clusters, train):
    """The combiner alone and the Kalman filter alone, raw where not served (as
    inference/cluster.py's alone outputs: unusable or white features stay raw)."""
    comb, kal = raw.copy(), raw.copy()
    for c in clusters:
        cols = [names.index(f) for f in c["features"]]
        rc = raw[:, cols]
        p = plan_noise(rc, train)
        usable = np.isfinite(p.sigma) & (p.sigma > 0) & ~np.asarray(p.white, bool)
        out, _ = apply_combiner(fit_combiner(rc, train), rc)
        K, _ = kalman_filters(state_space_fits(rc, train), rc)
        for i, j in enumerate(cols):
            for o, src in ((comb, out), (kal, K)):
                s = np.isfinite(src[:, i]) & usable[i]
                o[s, j] = src[s, i]
    return comb, kal


def _newest_clusters(csv: str) -> str | None:
    """The newest outputs/cluster/*/clusters.json whose recorded source is ``csv``."""
    want = str(Path(csv).resolve())
    for path in sorted(Path("outputs/cluster").glob("*/clusters.json"), reverse=True):
        src = json.loads(path.read_text()).get("source") or {}
        if src.get("path") and str(Path(src["path"]).resolve()) == want:
            return str(path)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", default="outputs/data/synthetic_n9000_seed1_noise5_factors.csv")
    ap.add_argument("--clusters", default=None, help="default: the newest made from --csv")
    ap.add_argument("--settings", default="0:0,10:5,20:5,half:5")
    args = ap.parse_args()
    clusters = args.clusters or _newest_clusters(args.csv)
    if clusters is None:  # nothing to measure yet (make bench runs every script bare)
        print(f"no clusters.json made from {args.csv}: run the cluster.py line of the doc")
        return
    doc = json.load(open(clusters))
    panel = panel_from_config(
        {
            "kind": "csv",
            "path": args.csv,
            "id_col": "date_id",
            "targets": TARGETS,
            "window_size": 60,
            "split": {"train": 0.7, "val": 0.15, "test": 0.15, "embargo": 60},
        }
    )
    train = panel.bounds["train"]
    if list(train) != doc["source"]["split"]["bounds"]["train"]:
        raise SystemExit(f"{clusters}: made with other split bounds than {train}")
    names = [f for c in doc["clusters"] for f in c["features"]]
    raw = panel.frame[names].to_numpy(dtype=np.float64)
    comb, kal = alone_outputs(raw, names, doc["clusters"], train)
    leak = leakage.inject_lookahead(comb, raw, 0.02)
    print(f"{raw.shape[1]} features, {len(doc['clusters'])} clusters, train {train}")
    for item in args.settings.split(","):
        k, lags = item.split(":")
        k = None if k == "half" else int(k)
        t0 = time.perf_counter()
        cross = None if k == 0 else leakage.cross_section(raw, train, k=k, lags=int(lags))
        innov = leakage.linear_innovations(raw, cross)
        dt = time.perf_counter() - t0
        parts = []
        for name, arr in (("combiner", comb), ("kalman", kal), ("combiner+2% leak", leak)):
            tab, pooled = leakage.check_lookahead_panel(
                raw, arr, names=names, innovations=innov, raise_on_fail=False
            )
            parts.append(
                f"{name} {pooled['max_abs_z']:.2f} (largest feature "
                f"{tab['max_abs_z'].max():.2f}, {int(tab['flagged'].sum())} above 5)"
            )
        print(f"  k={item.split(':')[0]:>4} lags={lags}: " + "; ".join(parts) + f"  [{dt:.1f} s]")


if __name__ == "__main__":
    main()
