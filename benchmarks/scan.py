"""Selective-scan backends: forward + backward time, speed-up over `reference`, throughput.

For each size (batch B, length L, channels D_inner, state N) and each backend available on
the device: median seconds of one forward + backward (after warm-up), the speed-up over
`reference` (mamba-ssm's selective_scan_ref: the plain loop over time with autograd), and
state updates per second (B·L·D·N / s). The scan gets the inputs the Mamba layer gives
it: softplus(Δ + bias), D skip and SiLU(z) gate.

One more row, `loop_unbind`, is NOT a backend: the same autograd loop written without the
reference's per-step indexing of precomputed (B, D, L, N) tensors, whose backward is O(L²).
It is the fair "well-written eager PyTorch" baseline, and it shows where the speed-up over
`reference` comes from: on CPU, `fused` is a modest constant factor faster than it; its
larger gain is memory (O(sqrt(L)) saved states instead of autograd's O(L)).

    python benchmarks/scan.py                       # B=64 L=60 and B=16 L=512, D=256, N=16
    python benchmarks/scan.py --device cuda         # every backend usable on the GPU
    python benchmarks/scan.py --sizes 64x60 16x512 --reps 7 --backends reference fused
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mamba_denoiser.models.scan import available_backends, selective_scan


def make_inputs(
    batch: int,
    dim: int,
    L: int,
    N: int,
    device: str,
    *,
    groups: int = 1,
    seed: int = 0,
    bias_jitter: float = 0.0,
) -> dict:
    """Scan inputs as the Mamba layer gives them (Δ before softplus, S4D-real A); also
    used by gpu_check.py (groups > 1: grouped B/C; bias_jitter: per-channel Δ bias)."""
    g = torch.Generator().manual_seed(seed)
    bc = (batch, N, L) if groups == 1 else (batch, groups, N, L)

    def leaf(x):
        return x.to(device).requires_grad_()

    bias = torch.full((dim,), -3.0)  # softplus(-3) ~ 0.05: typical Δ
    return {
        "u": leaf(torch.randn(batch, dim, L, generator=g)),
        "delta": leaf(0.5 * torch.randn(batch, dim, L, generator=g)),
        "A": leaf(-torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1)),
        "B": leaf(torch.randn(*bc, generator=g)),
        "C": leaf(torch.randn(*bc, generator=g)),
        "D": leaf(torch.ones(dim)),
        "z": leaf(torch.randn(batch, dim, L, generator=g)),
        "delta_bias": leaf(
            bias + bias_jitter * torch.randn(dim, generator=g) if bias_jitter else bias
        ),
    }


def loop_unbind(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True):
    """Autograd loop over time, one step per unbind slice (no O(L²) index backward)."""
    delta = delta + delta_bias[:, None]
    delta = torch.nn.functional.softplus(delta) if delta_softplus else delta
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (b, d, n)
    ys = []
    for u_t, dt_t, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1)):
        h = torch.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * B_t[:, None, :]
        ys.append((h * C_t[:, None, :]).sum(-1))
    y = torch.stack(ys, dim=-1) + u * D[:, None]
    return y * torch.nn.functional.silu(z)


def time_fwd_bwd(
    backend: str, inputs: dict, warmup: int, reps: int, budget_s: float = 30.0
) -> list[float]:
    """Seconds per forward + backward; stops early once the timed reps exceed budget_s
    (the reference takes ~50 s per rep at L=512)."""
    device = inputs["u"].device
    times = []
    for i in range(warmup + reps):
        if sum(times) > budget_s:
            break
        for x in inputs.values():
            x.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if backend == "loop_unbind":
            out = loop_unbind(**inputs)
        else:
            out = selective_scan(**inputs, delta_softplus=True, backend=backend)
        out.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["64x60", "16x512"], help="BxL pairs")
    ap.add_argument("--dim", type=int, default=256, help="D_inner")
    ap.add_argument("--state", type=int, default=16, help="N")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--backends", nargs="+", default=None, help="default: all available + loop_unbind"
    )
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions (reference: 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    backends = args.backends or available_backends(args.device)
    if args.device == "cpu" and args.backends is None and "triton" in backends:
        backends.remove("triton")  # the CPU interpreter is for correctness, not speed
    if args.backends is None:
        backends.insert(1, "loop_unbind")
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    for size in args.sizes:
        batch, L = (int(v) for v in size.lower().split("x"))
        dim, N = args.dim, args.state
        inputs = make_inputs(batch, dim, L, N, args.device)
        print(f"\nB={batch} L={L} D_inner={dim} N={N}  (forward + backward, median of reps)")
        print(f"{'backend':>11} {'seconds':>9} {'vs reference':>13} {'state updates/s':>16}")
        results = {}
        for backend in backends:
            reps = min(args.reps, 3) if backend == "reference" else args.reps
            warmup = (0 if L > 256 else 1) if backend == "reference" else 2
            results[backend] = statistics.median(time_fwd_bwd(backend, inputs, warmup, reps))
        ref = results.get("reference")
        for backend, sec in results.items():
            ratio = f"{ref / sec:12.1f}x" if ref else f"{'-':>13}"
            print(f"{backend:>11} {sec:9.4f} {ratio} {batch * L * dim * N / sec:16.3e}")


if __name__ == "__main__":
    main()
