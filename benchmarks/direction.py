"""Inference cost of the denoiser's two backbones: causal vs bidirectional, forward only.

One ε̂ = model(x_t, t, mask) call (eval mode, no autograd) on a batch of windows, median
seconds and windows per second, for each direction at the same model size. A denoiser
call is the unit of every sampler: SDEdit / DDIM cost (steps × samples) of them, the
Tweedie posterior mean (samples) of them. For the causal model one more row: the same
windows streamed through in chunks of --chunk rows, each call continuing from the state
of the last (the online use: a new observation arrives, one short call updates ε̂).

    python benchmarks/direction.py                     # B=256, L=60, F=20, d_model 128
    python benchmarks/direction.py --batch 64 --chunk 10 --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mamba_denoiser.models import MultivariateMambaDenoiser


def timed(fn, warmup: int, reps: int, sync) -> list[float]:
    secs = []
    for i in range(warmup + reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            secs.append(time.perf_counter() - t0)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--chunk", type=int, default=1, help="rows per streaming call; 0: skip")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.window, args.features)
    x_t = torch.randn(shape, generator=g).to(device)
    mask = (torch.rand(shape, generator=g) > 0.1).to(device)
    t = torch.full((args.batch,), 100, device=device)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"backend {args.backend}; batch={args.batch} window={args.window} "
        f"features={args.features} d_model={args.d_model} layers={args.layers}"
    )

    def report(label: str, secs: list[float]) -> float:
        med = statistics.median(secs)
        rate = args.batch / med
        print(f"{label:>34}: median {med:.4f} s  (min {min(secs):.4f})  {rate:,.0f} windows/s")
        return med

    medians = {}
    for direction in ("causal", "bidirectional"):
        torch.manual_seed(0)
        model = (
            MultivariateMambaDenoiser(
                n_features=args.features,
                window_size=args.window,
                d_model=args.d_model,
                n_layers=args.layers,
                backend=args.backend,
                direction=direction,
            )
            .to(device)
            .eval()
        )

        def forward(model=model):
            model(x_t, t, mask)

        def stream(model=model):
            state = None
            for t0 in range(0, args.window, args.chunk):
                sl = slice(t0, t0 + args.chunk)
                _, state = model(x_t[:, sl], t, mask[:, sl], state=state, return_state=True)

        with torch.inference_mode():
            medians[direction] = report(
                f"{direction} forward", timed(forward, args.warmup, args.reps, sync)
            )
            if direction == "causal" and args.chunk > 0:
                secs = timed(stream, args.warmup, max(1, args.reps // 2), sync)
                report(f"causal streamed, {args.chunk}-row chunks", secs)
    ratio = medians["causal"] / medians["bidirectional"]
    print(f"forward time causal / bidirectional: {ratio:.2f}")


if __name__ == "__main__":
    main()
