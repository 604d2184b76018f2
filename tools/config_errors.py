"""Wrong config values through the entry scripts: what each prints, its exit code, and
whether it left a run directory behind, as a markdown table (issue #28 item 3).

    python tools/config_errors.py [--tree DIR] [--only N,N]

--tree: the checkout whose scripts and src/ run (default: this one), e.g. an older
revision unpacked with `git archive REV | tar -x -C DIR`, for a before/after table. The
runs go to a fresh temporary root with a 600-row CSV (tests/helpers.make_small_frame),
its clusters.json and a smoke-sized training sweep, so the later stages have something to
read and every case reaches the point where its value is used.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA = ["data.window_size=16", "data.anchor_len=4"]
SMOKE = ["experiment=smoke", "logger=csv", "trainer.accelerator=cpu"]

# (script, overrides): one wrong value each (the last ones: a multirun, swept values)
CASES: list[tuple[str, list[str]]] = [
    ("train.py", [*SMOKE, "batch_size=abc"]),
    ("train.py", [*SMOKE, "optim.lr=fast"]),
    ("train.py", [*SMOKE, "model.d_model=-4"]),
    ("train.py", [*SMOKE, "model.dropout=1.5"]),
    ("train.py", [*SMOKE, "model.direction=sideways"]),
    ("train.py", [*SMOKE, "trainer.max_epochs=many"]),
    ("train.py", [*SMOKE, "t_sampling.kind=gauss"]),
    ("train.py", [*SMOKE, "sde.beta_max=-0.02"]),
    ("denoise.py", ["plots=false", "batch_windows=0"]),
    ("denoise.py", ["plots=false", "gate_margin_db=high"]),
    ("denoise.py", ["plots=false", "sigma={E1: big}"]),
    ("evaluate.py", ["plots=false", "downstream.n_splits=2", "n_jobs=0"]),
    ("evaluate.py", ["plots=false", "downstream.n_splits=five"]),
    ("cluster.py", [*DATA, "plots=false", "clustering.k_min=abc"]),
    ("cluster.py", [*DATA, "plots=false", "clustering.criterion=best"]),
    ("cluster.py", [*DATA, "plots=false", "data.split.train=1.5"]),
    ("train.py", ["experiment=cpu_all_clusters", "logger=csv", "batch_size=0"]),
    ("train.py", ["-m", *SMOKE, "cluster=c0,c1", "stride=1,-1"]),
]


def run(tree: Path, root: Path, script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(
        MAMBA_DENOISER_ROOT=str(root),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(tree / "src"), str(HERE)]),
    )
    return subprocess.run(
        [sys.executable, str(tree / script), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def run_dirs(root: Path) -> set[Path]:
    """Every run folder under outputs/ (outputs/<task>/<run>, and a sweep's jobs)."""
    out = root / "outputs"
    found = set()
    for task in out.iterdir() if out.is_dir() else []:
        if task.name in ("data", "cache"):
            continue
        for run in task.iterdir():
            found.add(run)
            found.update(p for p in run.iterdir() if p.is_dir() and not p.name.startswith("."))
    return found


def error_line(r: subprocess.CompletedProcess) -> str:
    lines = [x.strip() for x in r.stderr.splitlines() if x.strip()]
    first = next((x for x in lines if x.startswith("error:")), lines[-1] if lines else "")
    more = f" (+{len(lines) - 1} more stderr lines)" if len(lines) > 1 else ""
    return (first[:160] + ("..." if len(first) > 160 else "")).replace("|", "\\|") + more


def setup(tree: Path, root: Path) -> None:
    sys.path.insert(0, str(HERE))
    from tests.helpers import make_small_frame

    csv = root / "small.csv"
    make_small_frame(n_rows=600).to_csv(csv, index=False)
    steps = [
        ("cluster.py", [f"data.path={csv}", *DATA, "plots=false", "clustering.k=2"]),
        ("train.py", ["-m", *SMOKE, "cluster=glob(*)"]),
    ]
    steps[0][1].append("clustering.min_size=1")
    for script, args in steps:
        r = run(tree, root, script, args)
        if r.returncode != 0:
            raise SystemExit(f"setup {script} failed:\n{r.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=HERE)
    ap.add_argument("--only", default="", help="comma-separated case numbers (1-based)")
    args = ap.parse_args()
    tree = args.tree.resolve()
    only = {int(x) for x in args.only.split(",") if x}
    with tempfile.TemporaryDirectory(prefix="config_errors_") as tmp:
        root = Path(tmp)
        setup(tree, root)
        print(f"tree: {tree}\n")
        print("| # | command | exit | stderr (first error line) | run dir left | s |")
        print("|---|---|---|---|---|---|")
        for i, (script, ov) in enumerate(CASES, 1):
            if only and i not in only:
                continue
            before = run_dirs(root)
            t0 = time.perf_counter()
            r = run(tree, root, script, ov)
            dt = time.perf_counter() - t0
            left = sorted(str(p.relative_to(root / "outputs")) for p in run_dirs(root) - before)
            hidden = {*SMOKE, *DATA, "plots=false"}
            shown = " ".join(a for a in ov if a not in hidden)
            print(
                f"| {i} | `{script} {shown}` | {r.returncode} | {error_line(r)} | "
                f"{', '.join(left) or 'no'} | {dt:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
