"""The built wheel, installed into a fresh virtual environment outside the checkout, runs
the smoke pipeline with its console scripts and the Hydra configs it ships (setup.py
copies conf/ into mamba_denoiser/conf; console.py finds them)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_small_frame

ROOT = Path(__file__).resolve().parents[1]
# what a wheel build needs of the checkout (not outputs/, .venv/, caches)
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "multirun", "build", "*.egg-info", "__pycache__", ".*cache"
)


def _clean_env() -> dict:
    """No PYTHONPATH (it may point at this checkout's src/, which pip would take for an
    installed mamba-denoiser) and no project root from the caller."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAMBA_DENOISER_ROOT")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def _run(cmd, *, cwd: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd[:3]}: {r.stderr[-3000:]}"
    return r.stdout


def _venv_with_wheel(tmp: Path) -> Path:
    """A fresh venv whose dependencies are this interpreter's (a .pth file: no download,
    no editable install of this checkout, since a path added by .pth runs no .pth of its
    own) and whose mamba_denoiser is the wheel, installed by pip with its scripts."""
    src = shutil.copytree(ROOT, tmp / "src", ignore=SKIP)  # the build writes build/ there
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip"]
    # this env's setuptools when it has one (no download); else pip's isolated build
    # fetches it from the package index, as `make install` does (Python >= 3.12 venvs)
    offline = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([*pip, "wheel", "-q", "--no-deps", *offline, "-w", wheels, src], cwd=tmp)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    wheel = next(wheels.glob("mamba_denoiser-*.whl"))
    _run([*pip, "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel], cwd=tmp)
    # after the install: pip would otherwise see the editable install among the deps and
    # call the wheel "already satisfied"
    site = next(venv.glob("lib/python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "_deps.pth").write_text("\n".join(deps) + "\n")
    return venv


@pytest.mark.slow
@pytest.mark.e2e
def test_the_wheel_runs_the_smoke_pipeline_outside_the_checkout(tmp_path):
    venv = _venv_with_wheel(tmp_path)
    work = tmp_path / "work"  # outside the checkout: no conf/ next to it
    work.mkdir()
    make_small_frame(n_rows=600).to_csv(work / "train.csv", index=False)
    bin_ = venv / "bin"
    where = _run(
        [bin_ / "python", "-c", "import mamba_denoiser.console as c; print(c.config_dir())"],
        cwd=work,
    )
    site = next(venv.glob("lib/python*/site-packages"))
    assert Path(where.strip()) == site / "mamba_denoiser" / "conf"  # the wheel's copy
    stages = [
        [bin_ / "mamba-denoiser", "cluster", "data.path=train.csv", "data.window_size=16"]
        + ["data.anchor_len=4", "clustering.k=2", "plots=false"],
        [bin_ / "mamba-denoiser-train", "-m", "experiment=smoke", "cluster=glob(*)", "logger=csv"],
        [bin_ / "mamba-denoiser", "denoise", "plots=false"],
        [bin_ / "mamba-denoiser", "evaluate", "downstream.n_splits=2", "plots=false"],
    ]
    for cmd in stages:
        _run(cmd, cwd=work)
    out = work / "outputs"
    assert (next(out.glob("denoise/*/denoised.csv"))).stat().st_size > 0
    assert next(out.glob("evaluate/*/report.md")).read_text().strip()
    assert next(out.glob("cluster/*/cluster.log")).is_file()  # the job keeps its name
    bad = subprocess.run(
        [bin_ / "mamba-denoiser", "fit"], cwd=work, env=_clean_env(), capture_output=True, text=True
    )
    assert bad.returncode == 2 and "usage: mamba-denoiser {cluster|" in bad.stderr
