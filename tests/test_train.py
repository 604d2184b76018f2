"""train.py: fast_dev_run per cluster type and loss, resume, scaler, NaN guard, DDP, sweeps.

Configs come from the real conf/ through Hydra's compose API (as in
lightning-hydra-template); DDP and multirun go through the real command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from mamba_denoiser.data.panel import load_panel
from mamba_denoiser.train_job import register_cluster_options, run_train
from tests.helpers import write_clusters

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 16
TYPES = {0: "mean_reverting", 1: "trending", 2: "random_walk"}


# one cluster of each type, hand-assigned (the panel's real statistics underneath)
TRAIN_CLUSTERS = [
    ("mean_reverting", "tv", ["E1", "E2"]),
    ("trending", "fourier", ["M1"]),
    ("random_walk", "balanced", ["M2"]),
]


@pytest.fixture
def clusters_json(tmp_path, small_csv):
    """clusters.json over the small panel with one cluster of each type."""
    return write_clusters(small_csv, tmp_path, TRAIN_CLUSTERS)


def base_overrides(tmp_path, csv, clusters):
    return [
        "data=csv",
        f"data.path={csv}",
        f"data.window_size={WINDOW}",
        "data.anchor_len=4",
        f"clusters={clusters}",
        "experiment=smoke",
        f"paths.root_dir={tmp_path}",
        "trainer.accelerator=cpu",
        "callbacks.early_stopping.patience=100",
    ]


def make_cfg(tmp_path, csv, clusters, *overrides, run="run"):
    register_cluster_options([f"clusters={clusters}", *overrides])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*base_overrides(tmp_path, csv, clusters), *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / run)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["c0", "c1", "c2"])
def test_fast_dev_run_each_cluster_type(tmp_path, small_csv, clusters_json, cluster):
    cfg = make_cfg(
        tmp_path, small_csv, clusters_json, f"cluster={cluster}", "+trainer.fast_dev_run=true"
    )
    assert cfg.cluster.type == TYPES[int(cluster[1])]
    run_train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["type"] == TYPES[int(cluster[1])] and summary["global_step"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["auto", "tv", "fourier", "balanced", "none"])
def test_fast_dev_run_each_loss(tmp_path, small_csv, clusters_json, loss):
    cfg = make_cfg(
        tmp_path,
        small_csv,
        clusters_json,
        f"loss={loss}",
        "+trainer.fast_dev_run=true",
        "logger=csv",
    )
    run_train(cfg)
    assert (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow
def test_resume_continues_epochs_and_scaler_is_train_only(tmp_path, small_csv, clusters_json):
    cfg = make_cfg(tmp_path, small_csv, clusters_json, "trainer.max_epochs=1")
    run_train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=False)
    assert ck["epoch"] == 0 and ck["global_step"] == 4

    # The checkpoint's scaler is the train split's statistics, not the whole panel's.
    panel = load_panel(small_csv, window_size=WINDOW)
    train = panel.part("train")[["E1", "E2"]].to_numpy()
    hp = ck["hyper_parameters"]
    np.testing.assert_allclose(hp["scaler"]["mean"], np.nanmean(train, axis=0), rtol=1e-12)
    np.testing.assert_allclose(hp["scaler"]["std"], np.nanstd(train, axis=0), rtol=1e-12)
    # c0 is mean-reverting: a constant anchor (stationary_anchor=constant) -> anchor_len 0
    assert len(hp["scaler"]["window_scale"]) == 2 and hp["scaler"]["anchor_len"] == 0
    assert hp["model"]["direction"] == "causal"
    full = panel.frame[["E1", "E2"]].to_numpy()
    assert not np.allclose(hp["scaler"]["mean"], np.nanmean(full, axis=0))
    assert hp["cluster"]["features"] == ["E1", "E2"] and hp["window_size"] == WINDOW
    assert hp["model"]["d_model"] == 16 and hp["sde"]["num_diffusion_timesteps"] == 1000

    assert hp["t_sampling"]["kind"] == "lognormal"  # conf/train.yaml

    cfg2 = make_cfg(
        tmp_path,
        small_csv,
        clusters_json,
        "trainer.max_epochs=3",
        f"ckpt_path={last}",
        "t_sampling.kind=uniform",  # a resumed run keeps the checkpoint's t draws
        run="run2",
    )
    assert cfg2.cluster.checkpoint == str(last)  # the option came from the checkpoint
    run_train(cfg2)
    s = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert s["epochs"] == 3 and s["global_step"] == 12  # 1 resumed + 2 new epochs of 4 steps
    ck2 = torch.load(tmp_path / "run2" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ck2["hyper_parameters"]["t_sampling"] == hp["t_sampling"]


def test_nan_guard_stops_without_saving(tmp_path, small_csv, clusters_json, monkeypatch, capsys):
    from mamba_denoiser.training import DenoiserModule

    orig = DenoiserModule.diffusion_loss

    def poisoned(self, x0, mask, t=None, eps=None):
        loss, terms = orig(self, x0, mask, t, eps)
        return loss * float("nan") if self.global_step >= 2 else loss, terms

    monkeypatch.setattr(DenoiserModule, "diffusion_loss", poisoned)
    cfg = make_cfg(tmp_path, small_csv, clusters_json)
    with pytest.raises(SystemExit) as exc:
        run_train(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Lower the learning rate (optim.lr=...)" in err and "trainer.precision=32-true" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # failed before its first checkpoint: no run dir


def test_failure_after_a_checkpoint_keeps_it_and_records_the_failure(
    tmp_path, small_csv, clusters_json, monkeypatch, capsys
):
    from mamba_denoiser.training import DenoiserModule

    orig = DenoiserModule.diffusion_loss

    def poisoned(self, x0, mask, t=None, eps=None):
        loss, terms = orig(self, x0, mask, t, eps)
        return loss * float("nan") if self.global_step >= 5 else loss, terms

    monkeypatch.setattr(DenoiserModule, "diffusion_loss", poisoned)
    cfg = make_cfg(tmp_path, small_csv, clusters_json)  # 4 steps per epoch: epoch 1 saved
    with pytest.raises(SystemExit):
        run_train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and "training loss is nan" in s["error"]
    assert s["cluster_id"] == 0 and s["features"] == ["E1", "E2"]


@pytest.mark.e2e
def test_missing_clusters_file_is_a_clear_error(tmp_path, small_csv):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "data=csv",
            f"data.path={small_csv}",
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Run `python cluster.py` first" in r.stderr
    assert not (tmp_path / "run").exists()


def cli(tmp_path, csv, clusters, *args, flags=()):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *flags,
            *base_overrides(tmp_path, csv, clusters),
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_ddp_cpu_two_processes_one_run_dir(tmp_path, small_csv, clusters_json):
    runs = tmp_path / "runs"
    r = cli(
        tmp_path,
        small_csv,
        clusters_json,
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "batch_size=8",
        f"hydra.run.dir={runs}/ddp",
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    assert (runs / "ddp" / "checkpoints" / "last.ckpt").exists()
    s = json.loads((runs / "ddp" / "summary.json").read_text())
    assert s["global_step"] == 4  # batches split over 2 ranks, limit 4 per epoch
    # children made no run directories (the statsmodels fit cache, outputs/cache, is shared)
    made = sorted(p.name for p in (tmp_path / "outputs").glob("*"))
    assert made in ([], ["cache"]), made


@pytest.mark.e2e
@pytest.mark.slow
def test_multirun_two_clusters_writes_checkpoints_and_summary(tmp_path, small_csv, clusters_json):
    sweep = tmp_path / "sweep"
    r = cli(
        tmp_path,
        small_csv,
        clusters_json,
        "cluster=c0,c1",
        f"hydra.sweep.dir={sweep}",
        flags=["-m"],
    )
    assert r.returncode == 0, r.stderr[-4000:]
    ckpts = sorted(sweep.glob("*/checkpoints/last.ckpt"))
    assert len(ckpts) == 2
    table = (sweep / "summary.md").read_text()
    assert "| c0 | mean_reverting | 2 | 2 |" in table and "| c1 | trending | 1 | 2 |" in table
    assert "Training sweep" in r.stdout


@pytest.mark.slow
def test_torch_compile_trains_and_checkpoint_loads_uncompiled(tmp_path, small_csv, clusters_json):
    from mamba_denoiser.training import DenoiserModule

    cfg = make_cfg(
        tmp_path,
        small_csv,
        clusters_json,
        "compile=true",
        "trainer.max_epochs=1",
        "validate_at_init=false",
    )
    run_train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=False)
    assert not any("_orig_mod" in k for k in ck["state_dict"])
    module = DenoiserModule.load_from_checkpoint(last, map_location="cpu", compile=False)
    x = torch.randn(2, WINDOW, 2)
    out = module(x, torch.tensor([10, 500]), torch.ones_like(x, dtype=torch.bool))
    assert out.shape == x.shape and torch.isfinite(out).all()


# ---- refusals before training (each leaves no run directory) ---------------------------


def _with_features(clusters_json, cluster_id, features):
    doc = json.loads(clusters_json.read_text())
    doc["clusters"][cluster_id]["features"] = features
    doc["clusters"][cluster_id]["n_features"] = len(features)
    clusters_json.write_text(json.dumps(doc))
    return clusters_json


@pytest.mark.parametrize(
    "features, message",
    [
        (["E1", "forward_returns"], "is a target"),
        (["E1", "D1"], "is a passthrough column"),
        (["E1", "date_id"], "is the id column"),
        (["E1", "NOPE"], "is not a column of"),
        (["E1", "M1"], "more than one cluster"),  # M1 is in c1 too
    ],
)
def test_clusters_json_is_checked_against_the_panel(
    tmp_path, small_csv, clusters_json, capsys, features, message
):
    _with_features(clusters_json, 0, features)
    cfg = make_cfg(tmp_path, small_csv, clusters_json, "cluster=c0")
    with pytest.raises(SystemExit) as exc:
        run_train(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_resume_with_a_mismatching_cluster_is_refused(tmp_path, small_csv, clusters_json, capsys):
    cfg = make_cfg(tmp_path, small_csv, clusters_json, "cluster=c1", "trainer.max_epochs=1")
    run_train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg2 = make_cfg(
        tmp_path, small_csv, clusters_json, "cluster=c2", f"ckpt_path={last}", run="run2"
    )
    with pytest.raises(SystemExit):
        run_train(cfg2)
    assert "checkpoint of cluster c1, but cluster=c2" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_unreadable_checkpoint_is_a_clear_error(tmp_path, small_csv, clusters_json, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    cfg = make_cfg(tmp_path, small_csv, clusters_json, f"ckpt_path={bad}")
    with pytest.raises(SystemExit):
        run_train(cfg)
    assert "cannot be read as a safe (weights-only) torch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_hparams_and_final_metrics_reach_tensorboard(tmp_path, small_csv, clusters_json):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(tmp_path, small_csv, clusters_json, "cluster=c1", "trainer.max_epochs=1")
    run_train(cfg)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "hp/best_val_noise_mse" in acc.Tags()["scalars"]
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert session.hparams["cluster"].string_value == "c1"
    assert session.hparams["type"].string_value == "trending"
    assert session.hparams["direction"].string_value == "causal"
    assert session.hparams["lr"].number_value == pytest.approx(1e-4)


@pytest.mark.e2e
def test_trainer_gpu_without_a_gpu_is_a_clean_error(tmp_path, small_csv, clusters_json):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    r = cli(
        tmp_path,
        small_csv,
        clusters_json,
        "trainer=gpu",
        "trainer.accelerator=gpu",  # base_overrides pin cpu; this is what trainer=gpu sets
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "asks for a CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_resume_needs_only_the_checkpoint(tmp_path, small_csv, clusters_json):
    cfg = make_cfg(tmp_path, small_csv, clusters_json, "cluster=c2", "trainer.max_epochs=1")
    run_train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"ckpt_path={last}",
            "data=csv",
            f"data.path={small_csv}",
            f"data.window_size={WINDOW}",
            "data.anchor_len=4",
            "experiment=smoke",
            "trainer.max_epochs=2",
            "trainer.accelerator=cpu",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train").glob("*_c2"))  # named after the checkpoint
    assert len(runs) == 1
    s = json.loads((runs[0] / "summary.json").read_text())
    assert s["cluster_id"] == 2 and s["features"] == ["M2"] and s["epochs"] == 2


@pytest.mark.e2e
@pytest.mark.slow
def test_multirun_from_a_fresh_directory_without_overrides(tmp_path):
    """The README's commands as a new user types them: no path or sweep-dir override."""
    env = {k: v for k, v in os.environ.items() if k != "MAMBA_DENOISER_ROOT"}
    for args in (
        [str(ROOT / "cluster.py"), "plots=false", "data.n_rows=1200"],
        [str(ROOT / "train.py"), "-m", "cluster=c0,c1", "experiment=smoke", "data.n_rows=1200"],
    ):
        r = subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-4000:]
    sweeps = list((tmp_path / "outputs" / "train_multirun").iterdir())
    assert len(sweeps) == 1
    assert len(list(sweeps[0].glob("*/checkpoints/last.ckpt"))) == 2
    assert (sweeps[0] / "summary.md").exists()
    assert r.stdout.count("Training c0 ") == 1  # each log line once


# ---- heads: diffusion | predictive | both ----------------------------------------------


@pytest.mark.parametrize("head", ["both", "predictive"])
def test_fast_dev_run_each_head(tmp_path, small_csv, clusters_json, head):
    cfg = make_cfg(tmp_path, small_csv, clusters_json, f"head={head}", "+trainer.fast_dev_run=true")
    run_train(cfg)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "ok" and s["heads"] == head and s["global_step"] == 1


@pytest.mark.parametrize(
    "head, monitor", [("both", "val/noise_mse"), ("predictive", "val/predictive_nll")]
)
def test_head_checkpoint_carries_sigma_and_loads_back(
    tmp_path, small_csv, clusters_json, head, monitor
):
    from mamba_denoiser.classical import noise_sigma
    from mamba_denoiser.diffusion import residual
    from mamba_denoiser.training import DenoiserModule

    cfg = make_cfg(tmp_path, small_csv, clusters_json, f"head={head}", "trainer.max_epochs=1")
    run_train(cfg)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["monitor"] == monitor and s["best_checkpoint"].endswith(".ckpt")
    assert s["last_val_predictive_nll"] is not None and np.isfinite(s["last_val_predictive_nll"])
    assert (s["best_val_noise_mse"] is None) == (head == "predictive")
    ck = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    hp = ck["hyper_parameters"]
    assert hp["heads"] == head and hp["predictive"]["n_components"] == 3
    # σ in window units from the TRAIN rows: native σ / (train std · window scale)
    panel = load_panel(small_csv, window_size=WINDOW)
    raw = panel.frame[["E1", "E2"]].to_numpy()
    native = [noise_sigma(raw[:, j], tuple(panel.bounds["train"])).sigma for j in range(2)]
    unit = np.asarray(hp["scaler"]["std"]) * np.asarray(hp["scaler"]["window_scale"])
    np.testing.assert_allclose(hp["noise_sigma"], np.maximum(np.asarray(native) / unit, 0.05))
    assert isinstance(hp["noise_sigma"], list) and 0.05 < hp["noise_sigma"][0] < 1.0

    module = DenoiserModule(**{**hp, "compile": False})
    module.load_state_dict(ck["state_dict"])  # strict: the weights fit the described model
    module.eval()
    w = torch.randn(2, WINDOW, 2)
    mask = torch.ones_like(w, dtype=torch.bool)
    # the residual head (the default) around a filter predicting N(0, 1), noise N(0, 0.3²)
    assert hp["predictive"]["residual"] is True
    prior_mu, prior_var = torch.zeros_like(w), torch.ones(*w.shape, 2)
    nv, ep = torch.tensor([[0.09, 0.09]] * 2), torch.tensor([[1.0, 0.0]] * 2)
    fw = torch.tensor([[1.0, 0.0]] * 2)  # no jump
    with torch.no_grad():
        innov = residual.innovations(w, mask, prior_mu, prior_var[..., 0], nv, ep)
        out = module.predict_residual(w, mask, innov)
        s_hat, div, _, _ = residual.window_outputs(
            out, w, mask, prior_mu, prior_var, nv, ep, fw, anchor_len=hp["scaler"]["anchor_len"]
        )
    # c0 is mean-reverting: a constant anchor (stationary_anchor=constant), so every
    # position after the first has a one-step prediction (a window anchor would need 4 rows)
    assert hp["scaler"]["anchor_len"] == 0
    assert torch.isfinite(s_hat[:, 1:]).all() and torch.isnan(s_hat[:, :1]).all()
    assert ((div[:, 1:] > 0) & (div[:, 1:] < 1.5)).all()
    # the predictive head's own weights, chosen on validation rows by its own metric
    assert s["predictive_checkpoint"] == "filter" or s["predictive_checkpoint"].endswith(".ckpt")
    assert np.isfinite(s["best_val_predictive"])
    want = "val/predictive_risk" if head == "both" else "val/predictive_nll"
    assert s["predictive_monitor"] == want
    if head == "predictive":
        with pytest.raises(ValueError, match="no ε-prediction head"):
            module(w, torch.tensor([1, 2]), mask)
    else:
        assert module(w, torch.tensor([1, 2]), mask).shape == w.shape


def test_checkpoint_without_head_hparams_loads_as_diffusion(tmp_path, small_csv, clusters_json):
    """A checkpoint written before heads existed: no heads/predictive/noise_sigma keys (nor
    t_sampling, which came later)."""
    from mamba_denoiser.training import DenoiserModule

    cfg = make_cfg(tmp_path, small_csv, clusters_json, "trainer.max_epochs=1")
    run_train(cfg)
    ck = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    hp = {
        k: v
        for k, v in ck["hyper_parameters"].items()
        if k not in ("heads", "predictive", "noise_sigma", "t_sampling")  # all newer keys
    }
    assert not any(k.startswith("model.pred_") for k in ck["state_dict"])
    module = DenoiserModule(**{**hp, "compile": False})
    module.load_state_dict(ck["state_dict"])
    assert module.heads == "diffusion" and not module.model.has_predictive_head


def test_resume_with_another_head_is_refused(tmp_path, small_csv, clusters_json, capsys):
    cfg = make_cfg(tmp_path, small_csv, clusters_json, "head=predictive", "trainer.max_epochs=1")
    run_train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg2 = make_cfg(tmp_path, small_csv, clusters_json, f"ckpt_path={last}", run="run2")
    with pytest.raises(SystemExit):
        run_train(cfg2)
    assert "resume with head=predictive" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_all_clusters_experiments_train_both_heads():
    register_cluster_options(["clusters=/nonexistent"])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for exp in ("all_clusters", "cpu_all_clusters"):
            cfg = compose("train", overrides=[f"experiment={exp}"])
            assert cfg.head.name == "both"
            assert cfg.callbacks.model_checkpoint.monitor == "val/noise_mse"
        cfg = compose("train", overrides=["experiment=cpu_all_clusters", "head=predictive"])
        assert cfg.callbacks.model_checkpoint.monitor == "val/predictive_nll"
        assert cfg.callbacks.early_stopping.monitor == "val/predictive_nll"
        assert compose("train").head.name == "diffusion"


def test_both_heads_split_one_batch_in_one_pass():
    """joint_loss == diffusion loss on the first half + weight × NLL on the second half,
    and one backward reaches both heads."""
    from mamba_denoiser.training import DenoiserModule

    torch.manual_seed(0)
    module = DenoiserModule(
        cluster={"id": 0, "type": "mean_reverting", "strategy": "tv", "features": ["a", "b"]},
        window_size=WINDOW,
        scaler={"anchor_len": 4},
        model={"d_model": 16, "n_layers": 1, "d_state": 4, "dropout": 0.0},
        heads="both",
        predictive={"weight": 0.5},
        noise_sigma=[0.3, float("nan")],
    )
    torch.testing.assert_close(module.noise_sigma_w, torch.tensor([0.3, 0.05]))  # NaN -> floor
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(5, WINDOW, 2, generator=g)
    mask = torch.rand(5, WINDOW, 2, generator=g) > 0.1
    x = torch.where(mask, x, torch.nan)
    t = torch.tensor([3, 400, 999])
    eps = torch.randn(3, WINDOW, 2, generator=g)
    loss, terms = module.joint_loss(x, mask, t, eps)
    d_loss, _ = module.diffusion_loss(x[:3], mask[:3], t, eps)
    nll, _ = module.predictive_loss(x[3:], mask[3:])
    torch.testing.assert_close(loss, d_loss + 0.5 * nll)
    torch.testing.assert_close(terms["predictive_nll"], nll.detach())
    loss.backward()
    for name in ("model.head.weight", "model.pred_head.weight", "model.pred_embed"):
        grad = dict(module.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def _tiny_module(**kw):
    from mamba_denoiser.training import DenoiserModule

    return DenoiserModule(
        cluster={"id": 0, "type": "mean_reverting", "strategy": "tv", "features": ["a", "b"]},
        window_size=WINDOW,
        scaler={"anchor_len": 4},
        model={"d_model": 16, "n_layers": 1, "d_state": 4, "dropout": 0.0},
        **kw,
    )


def test_lognormal_t_centres_the_noise_level_where_the_posterior_mean_works():
    """t_sampling=lognormal: τ_t of the draws has its median at c · geomean σ, and the
    uniform share is uniform; uniform keeps DDPM's draws (same t as torch.randint)."""
    from mamba_denoiser.diffusion.sampling import diffusion_noise

    sigma = [0.2, 0.8]
    ts = {"kind": "lognormal", "c": 0.5, "spread": 0.3, "uniform_share": 0.0}
    module = _tiny_module(noise_sigma=sigma, t_sampling=ts)
    T = module.sde.num_timesteps
    tau_grid = diffusion_noise(module.sde)
    tau = tau_grid[module.sample_t(20000, generator=torch.Generator().manual_seed(0))]
    centre = 0.5 * float(np.exp(np.mean(np.log(sigma))))
    assert float(tau.median()) == pytest.approx(centre, rel=0.05)
    spread = np.hypot(0.3, np.std(np.log(sigma), ddof=1))  # beyond the features' own spread
    assert float(tau.log().std()) == pytest.approx(spread, rel=0.1)

    module = _tiny_module(noise_sigma=sigma, t_sampling={**ts, "uniform_share": 0.2})
    t = module.sample_t(20000, generator=torch.Generator().manual_seed(0))
    tau = tau_grid[t]
    near = ((tau > centre / 8) & (tau < centre * 8)).float().mean()
    assert 0.75 < float(near) < 0.85  # 80 % log-normal, the rest uniform (mostly far above)
    assert int(t.max()) > 0.9 * T  # the uniform share reaches large t
    again = module.sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)  # validation's fixed generator gives fixed draws

    plain = _tiny_module(noise_sigma=sigma)  # no t_sampling: uniform, as old checkpoints
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(plain.sample_t(64, generator=g1), torch.randint(0, T, (64,), generator=g2))
    with pytest.raises(ValueError, match="needs noise_sigma"):
        _tiny_module(t_sampling={"kind": "lognormal"})
    with pytest.raises(ValueError, match="uniform or lognormal"):
        _tiny_module(noise_sigma=sigma, t_sampling={"kind": "edm"})


# ---- how a run went: reference, last epoch, failures in a sweep, Ctrl-C, threads -------


def _scripted_val_noise_mse(monkeypatch, factor):
    """Validation val/noise_mse := factor(epoch) × the i.i.d. reference of the same batch."""
    from mamba_denoiser.training import DenoiserModule

    orig = DenoiserModule._diffusion_terms

    def scripted(self, x_t, t, eps, eps_hat, mask):
        loss, terms = orig(self, x_t, t, eps, eps_hat, mask)
        if not self.training:
            terms["noise_mse"] = terms["noise_mse_iid_baseline"] * factor(self.current_epoch)
        return loss, terms

    monkeypatch.setattr(DenoiserModule, "_diffusion_terms", scripted)


@pytest.mark.slow
@pytest.mark.parametrize(
    "factor, status, best_epoch",
    [
        (lambda e: 1.5 / (1 + e), "ok", 1),  # improving: best in the last epoch, below ref
        (lambda e: 1.5 * (1 + e), "worse_than_reference", 0),  # best 1.5 × reference
    ],
)
def test_summary_says_how_training_went(
    tmp_path, small_csv, clusters_json, monkeypatch, caplog, factor, status, best_epoch
):
    _scripted_val_noise_mse(monkeypatch, factor)
    cfg = make_cfg(tmp_path, small_csv, clusters_json, "trainer.max_epochs=2")
    with caplog.at_level("INFO", logger="mamba_denoiser"):
        run_train(cfg)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    ref = s["val_noise_mse_iid_baseline"]
    assert s["status"] == status and s["epochs"] == 2 and s["best_epoch"] == best_epoch
    assert s["best_val_noise_mse"] == pytest.approx(factor(best_epoch) * ref, rel=1e-5)
    assert s["best_is_last_epoch"] is (best_epoch == 1)
    assert s["best_checkpoint"].endswith(f"best-epoch{best_epoch:03d}.ckpt")
    assert Path(s["best_checkpoint"]).is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    above = [m for m in warnings if "above its i.i.d. reference" in m]
    if status == "worse_than_reference":
        assert len(above) == 1 and above[0].startswith("c0: best val noise MSE")
        assert f"{s['best_val_noise_mse']:.4f}" in above[0] and f"{ref:.4f}" in above[0]
    else:
        assert not above
    last = [r.getMessage() for r in caplog.records if "came in the last epoch" in r.getMessage()]
    assert len(last) == (1 if best_epoch == 1 else 0)


def _poison_cluster(monkeypatch, cluster_id, from_step=0):
    from mamba_denoiser.training import DenoiserModule

    orig = DenoiserModule.diffusion_loss

    def poisoned(self, x0, mask, t=None, eps=None):
        loss, terms = orig(self, x0, mask, t, eps)
        bad = self.hparams.cluster["id"] == cluster_id and self.global_step >= from_step
        return (loss * float("nan") if bad and self.training else loss), terms

    monkeypatch.setattr(DenoiserModule, "diffusion_loss", poisoned)


@pytest.mark.slow
def test_failed_job_of_a_multirun_records_itself_and_returns(
    tmp_path, small_csv, clusters_json, monkeypatch, capsys
):
    from omegaconf import OmegaConf

    from mamba_denoiser.sweep import SweepSummary

    _poison_cluster(monkeypatch, 1)
    sweep = tmp_path / "sweep"
    for job, cluster in (("0_c0", "c0"), ("1_c1", "c1")):
        cfg = make_cfg(
            tmp_path,
            small_csv,
            clusters_json,
            f"cluster={cluster}",
            "trainer.max_epochs=1",
            "hydra.mode=MULTIRUN",
            run=f"sweep/{job}",
        )
        best = run_train(cfg)  # no SystemExit: the sweep goes on
        assert (best != best) == (cluster == "c1")  # the failed job returns NaN
    err = capsys.readouterr().err
    assert "error: training loss is nan" in err and "Traceback" not in err
    # failed before its first checkpoint, yet its directory and summary are kept
    s = json.loads((sweep / "1_c1" / "summary.json").read_text())
    assert s["status"] == "failed" and s["exit_code"] == 2 and s["cluster_id"] == 1
    assert "training loss is nan" in s["error"] and not list(sweep.glob("1_c1/checkpoints/*"))
    assert json.loads((sweep / "0_c0" / "summary.json").read_text())["status"] in (
        "ok",
        "worse_than_reference",
    )
    with pytest.raises(SystemExit) as exc:
        SweepSummary().on_multirun_end(
            OmegaConf.create({"task_name": "train", "hydra": {"sweep": {"dir": str(sweep)}}})
        )
    assert exc.value.code == 2
    table = (sweep / "summary.md").read_text()
    assert "| c0 | mean_reverting | 2 | 1 |" in table
    assert "| c1 | trending | 1 | 0 |" in table and "| failed: training loss is nan" in table
    assert "error: 1 of 2 training job(s) failed: c1 (training loss is nan" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
@pytest.mark.parametrize("at_step, kept", [(1, False), (6, True)])  # 4 steps an epoch
def test_ctrl_c_is_recorded_as_interrupted(
    tmp_path, small_csv, clusters_json, monkeypatch, capsys, at_step, kept
):
    import signal

    from mamba_denoiser.training import DenoiserModule

    orig = DenoiserModule.training_step

    def ctrl_c(self, batch, batch_idx):
        if self.global_step == at_step:
            raise KeyboardInterrupt
        return orig(self, batch, batch_idx)

    monkeypatch.setattr(DenoiserModule, "training_step", ctrl_c)
    cfg = make_cfg(tmp_path, small_csv, clusters_json, "trainer.max_epochs=3")
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exc:
            run_train(cfg)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not SIG_IGN
    finally:
        signal.signal(signal.SIGINT, handler)
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "SystemExit" not in err
    if not kept:  # before the first checkpoint: nothing to keep, as for a failure
        assert not (tmp_path / "run").exists() and "interrupted" in err
        return
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "interrupted" and "error" not in s
    assert s["epochs"] == 1 and s["global_step"] == at_step and s["best_epoch"] == 0
    assert s["best_checkpoint"].endswith("best-epoch000.ckpt")
    assert Path(s["best_checkpoint"]).is_file() and Path(s["last_checkpoint"]).is_file()
    assert err.strip().splitlines()[-1].startswith("interrupted: c0 stopped after 1 epoch(s)")


@pytest.mark.parametrize(
    "cores, n_jobs, threads",
    [(16, 4, 4), (16, 3, 5), (2, 10, 1), (16, -1, 1), (16, -2, 1), (8, -5, 2), (8, None, 8)],
)
def test_threads_per_job(cores, n_jobs, threads):
    from mamba_denoiser.launch import threads_per_job

    assert threads_per_job(cores, n_jobs) == threads


def test_joblib_cpu_jobs_share_the_cores(tmp_path, small_csv, clusters_json, monkeypatch, caplog):
    from mamba_denoiser import launch, train_job

    monkeypatch.setattr(launch, "cpu_cores", lambda: 8)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    make_cfg(
        tmp_path,
        small_csv,
        clusters_json,
        f"hydra.launcher._target_={joblib}",
        "+hydra.launcher.n_jobs=2",
    )
    where = train_job._launch()  # Hydra's runtime config, read once by the job
    assert where.joblib and where.n_jobs == 2
    with caplog.at_level("INFO", logger="mamba_denoiser"):
        assert launch.share_cpu_threads("cpu", where) == 4
    assert torch.get_num_threads() == 4  # conftest restores it afterwards
    assert sum("4 torch thread(s) per job" in r.getMessage() for r in caplog.records) == 1
    assert launch.share_cpu_threads("gpu", where) is None
    make_cfg(tmp_path, small_csv, clusters_json)  # the basic (sequential) launcher
    assert launch.share_cpu_threads("cpu", train_job._launch()) is None


@pytest.mark.e2e
@pytest.mark.slow
def test_multirun_goes_on_past_a_failed_job_and_exits_nonzero(tmp_path, small_csv, clusters_json):
    """The real command line: c1's NaN loss must not abort the sweep (Hydra does not catch
    SystemExit), c0 still trains, summary.md lists c1 as failed, and the exit code is 2."""
    wrapper = tmp_path / "train_nan_c1.py"
    wrapper.write_text(
        "import runpy, sys\n"
        "from mamba_denoiser.training import DenoiserModule\n"
        "orig = DenoiserModule.diffusion_loss\n"
        "def poisoned(self, x0, mask, t=None, eps=None):\n"
        "    loss, terms = orig(self, x0, mask, t, eps)\n"
        "    bad = self.training and self.hparams.cluster['id'] == 1\n"
        "    return (loss * float('nan') if bad else loss), terms\n"
        "DenoiserModule.diffusion_loss = poisoned\n"
        f"sys.argv[0] = {str(ROOT / 'train.py')!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [
            sys.executable,
            str(wrapper),
            "-m",
            *base_overrides(tmp_path, small_csv, clusters_json),
            "cluster=c1,c0",  # the failing job first: the next one must still run
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2, r.stderr[-4000:]
    assert (sweep / "1_c0" / "checkpoints" / "last.ckpt").exists()
    assert json.loads((sweep / "0_c1" / "summary.json").read_text())["status"] == "failed"
    table = (sweep / "summary.md").read_text()
    assert "| c0 | mean_reverting | 2 | 1 |" in table and "| c1 | trending | 1 | 0 |" in table
    assert "Failed: 1 of 2 training job(s) failed: c1 (training loss is nan" in table
    assert "Training sweep" in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 training job(s) failed: c1 (training loss is nan")
    assert "Traceback" not in r.stderr


def test_only_mean_reverting_clusters_take_the_constant_anchor():
    from mamba_denoiser.errors import ConfigError
    from mamba_denoiser.train_source import anchor_len

    data = {"anchor_len": 7}
    for mode, typ, want in [
        ("constant", "mean_reverting", 0),
        ("constant", "random_walk", 7),
        ("constant", "trending", 7),
        ("window", "mean_reverting", 7),
    ]:
        assert anchor_len(mode, {"type": typ}, data) == want, (mode, typ)
    with pytest.raises(ConfigError, match="stationary_anchor='both'"):
        anchor_len("both", {"type": "trending"}, data)


@pytest.mark.parametrize(
    "env, rank",
    [
        ({}, 0),
        ({"SLURM_PROCID": "3"}, 3),  # a Slurm task: no LOCAL_RANK / NODE_RANK
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "0"}, 0),
        ({"RANK": "2", "SLURM_PROCID": "0"}, 2),  # torchrun inside an allocation
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),  # Lightning spawn, second node
        ({"LOCAL_RANK": "1"}, 1),
    ],
)
def test_rank_zero_is_decided_from_the_launcher_ranks(env, rank):
    from mamba_denoiser.launch import launched_rank

    assert launched_rank(env) == rank
