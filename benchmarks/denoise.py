"""Denoising speed on the full built-in panel: every cluster, causal, CPU.

Times inference.denoise_cluster over all clusters of a training sweep on the whole
9,000 x 94 built-in panel (the work of `python denoise.py`, without CSV I/O and start-up),
in the same run: the default (every candidate -- diffusion posterior mean at 4 t, the
predictive head's closed form, the Kalman filter -- each scored by SURE on the validation
rows), the learned heads only, the Kalman filter only, the default without the gate, and
SDEdit (DDIM 10 steps x 8 samples). Prints seconds, the ratio to the default, and whether
the default meets the 60 s budget of 2 cores.

The statsmodels fits behind sigma and the Kalman candidate are read from the disk cache
that cluster.py fills (``outputs/cache/fits``, as in `make run`); ``--cold`` fits them here
instead (serially, what a first denoise.py without cluster.py's prefit would pay).

    python benchmarks/denoise.py                            # newest outputs/train_multirun
    python benchmarks/denoise.py --sweep outputs/train_multirun/<run> --threads 2 --cold
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mamba_denoiser.artifacts import find_latest_sweep, load_models
from mamba_denoiser.classical import set_fit_cache
from mamba_denoiser.data.source import panel_from_config
from mamba_denoiser.inference import denoise_cluster

BUDGET_S = 60.0  # docs: causal denoise of the built-in panel, all candidates, 2 cores
VARIANTS = {
    "all candidates, gated (default)": dict(sampler="posterior_mean", gate=True),
    "learned heads only, gated": dict(
        sampler="posterior_mean", gate=True, candidates=["diffusion", "predictive"]
    ),
    "kalman only, gated": dict(sampler="posterior_mean", gate=True, candidates=["kalman"]),
    "all candidates, no gate": dict(sampler="posterior_mean", gate=False),
    "sdedit ddim 10 steps x 8 samples": dict(
        sampler="sdedit", gate=False, sampler_kw={"method": "ddim", "steps": 10, "n_samples": 8}
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=Path("outputs/data/synthetic_n9000_seed0.csv"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("outputs/cache/fits"))
    ap.add_argument("--cold", action="store_true", help="fit statsmodels here, no disk cache")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_fit_cache(None if args.cold else args.cache)
    try:
        sweep = args.sweep or find_latest_sweep("outputs")
    except ValueError as e:  # ConfigError: nothing trained yet
        print(f"{e}\n(run `make run` first)")
        return
    models = list(load_models(sweep).values())
    panel = panel_from_config(
        {"kind": "synthetic", "n_rows": 9000, "seed": 0, "path": str(args.data)}
    )
    n_feat = sum(len(m.features) for m in models)
    print(
        f"sweep {sweep}: {len(models)} clusters, {n_feat} features, {panel.n_rows} rows, "
        f"{args.threads} threads"
    )
    times = {}
    for name, v in VARIANTS.items():
        t0 = time.perf_counter()
        n_on = 0
        for m in models:
            raw = panel.frame[m.features].to_numpy(dtype=np.float64)
            res = denoise_cluster(
                m,
                raw,
                train=panel.bounds["train"],
                sampler=v["sampler"],
                sampler_kw=v.get("sampler_kw"),
                candidates=v.get("candidates"),
                gate_rows=panel.bounds["val"] if v["gate"] else None,
            )
            n_on += sum(f["denoised"] for f in res.info["features"].values())
        times[name] = time.perf_counter() - t0
        print(f"{name:45s} {times[name]:7.1f} s   ({n_on}/{n_feat} features denoised)")
    base = times[next(iter(VARIANTS))]
    for name, sec in times.items():
        print(f"  {name:45s} x{sec / base:5.2f} of the default")
    fits = "fitted here (--cold)" if args.cold else f"read from {args.cache}"
    verdict = "within" if base <= BUDGET_S else "OVER"
    print(f"default: {base:.1f} s, {verdict} the {BUDGET_S:.0f} s budget (statsmodels fits {fits})")


if __name__ == "__main__":
    main()
