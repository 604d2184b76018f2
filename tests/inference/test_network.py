"""load_cluster_model's Lightning-free ClusterNetwork computes DenoiserModule's numbers.

No training: a tiny DenoiserModule with perturbed weights is written by Lightning's own
checkpoint code (Trainer.save_checkpoint, as train.py's ModelCheckpoint writes it), read
back with load_cluster_model, and both are run on the same input (torch.equal).
"""

from __future__ import annotations

import inspect

import pytest
import torch

from mamba_denoiser.inference import load_cluster_model
from mamba_denoiser.network import TRAINING_ONLY, ClusterNetwork

WINDOW = 16
CLUSTER = {"id": 3, "type": "random_walk", "strategy": "balanced", "features": ["a", "b", "c"]}
SCALER = {"mean": [0.0, 1.0, -2.0], "std": [1.0, 2.0, 0.5], "window_scale": [1.5, 1.0, 2.0]}


def _module(heads: str, direction: str, use_mask: bool, loss: dict | None):
    from mamba_denoiser.training import DenoiserModule

    torch.manual_seed(0)
    module = DenoiserModule(
        cluster=CLUSTER,
        window_size=WINDOW,
        scaler={**SCALER, "anchor_len": 4},
        model={
            "d_model": 16,
            "n_layers": 2,
            "d_state": 4,
            "dropout": 0.1,  # eval mode must switch it off in both
            "direction": direction,
            "use_mask": use_mask,
        },
        sde={"num_diffusion_timesteps": 200, "schedule": "cosine"},
        loss=loss,
        heads=heads,
        noise_sigma=None if heads == "diffusion" else [0.3, float("nan"), 0.01],
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adaLN-Zero starts at zero: make every path carry signal
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def _save(module, path):
    import lightning as L

    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


@pytest.mark.parametrize(
    "heads, direction, use_mask, loss",
    [
        ("diffusion", "causal", True, None),
        ("diffusion", "bidirectional", False, {"strategy": "fourier", "guidance_weight": 0.1}),
        ("both", "causal", True, {"strategy": "tv"}),
        ("predictive", "causal", False, None),
    ],
)
def test_loaded_network_computes_the_training_modules_numbers(
    tmp_path, heads, direction, use_mask, loss
):
    module = _module(heads, direction, use_mask, loss)
    _save(module, tmp_path / "m.ckpt")
    loaded = load_cluster_model(tmp_path / "m.ckpt")
    net = loaded.module
    module.eval()
    assert type(net) is ClusterNetwork and not net.training
    assert list(net.state_dict()) == list(module.state_dict())
    for k, v in module.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    assert torch.equal(net.noise_sigma_w, module.noise_sigma_w)
    assert net.anchor_len == module.anchor_len == loaded.anchor_len == 4
    assert (net.use_mask, net.heads, net.predictive) == (use_mask, heads, module.predictive)
    assert net.strategy == module.loss_fn.strategy == module.strategy
    assert net.strategy == (loss or {}).get("strategy", "balanced")  # auto: the cluster type's
    for name in ("betas", "alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        assert torch.equal(getattr(net.sde, name), getattr(module.sde, name)), name

    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, WINDOW, 3, generator=g)
    mask = torch.rand(4, WINDOW, 3, generator=g) > 0.2
    x_nan = torch.where(mask, x, torch.full_like(x, float("nan")))
    with torch.no_grad():
        if heads != "predictive":
            t = torch.tensor([0, 17, 120, 199])
            assert torch.equal(net(x, t, mask), module(x, t, mask))
            assert torch.equal(net(x, t), module(x, t))
        if heads != "diffusion":
            for a, b in zip(net.predict_mixture(x_nan, mask), module.predict_mixture(x_nan, mask)):
                assert torch.equal(a, b)


def test_network_takes_the_training_modules_arguments():
    """DenoiserModule's own arguments are the training-only ones; the rest are the
    network's (NetworkMixin._build_network), so every checkpoint train.py writes loads into
    ClusterNetwork, with every network argument recorded (an unknown key still fails)."""
    from mamba_denoiser.network import NetworkMixin, network_defaults
    from mamba_denoiser.training import DenoiserModule

    own = inspect.signature(DenoiserModule.__init__).parameters
    assert {k for k, p in own.items() if p.kind is p.KEYWORD_ONLY} == set(TRAINING_ONLY)
    network = set(inspect.signature(NetworkMixin._build_network).parameters) - {"self"}
    assert not network & set(TRAINING_ONLY)
    module = _module("diffusion", "causal", use_mask=False, loss=None)
    assert set(module.hparams) == network | set(TRAINING_ONLY)
    assert module.hparams["predictive"] is None and module.hparams["noise_sigma"] is None
    assert set(network_defaults()) == network - {"cluster"}
    with pytest.raises(TypeError):
        ClusterNetwork.from_hparams({"cluster": CLUSTER, "not_an_option": 1})
    with pytest.raises(TypeError):
        DenoiserModule(cluster=CLUSTER, not_an_option=1)
