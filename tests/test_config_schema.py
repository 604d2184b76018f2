"""Typed configs (config_schema.py): wrong values are one line naming the key, exit code 2,
before any data are read and with no run directory left; every shipped config passes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, read_write

from mamba_denoiser import config_schema as schema
from mamba_denoiser.config_schema import SCHEMAS, ConfigValueError, check, check_before_run
from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(stage: str, overrides: list[str], tmp_path: Path):
    if stage == "train":  # cluster=c0: a placeholder option (no clusters.json needed)
        from mamba_denoiser.train_job import register_cluster_options

        overrides = [f"clusters={tmp_path / 'none.json'}", *overrides]
        register_cluster_options(overrides)
    return compose_config(stage, overrides, tmp_path / "run")


# Every option of every group a stage composes (one group varied at a time).
SHIPPED = [
    ("cluster", [f"data={d}", "data.path=x.csv"] if d == "csv" else [f"data={d}"])
    for d in _options("data")
]
SHIPPED += [("train", [f"{g}={o}"]) for g in ("model", "head", "loss", "sde") for o in _options(g)]
SHIPPED += [("train", [f"trainer={o}"]) for o in _options("trainer")]
SHIPPED += [("train", [f"experiment={o}"]) for o in _options("experiment")]
SHIPPED += [("denoise", [f"sampler={o}"]) for o in _options("sampler")]
SHIPPED += [("evaluate", [f"variants={o}"]) for o in _options("variants")]


@pytest.mark.parametrize("stage, overrides", SHIPPED, ids=lambda x: " ".join(x) if x else "")
def test_every_shipped_config_passes(tmp_path, stage, overrides):
    check_before_run(_compose(stage, overrides, tmp_path), stage)


def _leaves(cls: type, prefix: str = "") -> list[str]:
    hints = schema._type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, _ = schema._strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


@pytest.mark.parametrize("stage", sorted(SCHEMAS))
def test_every_schema_key_is_a_key_of_the_shipped_configs(tmp_path, stage):
    """The schema follows conf/: a key renamed there cannot leave a stale check here."""
    configs = [_compose(s, ov, tmp_path) for s, ov in SHIPPED if s == stage]
    configs.append(_compose(stage, [], tmp_path))
    missing = [
        key
        for key in _leaves(SCHEMAS[stage])
        if not any(OmegaConf.select(c, key, default="<absent>") != "<absent>" for c in configs)
    ]
    assert not missing, missing


def test_choices_are_the_librarys():
    from mamba_denoiser.clustering.grouping import CRITERIA
    from mamba_denoiser.data.synthetic import NOISE_DISTS
    from mamba_denoiser.evaluation.baselines import BASELINES
    from mamba_denoiser.inference.candidates import REGISTRY
    from mamba_denoiser.inference.cluster import SAMPLERS
    from mamba_denoiser.inference.plan import MODES
    from mamba_denoiser.models.scan.dispatch import BACKENDS

    assert set(schema.CRITERIA) == set(CRITERIA)
    assert set(schema.NOISE_DISTS) == set(NOISE_DISTS)
    assert set(schema.BASELINES) == set(BASELINES)
    assert set(schema.CANDIDATES) == set(REGISTRY)
    assert set(schema.SAMPLERS) == set(SAMPLERS)
    assert set(schema.MODES) == set(MODES)
    assert set(schema.BACKENDS) == {"auto", *BACKENDS}


BAD = [
    ("train", ["batch_size=abc"], "batch_size=abc: expected a whole number"),
    ("train", ["optim.lr=fast"], "optim.lr=fast: expected a number > 0"),
    ("train", ["model.d_model=-4"], "model.d_model=-4: expected a whole number >= 1"),
    ("train", ["model.dropout=1.5"], "model.dropout=1.5: expected a number >= 0 and < 1"),
    ("train", ["model.direction=sideways"], "model.direction=sideways: expected one of causal"),
    ("train", ["validate_at_init=no"], "validate_at_init=no: expected true or false"),
    ("train", ["batch_size=1.5"], "batch_size=1.5: expected a whole number"),
    ("train", ["data.split.train=1.5"], "data.split.train=1.5: expected a number > 0 and <= 1"),
    ("train", ["sde.beta_min=0.5", "sde.beta_max=0.1"], "sde.beta_min=0.5 > sde.beta_max=0.1"),
    ("denoise", ["candidates=[kalman,wiener]"], "candidates=['kalman', 'wiener']: expected"),
    ("denoise", ["sigma=3"], "sigma=3: expected a mapping"),
    ("denoise", ["sampler=sdedit", "sampler.steps=0"], "sampler.steps=0"),
    ("evaluate", ["variants=full", "methods.1.mode=x"], "methods[1].mode=x: expected one of"),
    ("evaluate", ["baselines=[ema,wavelet]"], "baselines=['ema', 'wavelet']: expected a list of"),
    ("cluster", ["clustering.k_min=5", "clustering.k_max=3"], "clustering.k_min=5 > clustering"),
    ("cluster", ["data.noise_dist=foo"], "data.noise_dist=foo: expected one of mixed"),
]


@pytest.mark.parametrize("stage, overrides, message", BAD)
def test_wrong_values_name_the_key(tmp_path, stage, overrides, message):
    with pytest.raises(ConfigValueError) as e:
        check(_compose(stage, overrides, tmp_path), stage)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_job_checks_its_config_before_reading_data(tmp_path, capsys):
    """A library call through the compose API (no Hydra callbacks): the job itself refuses
    the value with one line and exit code 2, reads no data and removes its run folder."""
    from mamba_denoiser.cluster_job import run_cluster

    cfg = _compose("cluster", [f"data.path={tmp_path / 'missing.csv'}", "n_jobs=0"], tmp_path)
    Path(cfg.paths.output_dir).mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        run_cluster(cfg)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: n_jobs=0: expected a whole number >= 1"
    assert not Path(cfg.paths.output_dir).exists()


def _script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(MAMBA_DENOISER_ROOT=str(tmp_path), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


# A data file that does not exist: reading data first would fail on it instead.
E2E = [
    ("train.py", "batch_size=abc", "batch_size=abc"),
    ("train.py", "model.d_model=-4", "model.d_model=-4"),
    ("train.py", "experiment=cpu_all_clusters optim.lr=fast", "optim.lr=fast"),  # a multirun
    ("train.py", "-m cluster=c0 stride=1,-1", "stride=-1"),  # a swept value
    ("denoise.py", "batch_windows=0", "batch_windows=0"),
    ("evaluate.py", "downstream.n_splits=five", "downstream.n_splits=five"),
    ("cluster.py", "clustering.criterion=best", "clustering.criterion=best"),
    ("cluster.py", "-m n_jobs=2,0", "n_jobs=0"),
]


@pytest.mark.e2e
def test_wrong_values_through_the_scripts(tmp_path):
    for script, args, key in E2E:
        missing = f"data.path={tmp_path / 'missing.csv'}"
        r = _script(tmp_path, str(ROOT / script), *args.split(), missing)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2, (script, args, r.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"error: {key}: expected"), r.stderr
        assert "missing.csv" not in r.stderr  # no data were read
        assert not (tmp_path / "outputs").exists(), list((tmp_path / "outputs").rglob("*"))


@pytest.mark.e2e
def test_the_installed_command_checks_too(tmp_path):
    r = _script(tmp_path, "-m", "mamba_denoiser.console", "denoise", "mode=sideways")
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: mode=sideways: expected one of causal, offline"
    ), r.stderr
    assert not (tmp_path / "outputs").exists()


def test_sweeps_are_expanded_value_by_value(tmp_path):
    cfg = _compose("cluster", [], tmp_path)
    with read_write(cfg.hydra):
        cfg.hydra.overrides.task = ["n_jobs=1,2", "clustering.k=2,3", "data=csv,synthetic"]
    assert [k for k, _ in schema._sweeps(cfg, "cluster")] == ["n_jobs", "clustering.k"]
    check_before_run(cfg, "cluster")
    with read_write(cfg.hydra):
        cfg.hydra.overrides.task = ["n_jobs=range(0,2)"]
    with pytest.raises(ConfigValueError, match="n_jobs=0"):
        check_before_run(cfg, "cluster")
