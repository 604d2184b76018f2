"""Denoising needs no Lightning: importing inference does not load it, and denoise.py runs
on trained checkpoints in a process where `lightning` / `pytorch_lightning` cannot be
imported (checkpoints load into network.ClusterNetwork, not the LightningModule)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import data_overrides as _data
from tests.helpers import denoise, train_sweep

ROOT = Path(__file__).resolve().parents[2]

# Every attempt to import a blocked name is recorded (so a caught ImportError cannot hide
# one) and refused; the list is written to $BLOCKED_LOG however denoise.py exits.
BLOCKING_WRAPPER = """\
import json, os, runpy, sys
from importlib.abc import MetaPathFinder

BLOCKED = ("lightning", "pytorch_lightning")
attempts = []


class NoLightning(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, NoLightning())
script, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    with open(os.environ["BLOCKED_LOG"], "w") as f:
        json.dump({"attempts": attempts, "loaded": loaded}, f)
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(MAMBA_DENOISER_ROOT=str(tmp_path), OMP_NUM_THREADS="1")
    return env


@pytest.mark.e2e
@pytest.mark.parametrize(
    "module", ["mamba_denoiser.inference", "mamba_denoiser.denoise_job", "mamba_denoiser.network"]
)
def test_import_does_not_load_lightning(module):
    code = f"import {module}, sys; assert 'lightning' not in sys.modules"
    code += "; assert 'pytorch_lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def causal_sweep(tmp_path_factory):
    """test_denoise's small CSV, clusters.json and causal checkpoints of its 2 clusters."""
    return train_sweep(tmp_path_factory.mktemp("no_lightning"), directions=("causal",))


@pytest.mark.e2e
def test_denoise_runs_where_lightning_cannot_be_imported(causal_sweep, tmp_path):
    trained = causal_sweep
    wrapper = tmp_path / "denoise_without_lightning.py"
    wrapper.write_text(BLOCKING_WRAPPER)
    log = tmp_path / "blocked.json"
    out = tmp_path / "blocked_run"
    overrides = [  # test_denoise.denoise's options, on the command line
        *_data(trained["csv"]),
        f"clusters={trained['clusters']}",
        f"checkpoints={trained['root'] / 'causal'}",
        "plots=false",
        "gate=false",
        f"hydra.run.dir={out}",
    ]
    r = subprocess.run(
        [sys.executable, str(wrapper), str(ROOT / "denoise.py"), *overrides],
        cwd=tmp_path,
        env={**_env(tmp_path), "BLOCKED_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert json.loads(log.read_text()) == {"attempts": [], "loaded": []}

    denoise(trained, tmp_path / "normal_run")  # the same options, in this process
    normal = tmp_path / "normal_run" / "denoised.csv"
    blocked = out / "denoised.csv"
    assert blocked.read_bytes() == normal.read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(blocked), pd.read_csv(normal))
    s, s0 = (json.loads((d / "denoise_summary.json").read_text()) for d in (out, normal.parent))
    assert s["n_changed"] == s0["n_changed"] > 0
    assert f"{s['n_changed']} of {s['n_features']} features changed" in r.stdout
    for c, c0 in zip(s["clusters"], s0["clusters"], strict=True):
        assert (c["cluster"], c["t"], c["decisions"]) == (c0["cluster"], c0["t"], c0["decisions"])


@pytest.mark.e2e
def test_a_user_error_is_one_line_where_lightning_cannot_be_imported(causal_sweep, tmp_path):
    """cli.user_errors() must not import Lightning to tell a user error from a crash."""
    wrapper = tmp_path / "denoise_without_lightning.py"
    wrapper.write_text(BLOCKING_WRAPPER)
    log = tmp_path / "blocked.json"
    missing = causal_sweep["root"] / "no_such_sweep"
    r = subprocess.run(
        [
            sys.executable,
            str(wrapper),
            str(ROOT / "denoise.py"),
            *_data(causal_sweep["csv"]),
            f"clusters={causal_sweep['clusters']}",
            f"checkpoints={missing}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env={**_env(tmp_path), "BLOCKED_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("error: ") and str(missing) in lines[0]
    assert json.loads(log.read_text()) == {"attempts": [], "loaded": []}
