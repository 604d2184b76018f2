"""One training step of the full denoiser: median seconds, split into its phases.

Step = draw t and ε, x_t = √ᾱ x0 + √(1-ᾱ) ε, ε̂ = model(x_t, t), DenoisingLoss(ε̂, ε, x̂0)
+ backward + AdamW step. Default size: 38 features, d_model 128, 4 layers, batch 64,
window 60 (the largest cluster of the reference data). Both backbones are timed, causal
(forward-only Mamba blocks, one scan direction) and bidirectional (BiMamba blocks, two
directions stacked in one scan), at the same model size, their steps interleaved, and the
ratio printed.

    python benchmarks/train_step.py
    python benchmarks/train_step.py --direction causal --backend reference --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mamba_denoiser.diffusion import VPSDE, DenoisingLoss
from mamba_denoiser.models import MultivariateMambaDenoiser


def make_step(args, direction: str):
    """A closure running one training step of a fresh model; returns its phase seconds."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = MultivariateMambaDenoiser(
        n_features=args.features,
        window_size=args.window,
        d_model=args.d_model,
        n_layers=args.layers,
        use_mask=args.mask,
        backend=args.backend,
        direction=direction,
    ).to(device)
    sde = VPSDE().to(device)
    loss_fn = DenoisingLoss("random_walk")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x0 = torch.randn(args.batch, args.window, args.features, device=device).cumsum(dim=1)
    x0 = (x0 - x0.mean(dim=1, keepdim=True)) / x0.std(dim=1, keepdim=True)
    mask = torch.rand_like(x0) > 0.1 if args.mask else None

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> tuple[float, float, float, float]:
        sync()
        t0 = time.perf_counter()
        t = torch.randint(0, sde.num_timesteps, (args.batch,), device=device)
        x_t, eps = sde.sample(x0, t)
        eps_hat = model(x_t, t, mask) if args.mask else model(x_t, t)
        loss = loss_fn(eps_hat, eps, sde.predict_x0(x_t, t, eps_hat), mask=mask)
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t3 - t0

    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", type=int, default=38)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--direction", choices=["causal", "bidirectional", "both"], default="both")
    ap.add_argument("--mask", action="store_true", help="use_mask=True and a masked loss")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"backend {args.backend}"
    )
    print(
        f"features={args.features} window={args.window} batch={args.batch} "
        f"d_model={args.d_model} layers={args.layers} mask={args.mask}"
    )
    directions = ["causal", "bidirectional"] if args.direction == "both" else [args.direction]
    steps = {d: make_step(args, d) for d in directions}
    phases = {d: {"forward+loss": [], "backward": [], "optimizer": [], "total": []} for d in steps}
    # the directions' steps alternate, so load from other processes on a shared machine
    # slows both alike and the paired ratio below stays meaningful
    for i in range(args.warmup + args.reps):
        for d, (step, _) in steps.items():
            secs = step()
            if i >= args.warmup:
                for name, sec in zip(phases[d], secs):
                    phases[d][name].append(sec)
    for d, (_, n_params) in steps.items():
        print(f"{d} ({n_params:,} params)")
        for name, values in phases[d].items():
            print(f"{name:>13}: median {statistics.median(values):.3f} s  (min {min(values):.3f})")
    if len(steps) == 2:
        causal, bi = phases["causal"]["total"], phases["bidirectional"]["total"]
        ratio = statistics.median(c / b for c, b in zip(causal, bi))
        print(f"step time causal / bidirectional: {ratio:.2f} (median of paired steps)")


if __name__ == "__main__":
    main()
