"""Training throughput (windows/s) at the recommended model size, CPU, real Lightning loop.

For clusters of 1, 9 and 38 features of the default synthetic panel: time a Lightning
`fit` over N batches of 64 windows (warm-up excluded) and extrapolate one epoch of the
38-feature cluster's train windows. Prints seconds per step and windows/s.

    python benchmarks/train_throughput.py [--steps 12] [--features 1 9 38]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

import lightning as L
import torch

from mamba_denoiser.data.datamodule import ClusterDataModule
from mamba_denoiser.data.panel import panel_from_frame
from mamba_denoiser.data.synthetic import make_synthetic_panel
from mamba_denoiser.training import DenoiserModule

MODEL = dict(
    d_model=128,
    n_layers=4,
    d_state=16,
    d_conv=4,
    expand=2,
    dropout=0.1,
    use_mask=True,
    backend="auto",
)


def fit_seconds(module, dm, steps: int) -> float:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--features", type=int, nargs="+", default=[1, 9, 38])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    sp = make_synthetic_panel(9000, 0)
    panel = panel_from_frame(sp.frame, window_size=60)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
        f"{args.batch_size}, window 60, model {MODEL}"
    )
    print(
        f"{'features':>8} {'s/step':>8} {'windows/s':>10} {'train windows':>14} {'epoch (s)':>10}"
    )
    for n_f in args.features:
        feats = panel.continuous[:n_f]
        dm = ClusterDataModule(panel, feats, window_size=60, batch_size=args.batch_size)
        module = DenoiserModule(
            cluster={"id": 0, "type": "mean_reverting", "strategy": "tv", "features": feats},
            window_size=60,
            scaler=dm.scaler,
            model=MODEL,
            sde={},
            loss={},
            lr=1e-4,
        )
        fit_seconds(module, dm, 2)  # warm-up: allocator, first-call overheads
        t_short = fit_seconds(module, dm, 2)
        t_long = fit_seconds(module, dm, 2 + args.steps)
        per_step = (t_long - t_short) / args.steps  # fixed Trainer overhead cancels
        wps = args.batch_size / per_step
        n_win = len(dm.train_starts)
        print(f"{n_f:>8} {per_step:>8.3f} {wps:>10.0f} {n_win:>14} {n_win / wps:>10.0f}")


if __name__ == "__main__":
    main()
