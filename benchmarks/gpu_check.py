"""GPU check: Triton scan parity and bandwidth, a bf16 train step, one epoch of every cluster.

Four checks on one CUDA GPU, under 8 minutes in all (most of it the epoch sweep):

1. parity: the Triton scan (and mamba_ssm when installed) against the fused scan, float32,
   forward output and the gradients of all 8 inputs for a fixed random cotangent, at the
   sizes the models use (largest error relative to the largest entry, as in
   tests/models/test_ssm.py; output < 1e-4, gradients < 5e-4).
2. bandwidth: the scan's effective GB/s per backend, forward and forward + backward: the
   bytes it must move at least (inputs and output; backward also the output gradient and
   every input gradient) over the median time (CUDA events). The largest size shows what the
   kernel reaches; the training size is launch-bound.
3. train step: the recommended model (conf/model/default.yaml), both heads as in
   experiment=all_clusters, 38 features, window 60, batch 64, bf16 autocast (as
   trainer=gpu's bf16-mixed), gradient clipping, AdamW; median ms/step, windows/s, peak
   memory, the scan backend "auto" resolved to, and a finite loss.
4. epochs: cluster.py on the built-in synthetic panel, then `train.py
   experiment=all_clusters trainer=gpu trainer.max_epochs=1` in a temporary directory;
   per cluster its status (summary.json) and epoch seconds. "worse_than_reference" is
   expected after one epoch and passes; "failed", a missing job or the time budget do not.

Prints one table; exit code 1 if a check failed. Without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --skip-epochs        # checks 1-3 only (about a minute)
    python benchmarks/gpu_check.py --keep DIR           # keep the cluster/train outputs in DIR
    python benchmarks/gpu_check.py --dry-run-cpu        # every check, tiny, on the CPU
                                                        # (Triton's interpreter): tests this script
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TOL_OUT, TOL_GRAD = 1e-4, 5e-4


class Report:
    """Rows of (check, case, result, detail, ok), printed as one table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, bool]] = []

    def add(self, check: str, case: str, result: str, detail: str = "", ok: bool = True) -> None:
        self.rows.append((check, case, result, detail, ok))
        print(f"  {check:<10} {case:<34} {result:<12} {detail}", flush=True)

    def print(self) -> bool:
        widths = [
            max(len(r[i]) for r in self.rows + [("check", "case", "result", "", True)])
            for i in range(3)
        ]
        print(
            "\n"
            + "  ".join(h.ljust(w) for h, w in zip(("check", "case", "result"), widths))
            + "  detail"
        )
        for check, case, result, detail, ok in self.rows:
            cells = (check, case, result if ok else f"FAIL {result}")
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + detail)
        failed = [r for r in self.rows if not r[4]]
        print(f"\n{len(self.rows) - len(failed)} of {len(self.rows)} checks passed")
        return not failed


# ---- 1-2: the scan ----------------------------------------------------------------------


def make_inputs(batch, dim, L, N, device, groups=1, seed=0):
    """benchmarks/scan.py's inputs, with a per-channel Δ bias (richer gradients)."""
    from scan import make_inputs as scan_inputs  # benchmarks/ is on sys.path as a script

    return scan_inputs(batch, dim, L, N, device, groups=groups, seed=seed, bias_jitter=0.5)


def run_scan(backend, inputs):
    """Output and every input's gradient for a fixed random cotangent."""
    import torch

    from mamba_denoiser.models.scan import selective_scan

    for x in inputs.values():
        x.grad = None
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    (out * cot).sum().backward()
    return out.detach(), {k: v.grad.detach().clone() for k, v in inputs.items()}


def rel_err(actual, expected) -> float:
    scale = expected.abs().max().clamp(min=1e-6)
    return float((actual.float() - expected.float()).abs().max() / scale)


def check_parity(report: Report, device: str, sizes, backends) -> None:
    for batch, dim, L, N, G in sizes:
        inputs = make_inputs(batch, dim, L, N, device, groups=G)
        ref_out, ref_grads = run_scan("fused", inputs)
        for backend in backends:
            case = f"{backend} vs fused B{batch} D{dim} L{L} N{N}" + (f" G{G}" if G > 1 else "")
            try:
                out, grads = run_scan(backend, inputs)
            except Exception as err:  # a kernel that does not compile or run is the finding
                report.add("parity", case, "error", f"{type(err).__name__}: {err}"[:200], False)
                continue
            e_out = rel_err(out, ref_out)
            e_grad = {k: rel_err(grads[k], ref_grads[k]) for k in NAMES}
            worst = max(e_grad, key=e_grad.get)
            ok = e_out < TOL_OUT and e_grad[worst] < TOL_GRAD
            report.add(
                "parity",
                case,
                f"{max(e_out, e_grad[worst]):.1e}",
                f"output {e_out:.1e} (< {TOL_OUT:.0e}), worst gradient {worst} "
                f"{e_grad[worst]:.1e} (< {TOL_GRAD:.0e})",
                ok,
            )


def scan_bytes(batch, dim, L, N, G=1) -> tuple[int, int]:
    """(forward, forward + backward) bytes a float32 scan must read and write at least."""
    bdl, bnl = batch * dim * L, batch * G * N * L
    inputs = 3 * bdl + 2 * bnl + dim * N + 2 * dim  # u, delta, z; B, C; A; D, delta_bias
    fwd = 4 * (inputs + bdl)  # + out
    return fwd, fwd + 4 * (inputs + bdl + inputs)  # backward: inputs, gout, input grads


def time_ms(fn, device: str, warmup: int, reps: int, budget_s: float) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times: list[float] = []
    cuda = device == "cuda"
    while len(times) < reps and sum(times) < 1e3 * budget_s:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def time_scan(inputs: dict, backend: str, device: str, reps: int) -> tuple[float, float]:
    """Median ms of the forward (no grad) and of forward + backward."""
    import torch

    from mamba_denoiser.models.scan import selective_scan

    def fwd():
        with torch.no_grad():
            selective_scan(**inputs, delta_softplus=True, backend=backend)

    def fwd_bwd():
        for x in inputs.values():
            x.grad = None
        selective_scan(**inputs, delta_softplus=True, backend=backend).sum().backward()

    return time_ms(fwd, device, 2, reps, 10.0), time_ms(fwd_bwd, device, 2, reps, 20.0)


def check_bandwidth(report: Report, device: str, sizes, backends, reps: int) -> None:
    import torch

    for batch, dim, L, N in sizes:
        inputs = make_inputs(batch, dim, L, N, device)
        fwd_b, both_b = scan_bytes(batch, dim, L, N)
        for backend in backends:
            if backend == "fused" and device == "cuda" and batch * dim * L > 2**24:
                continue  # the fused scan launches ~20 kernels a step: seconds per rep here
            case = f"{backend} B{batch} D{dim} L{L} N{N}"
            try:
                ms_f, ms_b = time_scan(inputs, backend, device, reps)
            except Exception as err:
                report.add("bandwidth", case, "error", f"{type(err).__name__}: {err}"[:200], False)
                continue
            report.add(
                "bandwidth",
                case,
                f"{fwd_b / ms_f / 1e6:.3g} GB/s",
                f"forward {ms_f:.3f} ms ({fwd_b / 1e6:.3g} MB); forward + backward {ms_b:.3f} ms, "
                f"{both_b / ms_b / 1e6:.3g} GB/s ({both_b / 1e6:.3g} MB)",
            )
        inputs = None  # free before the next size
        if device == "cuda":
            torch.cuda.empty_cache()


# ---- 3: a bf16 train step of the recommended model --------------------------------------


def check_train_step(
    report: Report, device: str, features: int, batch: int, reps: int, model_cfg: str
) -> None:
    import torch
    from omegaconf import OmegaConf

    from mamba_denoiser.models.scan import resolve_backend
    from mamba_denoiser.training import DenoiserModule

    model_kw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / model_cfg))
    model_kw.pop("defaults", None)
    if model_cfg != "default.yaml":  # tiny/small: their defaults list means default + overrides
        base = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "default.yaml"))
        model_kw = {**base, **model_kw}
    window = 60
    torch.manual_seed(0)
    module = DenoiserModule(
        cluster={
            "id": 0,
            "type": "random_walk",
            "strategy": "balanced",
            "features": [f"f{i}" for i in range(features)],
        },
        window_size=window,
        scaler={"anchor_len": 10},
        model=model_kw,
        heads="both",
        noise_sigma=[0.3] * features,
    ).to(device)
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, window, features, generator=g).cumsum(1)
    x0 = ((x0 - x0[:, :10].mean(1, keepdim=True)) / x0.std(1, keepdim=True)).to(device)
    mask = (torch.rand(batch, window, features, generator=g) > 0.1).to(device)
    x0 = torch.where(mask, x0, torch.nan)
    losses: list[float] = []

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss, _ = module.objective(x0, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))

    backend = resolve_backend(str(model_kw.get("backend", "auto")), device)
    case = f"d_model {model_kw['d_model']} x {model_kw['n_layers']}, F{features} B{batch} L{window}"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        ms = time_ms(step, device, 3, reps, 60.0)
    except Exception as err:
        report.add("train step", case, "error", f"{type(err).__name__}: {err}"[:200], False)
        return
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else "-"
    finite = all(v == v and abs(v) != float("inf") for v in losses)
    report.add(
        "train step",
        case,
        f"{ms:.1f} ms",
        f"bf16 autocast, heads both, scan {backend}: {1e3 * batch / ms:.0f} windows/s, "
        f"peak {peak}, loss {losses[0]:.3f} -> {losses[-1]:.3f}",
        finite,
    )


# ---- 4: one epoch of every cluster -----------------------------------------------------


def _run(cmd, cwd, env, timeout_s):
    """Run cmd in its own process group; on timeout kill the group. (rc or None, out, err)."""
    p = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=max(1.0, timeout_s))
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out, err


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def check_epochs(
    report: Report, work: Path, deadline: float, extra: list[str], train_extra: list[str]
) -> None:
    env = {**os.environ, "MAMBA_DENOISER_ROOT": str(work), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    t0 = time.perf_counter()
    rc, out, err = _run(
        [sys.executable, str(ROOT / "cluster.py"), "plots=false", *extra],
        work,
        env,
        deadline - time.monotonic(),
    )
    found = sorted((work / "outputs" / "cluster").glob("*/clusters.json"))
    if rc != 0 or not found:
        why = "timed out" if rc is None else f"exit {rc}"
        report.add("epochs", "cluster.py", why, _tail(err, 1)[:200], False)
        print(_tail(err))
        return
    clusters = json.loads(found[-1].read_text())["clusters"]
    report.add(
        "epochs",
        "cluster.py",
        f"{time.perf_counter() - t0:.0f} s",
        f"{len(clusters)} clusters on the built-in panel",
    )
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=all_clusters",
        "trainer.max_epochs=1",
        *extra,
        *train_extra,
    ]
    rc, out, err = _run(cmd, work, env, deadline - time.monotonic())
    wall = time.perf_counter() - t0
    (work / "train_stdout.txt").write_text(out)
    (work / "train_stderr.txt").write_text(err)
    sweeps = sorted((work / "outputs" / "train_multirun").glob("*"))
    rows = {}
    for s in sorted(sweeps[-1].glob("*/summary.json")) if sweeps else []:
        doc = json.loads(s.read_text())
        rows[doc.get("cluster_id")] = doc
    secs = {
        int(m.group(1)): float(m.group(2))
        for m in re.finditer(r"c(\d+) epoch 1/1 .*\((\d+(?:\.\d+)?)s\)", out)
    }
    for c in clusters:
        r = rows.get(c["id"])
        case = f"c{c['id']} {c['type']} ({c['n_features']} features)"
        if r is None:
            report.add(
                "epochs",
                case,
                "not run" if rc is None else "no summary",
                "the sweep's time budget ran out" if rc is None else "",
                False,
            )
            continue
        status = r.get("status", "?")
        ok = status in ("ok", "worse_than_reference")
        detail = (f"epoch {secs[c['id']]:.1f} s, " if c["id"] in secs else "") + (
            f"val noise MSE {r.get('init_val_noise_mse') or float('nan'):.3f} -> "
            f"{r.get('best_val_noise_mse') or float('nan'):.3f} (iid "
            f"{r.get('val_noise_mse_iid_baseline') or float('nan'):.3f})"
            if ok
            else str(r.get("error", ""))[:160]
        )
        report.add("epochs", case, status, detail, ok)
    why = "timed out (--budget)" if rc is None else f"exit {rc}"
    report.add("epochs", "train.py sweep", f"{wall:.0f} s", why, rc == 0)
    if rc != 0:
        print(_tail(err))


# ---- main ------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-epochs", action="store_true", help="checks 1-3 only")
    ap.add_argument(
        "--budget",
        type=float,
        default=450.0,
        help="seconds for everything; the epoch sweep gets what is left (450)",
    )
    ap.add_argument("--keep", type=Path, default=None, help="keep the sweep outputs here")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="every check at tiny sizes on the CPU, Triton in its interpreter",
    )
    args = ap.parse_args()
    if args.dry_run_cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    start = time.monotonic()
    deadline = start + args.budget

    import torch

    if not args.dry_run_cpu and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
        print(f"gpu_check needs a CUDA GPU ({why}; torch {torch.__version__}); nothing to check")
        return 0

    from mamba_denoiser.models.scan import available_backends

    device = "cpu" if args.dry_run_cpu else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # parity in true float32
    torch.backends.cudnn.allow_tf32 = False
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, {props.name}, "
            f"{props.total_memory / 2**30:.0f} GiB"
        )
    else:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        print(f"torch {torch.__version__}: DRY RUN on the CPU (tiny sizes, Triton interpreter)")
    scan_backends = [b for b in available_backends(device) if b in ("triton", "mamba_ssm")]
    report = Report()
    if not scan_backends:
        report.add("parity", "triton", "missing", "pip install -e '.[gpu]' (triton)", False)
    if args.dry_run_cpu:
        parity_sizes = [(2, 4, 9, 3, 1), (1, 8, 11, 4, 2)]
        bw_sizes, bw_backends = [(2, 8, 16, 4)], ["fused", *scan_backends]
        step_kw = dict(features=3, batch=4, reps=2, model_cfg="tiny.yaml")
    else:
        parity_sizes = [(64, 256, 60, 16, 1), (4, 256, 512, 16, 1), (8, 64, 100, 16, 2)]
        bw_sizes = [(64, 256, 60, 16), (16, 256, 512, 16), (128, 1024, 512, 16)]
        bw_backends = ["fused", *scan_backends]  # fused only where it takes seconds, not minutes
        step_kw = dict(features=38, batch=64, reps=args.reps, model_cfg="default.yaml")
    print("1. parity")
    check_parity(report, device, parity_sizes, scan_backends)
    print("2. bandwidth")
    check_bandwidth(report, device, bw_sizes, bw_backends, 3 if args.dry_run_cpu else args.reps)
    print("3. train step")
    check_train_step(report, device, **step_kw)
    if not args.skip_epochs:
        print("4. epochs (cluster.py, then train.py experiment=all_clusters trainer.max_epochs=1)")
        work = Path(tempfile.mkdtemp(prefix="gpu_check_")) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        if args.dry_run_cpu:
            extra = ["data.n_rows=1200"]
            train_extra = [
                "model=tiny",
                "trainer=cpu",
                "+trainer.limit_train_batches=2",
                "+trainer.limit_val_batches=1",
                "batch_size=16",
            ]
        else:
            extra, train_extra = [], ["trainer=gpu"]
        try:
            check_epochs(report, work, deadline, extra, train_extra)
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
    print(f"\ngpu_check: {time.monotonic() - start:.0f} s")
    return 0 if report.print() else 1


if __name__ == "__main__":
    sys.exit(main())
