"""Quick start from Python: a finished run -> one saved bundle -> a live, causal update loop
that gives exactly what denoise.py writes for the same rows.

    python examples/quickstart.py                      # tiny: makes its own small run (~1 min)
    python examples/quickstart.py --log-dir outputs    # your newest run (e.g. after make run)

Steps: (tiny mode only) a small CSV, then cluster.py, train.py with the smoke preset on
every cluster, and denoise.py, as the README runs them; then in Python: wrap the newest
training sweep (``Denoiser.from_run``), fit its decisions on the history, save a bundle,
load it back (every file sha256-checked), and feed the last ``--days`` rows one day at a
time. Each served row must equal denoise.py's output for that row; it exits 1 if not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def small_csv(path: Path, n_rows: int = 700, seed: int = 0) -> Path:
    """Eight noisy features in two families (AR(1) and random walks), a dummy, targets."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {"date_id": np.arange(n_rows)}
    cols["D1"] = rng.integers(0, 2, n_rows).astype(float)
    for i in range(4):
        e, x = rng.standard_normal(n_rows), np.zeros(n_rows)
        for t in range(1, n_rows):
            x[t] = 0.6 * x[t - 1] + e[t]
        cols[f"E{i + 1}"] = x + 0.5 * rng.standard_normal(n_rows)
        cols[f"M{i + 1}"] = np.cumsum(rng.standard_normal(n_rows)) + rng.standard_normal(n_rows)
    cols["forward_returns"] = 0.01 * rng.standard_normal(n_rows)
    pd.DataFrame(cols).to_csv(path, index=False)
    return path


def stage(script: str, *args: str, root: Path) -> None:
    """One entry script, run as a user runs it, with outputs under ``root``/outputs."""
    env = {**os.environ, "MAMBA_DENOISER_ROOT": str(root)}
    cmd = [sys.executable, str(ROOT / script), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{script} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    print(f"  {script} {' '.join(args)}: {time.perf_counter() - t0:.0f} s")


def tiny_run(root: Path) -> Path:
    """A small CSV through cluster.py -> train.py (smoke, every cluster) -> denoise.py."""
    csv = small_csv(root / "train.csv")
    print(f"tiny run under {root}:")
    stage(
        "cluster.py",
        f"data.path={csv}",  # a path alone means a CSV
        "data.targets=[forward_returns]",
        "data.window_size=16",
        "data.anchor_len=4",
        "clustering.k=2",
        "plots=false",
        root=root,
    )
    stage("train.py", "-m", "experiment=smoke", "cluster=glob(*)", "logger=csv", root=root)
    stage("denoise.py", "plots=false", root=root)
    return root / "outputs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log-dir", default=None, help="a run's outputs/ (default: a tiny new run)")
    ap.add_argument("--days", type=int, default=50)
    args = ap.parse_args()
    from mamba_denoiser import Denoiser

    with tempfile.TemporaryDirectory(prefix="quickstart_") as tmp:
        log_dir = Path(args.log_dir) if args.log_dir else tiny_run(Path(tmp))
        written = sorted((log_dir / "denoise").glob("*/denoised.csv"))[-1]  # denoise.py's
        den = Denoiser.from_run(log_dir=log_dir)  # the newest training sweep
        data = den.models[next(iter(den.models))].source["path"]  # the file it trained on
        frame = pd.read_csv(data)
        history, live = frame.iloc[: -args.days], frame.iloc[-args.days :]
        den.transform(history)  # fits the decisions on the train + validation rows

        bundle = den.save(Path(tmp) / "bundle")
        t0 = time.perf_counter()
        loaded = Denoiser.load(bundle)  # every file checked against manifest.json first
        t_load = time.perf_counter() - t0
        loaded.transform(history)  # the warm-up history; nothing is refitted
        t0 = time.perf_counter()
        served = pd.concat([loaded.update(live.iloc[i : i + 1]) for i in range(len(live))])
        t_update = (time.perf_counter() - t0) / len(live)

        ref = pd.read_csv(written).iloc[-args.days :]
        # denoise.py's CSV keeps 10 significant digits: equal up to that rounding
        diff = max(
            float(np.nanmax(np.abs(served[f].to_numpy() - ref[f].to_numpy()), initial=0.0))
            for f in loaded.features
        )
        scale = max(float(np.nanmax(np.abs(ref[f]), initial=0.0)) for f in loaded.features)
        same_nan = all((served[f].isna() == ref[f].isna()).all() for f in loaded.features)
        size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        print(f"bundle {bundle.name}/: {size / 1e6:.2f} MB, loaded in {t_load:.2f} s")
        print(f"update: {t_update * 1e3:.0f} ms per day over the last {len(live)} rows")
        print(f"largest |update - denoise.py| over those rows: {diff:.3g}")
        ok = same_nan and diff <= 1e-9 * max(scale, 1.0)
        print("OK: the live loop serves denoise.py's values" if ok else "MISMATCH")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
