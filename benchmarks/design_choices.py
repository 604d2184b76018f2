"""Design choices decided on rows the test scores never see (docs/design.md rule 7): the
constant anchor of stationary clusters (`stationary_anchor`) and the diffusion head's t
sampler (`t_sampling.kind`), each against the default, on another seed's panel.

In a scratch log folder: cluster.py once, then per training seed and variant train.py
experiment=cpu_all_clusters with the variant's option, then evaluate.py's own denoising
step (the chosen mix and each candidate family alone; no baselines, checks or forecasts)
scored against the clean values, mean causal SNR gain (dB) per planted family, on the
VALIDATION rows (the gate chose the mix there, so its row is not a fair score; the
families alone are) and, for reference, the test rows. The default panel is the built-in
one at seed 1 (the README's numbers are seed 0), noise x 5.

    python benchmarks/design_choices.py [--data-seed 1] [--noise-scale 5]
        [--train-seeds 0 1] [--variants window uniform] [--steps 4x32]

About 35 minutes on 2 cores with the defaults (one clustering, six trainings).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # label -> train.py options; "default" is conf/train.yaml's choice
    "default": [],
    "window": ["stationary_anchor=window"],
    "uniform": ["t_sampling.kind=uniform"],
}


def _run(script: str, *overrides: str) -> None:
    cmd = [sys.executable, str(ROOT / script), *overrides]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (rc {r.returncode}):\n{r.stderr[-2000:]}")


def score(sweep: Path, overrides: list[str]) -> dict[str, pd.DataFrame]:
    """{'val', 'test'} -> (family x output) mean SNR gain (dB) of one training sweep."""
    from hydra import compose, initialize_config_dir

    from mamba_denoiser.evaluate_job import _denoise_variants, _load
    from mamba_denoiser.evaluation.checks import alone_output
    from mamba_denoiser.evaluation.report import grouped, quality_table

    os.environ.setdefault("MAMBA_DENOISER_ROOT", str(ROOT))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"checkpoints={sweep}", *overrides])
    inp = _load(cfg)
    method = dict(cfg.methods[0])  # the default causal denoiser
    res = _denoise_variants(inp, [method])[method["name"]]
    names, raw = inp.names, inp.raw
    outs = {"chosen mix": res.stack("mean", names)}
    outs.update({f"{f} alone": alone_output(res, f, names, raw) for f in sorted(res.alone)})
    known = inp.truth.known
    idx = [names.index(f) for f in known]
    tabs = {}
    for part in ("val", "test"):
        a, b = inp.panel.bounds[part]
        q = quality_table(
            raw[:, idx],
            inp.truth.clean[:, idx],
            {k: v[:, idx] for k, v in outs.items()},
            known,
            slice(a, b),
        )
        tabs[part] = grouped(q, inp.truth.family).drop(columns="features", errors="ignore")
    return tabs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--noise-scale", type=float, default=5.0)
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=["window", "uniform"], choices=VARIANTS)
    ap.add_argument("--steps", default="4x32", help="epochs x train batches (the CPU preset)")
    ap.add_argument("--log-dir", default=None, help="default: a new scratch folder")
    args = ap.parse_args()
    data = [f"data.seed={args.data_seed}", f"data.noise_scale={args.noise_scale}"]
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="design_choices_"))
    paths = [f"paths.log_dir={log_dir}"]
    epochs, batches = (int(x) for x in args.steps.split("x"))
    budget = [f"trainer.max_epochs={epochs}", f"trainer.limit_train_batches={batches}"]
    _run("cluster.py", *data, *paths, "plots=false")
    results = {}  # (variant, train seed) -> {part: table}
    for seed in args.train_seeds:
        for variant in ["default", *args.variants]:
            opts = [*data, *paths, *budget, f"seed={seed}", *VARIANTS[variant]]
            _run("train.py", "experiment=cpu_all_clusters", *opts)
            sweep = sorted((log_dir / "train_multirun").iterdir())[-1]
            results[variant, seed] = score(sweep, [*data, *paths])
            print(f"trained and scored {variant}, training seed {seed}: {sweep}", flush=True)
    for part in ("val", "test"):
        first = results["default", args.train_seeds[0]][part]
        for out in first.columns:
            print(
                f"\n{out} (causal SNR gain, dB, {part} rows, data seed {args.data_seed}, "
                f"noise x{args.noise_scale:g})"
            )
            print("| variant | training seed | " + " | ".join(first.index) + " |")
            print("|---|---|" + "---|" * len(first.index))
            for (variant, seed), tabs in results.items():
                col = tabs[part].get(out, pd.Series(np.nan, index=first.index))
                vals = " | ".join(f"{col[f]:.2f}" for f in first.index)
                print(f"| {variant} | {seed} | {vals} |")


if __name__ == "__main__":
    main()
