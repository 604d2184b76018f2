"""The four stages on one panel, with every artifact path explicit.

    python -m mamba_denoiser.pipeline data.path=panel.csv run_dir=runs/panel_a
    mamba-denoiser-pipeline data.path=panel.csv run_dir=runs/panel_a train:experiment=smoke

Alone, train.py reads the newest clusters.json under outputs/cluster/ and denoise.py and
evaluate.py the newest sweep under outputs/train_multirun/: right for one pipeline at a
time, unsafe for two side by side (one may pick up the other's folder). Here each stage is
told where its inputs are, and all of a panel's outputs stay under its ``run_dir``:

    <run_dir>/cluster/clusters.json          cluster.py   hydra.run.dir
    <run_dir>/train/<n>_c<id>/checkpoints/   train.py     a multirun over every cluster
                                                          (hydra.sweep.dir), clusters=
    <run_dir>/denoise/denoised.csv           denoise.py   checkpoints=<run_dir>/train, clusters=
    <run_dir>/evaluate/report.md             evaluate.py  the same
    <run_dir>/pipeline.json                  the commands, exit codes, seconds, outputs

Arguments are Hydra overrides. ``run_dir=DIR`` (default outputs/pipeline/<time>; it must
be new or empty); ``stage:key=value`` goes to that stage only (``cluster:clustering.k=2``,
``train:experiment=smoke``, ``evaluate:downstream.n_splits=2``); any other ``key=value``
to every stage (``data.path=...``, ``data.window_size=...``, ``paths.cache_dir=...``).
train.py runs ``experiment=cpu_all_clusters`` unless given another experiment, as ``make
run`` does. Each stage is its installed command in a child process (the scripts' own
failure policy, logs and Hydra settings); the state-space fit cache (paths.cache_dir) is
shared, a pure memo keyed by the data. Every stage's config is checked (config_schema.py)
before the first one starts; a stage that fails stops the pipeline with its exit code.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from mamba_denoiser.cli import ROOT_ENV
from mamba_denoiser.errors import ConfigError

STAGES = ("cluster", "train", "denoise", "evaluate")
DEFAULT_TRAIN = ("experiment=cpu_all_clusters",)


def parse(argv: list[str]) -> tuple[Path | None, list[str], dict[str, list[str]]]:
    """(run_dir or None, overrides for every stage, stage -> its own overrides)."""
    run_dir: Path | None = None
    shared: list[str] = []
    own: dict[str, list[str]] = {s: [] for s in STAGES}
    for arg in argv:
        stage, sep, rest = arg.partition(":")
        if sep and stage in STAGES:
            own[stage].append(rest)
        elif arg.startswith("run_dir="):
            run_dir = Path(arg.partition("=")[2])
        elif "=" in arg.lstrip("+~"):
            shared.append(arg)
        else:
            raise ConfigError(
                f"pipeline: cannot use {arg!r}; give key=value overrides for every stage, "
                f"stage:key=value for one of {', '.join(STAGES)}, and run_dir=DIR"
            )
    if not any(o.startswith("experiment=") for o in own["train"]):
        own["train"] = [*DEFAULT_TRAIN, *own["train"]]
    return run_dir, shared, own


def commands(run_dir: Path, shared: list[str], own: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each stage's command line, every input and output path explicit."""
    run_dir = run_dir.resolve()
    clusters = run_dir / "cluster" / "clusters.json"
    sweep = run_dir / "train"
    base = [sys.executable, "-m", "mamba_denoiser.console"]
    return {
        "cluster": [*base, "cluster", *shared, *own["cluster"], f"hydra.run.dir={run_dir}/cluster"],
        "train": [
            *base,
            "train",
            "--multirun",
            "cluster=glob(*)",  # every cluster of this clusters.json
            f"clusters={clusters}",
            *shared,
            *own["train"],
            f"hydra.sweep.dir={sweep}",
        ],
        "denoise": [
            *base,
            "denoise",
            f"clusters={clusters}",
            f"checkpoints={sweep}",
            *shared,
            *own["denoise"],
            f"hydra.run.dir={run_dir}/denoise",
        ],
        "evaluate": [
            *base,
            "evaluate",
            f"clusters={clusters}",
            f"checkpoints={sweep}",
            *shared,
            *own["evaluate"],
            f"hydra.run.dir={run_dir}/evaluate",
        ],
    }


def preflight(run_dir: Path, shared: list[str], own: dict[str, list[str]]) -> None:
    """Compose every stage's config with its overrides and check it (config_schema.check),
    before anything runs: a wrong value in train:... fails now, not after cluster.py.
    Swept values (a,b) are left to the stage's own check."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mamba_denoiser.config_schema import check
    from mamba_denoiser.console import config_dir
    from mamba_denoiser.entry import composition_error_line
    from mamba_denoiser.train_job import register_cluster_options

    parser = OverridesParser.create()
    for stage in STAGES:
        given = [o for o in [*shared, *own[stage]] if not o.startswith("hydra.")]
        parsed = parser.parse_overrides(given)
        given = [o for o, p in zip(given, parsed) if not p.is_sweep_override()]
        if stage == "train":  # cluster=c0: a placeholder until clusters.json exists
            register_cluster_options([f"clusters={run_dir / 'cluster' / 'clusters.json'}"])
        try:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                cfg = compose(stage, overrides=given)
        except Exception as err:
            line = composition_error_line(err, f"{stage}.py")
            if line is None:
                raise
            raise ConfigError(f"{stage}: {line.removeprefix('error: ')}") from None
        try:
            check(cfg, stage)
        except ConfigError as err:
            raise ConfigError(f"{stage}: {err}") from None


def run(argv: list[str]) -> int:
    """Run the pipeline; returns the exit code (the failing stage's, else 0)."""
    from mamba_denoiser.io import atomic_write_json

    run_dir, shared, own = parse(argv)
    root = Path(os.environ.get(ROOT_ENV) or os.getcwd()).resolve()
    if run_dir is None:
        run_dir = root / "outputs" / "pipeline" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = run_dir if run_dir.is_absolute() else root / run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"run_dir={run_dir} is not empty; give a new folder, so that this pipeline's "
            "stages read only this pipeline's artifacts"
        )
    preflight(run_dir, shared, own)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, ROOT_ENV: str(root)}
    record: dict = {"run_dir": str(run_dir), "status": "running", "stages": {}}
    code = 0
    for stage, cmd in commands(run_dir, shared, own).items():
        shown = shlex.join(["python", *cmd[1:]])
        print(f"== pipeline: {stage}: {shown}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run(cmd, env=env, cwd=root).returncode
        record["stages"][stage] = {
            "command": shown,
            "exit_code": code,
            "seconds": round(time.perf_counter() - t0, 1),
            "dir": str(run_dir / stage),
        }
        if code != 0:
            record["status"] = f"failed at {stage}"
            print(f"pipeline: {stage} failed (exit {code}); outputs in {run_dir}", file=sys.stderr)
            break
    else:
        record["status"] = "ok"
        record["outputs"] = {
            "clusters": str(run_dir / "cluster" / "clusters.json"),
            "checkpoints": str(run_dir / "train"),
            "denoised": str(run_dir / "denoise" / "denoised.csv"),
            "report": str(run_dir / "evaluate" / "report.md"),
        }
        print(f"pipeline: done; {run_dir}/pipeline.json lists the outputs", flush=True)
    atomic_write_json(run_dir / "pipeline.json", record)
    return code


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
