"""Learning curve: causal SNR gain on the test rows vs training steps, both heads.

For each budget (epochs x train batches per epoch, the CPU preset otherwise), in a scratch
log folder: cluster.py, train.py experiment=cpu_all_clusters, evaluate.py (leakage checks
included, plots and forecasting off), all with the same data options; then one table per
method of the per-family gains (dB) by budget. The default budgets are 80, 160 (the README
preset) and 400 steps per cluster, on the built-in panel at data.noise_scale=5.

    python benchmarks/learning_curve.py [--budgets 2x40 4x40 8x50] [--noise-scale 5]

About 15 minutes on 2 cores with the default budgets (training grows with the steps).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "diffusion head alone": "causal_posterior_mean: diffusion alone",
    "predictive head alone": "causal_posterior_mean: predictive alone",
    "chosen mix": "causal_posterior_mean",
    "Kalman candidate alone": "causal_posterior_mean: kalman alone",
}


def _run(script: str, *overrides: str) -> None:
    cmd = [sys.executable, str(ROOT / script), *overrides]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (rc {r.returncode}):\n{r.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", nargs="+", default=["2x40", "4x40", "8x50"])
    ap.add_argument("--noise-scale", type=float, default=5.0)
    args = ap.parse_args()
    data = [f"data.noise_scale={args.noise_scale}"]
    rows, seconds = {}, {}
    for budget in args.budgets:
        epochs, batches = (int(x) for x in budget.split("x"))
        steps = epochs * batches
        log_dir = Path(tempfile.mkdtemp(prefix=f"curve_{steps}_"))
        paths = [f"paths.log_dir={log_dir}"]
        _run("cluster.py", *data, *paths, "plots=false")
        t0 = time.perf_counter()
        _run(
            "train.py",
            "experiment=cpu_all_clusters",
            f"trainer.max_epochs={epochs}",
            f"trainer.limit_train_batches={batches}",
            *data,
            *paths,
        )
        seconds[steps] = time.perf_counter() - t0
        _run("evaluate.py", *data, *paths, "plots=false", "downstream.enabled=false")
        run = sorted((log_dir / "evaluate").iterdir())[-1]
        rows[steps] = pd.read_csv(run / "tables" / "snr_causal_by_family.csv", index_col=0)
        print(f"{steps} steps per cluster: trained in {seconds[steps]:.0f} s", flush=True)
    families = [f for f in next(iter(rows.values())).index if f != "features"]
    for label, col in METHODS.items():
        print(f"\n{label} (causal SNR gain, dB, test rows, noise x{args.noise_scale:g})")
        print("| steps | train s | " + " | ".join(families) + " |")
        print("|---|---|" + "---|" * len(families))
        for steps, tab in rows.items():
            vals = " | ".join(f"{tab.loc[f, col]:.2f}" for f in families)
            print(f"| {steps} | {seconds[steps]:.0f} | {vals} |")


if __name__ == "__main__":
    main()
