"""MultivariateMambaDenoiser: API shapes, conditioning, masking, causality, streaming,
overfitting, autocast."""

from __future__ import annotations

import pytest
import torch

from mamba_denoiser.diffusion import VPSDE, DenoisingLoss
from mamba_denoiser.models import MultivariateMambaDenoiser


def small_model(**kw):
    args = dict(n_features=3, window_size=16, d_model=16, n_layers=2, d_state=4, dropout=0.0)
    return MultivariateMambaDenoiser(**{**args, **kw})


def perturb(model, scale=0.1, seed=0):
    """Move the zero-initialised adaLN/head weights so outputs depend on everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def test_issue_api_call():
    torch.manual_seed(0)
    model = MultivariateMambaDenoiser(n_features=20, window_size=60, d_model=128, n_layers=4)
    x_noisy = torch.randn(4, 60, 20)
    t = torch.randint(0, 1000, (4,))
    output = model(x_noisy, t)
    assert output.shape == (4, 60, 20)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("n_features", [1, 101])
@pytest.mark.parametrize("L", [1, 37, 16])
def test_any_width_and_length(n_features, L):
    model = perturb(small_model(n_features=n_features, window_size=16))
    out = model(torch.randn(2, L, n_features), torch.tensor([3, 999]))
    assert out.shape == (2, L, n_features)
    assert torch.isfinite(out).all()


def test_timestep_forms_and_conditioning():
    torch.manual_seed(0)
    model = perturb(small_model())
    x = torch.randn(2, 16, 3)
    out_int = model(x, torch.tensor([10, 10]))
    torch.testing.assert_close(model(x, 10), out_int)
    torch.testing.assert_close(model(x, torch.tensor([10.0, 10.0])), out_int)
    assert not torch.allclose(model(x, torch.tensor([10, 900])), out_int)  # t matters
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="x_t must be"):
        model(torch.randn(2, 16, 4), 1)


def test_defaults_and_direction():
    model = small_model()
    assert model.direction == "causal" and model.use_mask
    assert all(type(b).__name__ == "MambaBlock" for b in model.blocks)
    bi = small_model(direction="bidirectional")
    assert bi.direction == "bidirectional"
    assert all(type(b).__name__ == "BiMambaBlock" for b in bi.blocks)
    with pytest.raises(ValueError, match="direction"):
        small_model(direction="backward")
    with pytest.raises(ValueError, match="causal"):
        bi(torch.randn(1, 4, 3), 1, return_state=True)


@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
def test_untrained_model_predicts_zero_and_blocks_are_identity(direction):
    torch.manual_seed(0)
    model = small_model(direction=direction)
    x, t = torch.randn(2, 16, 3), torch.tensor([5, 500])
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: seen.append(torch.equal(out, args[0])))
    assert torch.equal(model(x, t), torch.zeros_like(x))
    assert seen == [True] * len(model.blocks)


def test_mask_channels_make_unobserved_values_irrelevant():
    torch.manual_seed(0)
    model = perturb(small_model(use_mask=True))
    x = torch.randn(2, 16, 3)
    mask = torch.rand(2, 16, 3) > 0.3
    other = torch.where(mask, x, torch.full_like(x, float("nan")))
    out = model(x, torch.tensor([1, 2]), mask)
    torch.testing.assert_close(model(other, torch.tensor([1, 2]), mask), out)
    assert not torch.allclose(model(x, torch.tensor([1, 2])), out)  # the mask is an input
    with pytest.raises(ValueError, match="use_mask=False"):
        small_model(use_mask=False)(x, 1, mask)


def future_changed(x, mask, t):
    """x and mask with every row after t replaced (NaN and huge values included)."""
    g = torch.Generator().manual_seed(t)
    x2, mask2 = x.clone(), mask.clone()
    x2[:, t + 1 :] = 1e3 * torch.randn(x2[:, t + 1 :].shape, generator=g)
    x2[:, t + 1 :: 3, 0] = float("nan")
    mask2[:, t + 1 :] = torch.rand(mask2[:, t + 1 :].shape, generator=g) > 0.5
    mask2[:, t + 1 :: 3, 0] = False  # the NaN entries are unobserved
    return x2, mask2


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_causal_model_is_exactly_causal(backend):
    torch.manual_seed(0)
    model = perturb(small_model(backend=backend, dropout=0.1)).eval()
    x, mask = torch.randn(2, 14, 3), torch.rand(2, 14, 3) > 0.3
    steps = torch.tensor([5, 900])
    with torch.no_grad():
        out = model(x, steps, mask)
        for t in (0, 6, 12):
            x2, mask2 = future_changed(x, mask, t)
            out2 = model(x2, steps, mask2)
            assert torch.equal(out2[:, : t + 1], out[:, : t + 1]), t  # bit-identical
            assert not torch.allclose(out2[:, t + 1 :], out[:, t + 1 :])


def test_bidirectional_model_sees_the_future():
    # the control for the test above: the same change does move a bidirectional model
    torch.manual_seed(0)
    model = perturb(small_model(direction="bidirectional")).eval()
    x, mask = torch.randn(2, 14, 3), torch.rand(2, 14, 3) > 0.3
    with torch.no_grad():
        out = model(x, 5, mask)
        x2, mask2 = future_changed(x, mask, 6)
        assert not torch.allclose(model(x2, 5, mask2)[:, :7], out[:, :7])


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_causal_model_streams_in_chunks(backend):
    # chunks carrying the per-layer state give the one-pass output: this also fails if the
    # causal model depended on the absolute position within a chunk
    torch.manual_seed(0)
    model = perturb(small_model(backend=backend, dropout=0.1)).eval()
    x, mask = torch.randn(2, 23, 3), torch.rand(2, 23, 3) > 0.3
    x = x.masked_fill(~mask, float("nan"))
    steps = torch.tensor([5, 900])
    with torch.no_grad():
        full = model(x, steps, mask)
        outs, state = [], None
        for sl in (slice(0, 5), slice(5, 6), slice(6, 23)):
            y, state = model(x[:, sl], steps, mask[:, sl], state=state, return_state=True)
            outs.append(y)
        # restarting from a zero state is a different (shorter) sequence
        restart = model(x[:, 6:], steps, mask[:, 6:])
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-5)
    assert not torch.allclose(restart, full[:, 6:], atol=1e-3)
    assert len(state) == len(model.blocks)
    assert [s.ssm.shape for s in state] == [(2, 32, 4)] * 2  # d_inner = expand * d_model


@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
def test_backend_parity_through_the_model(direction):
    torch.manual_seed(0)
    model = perturb(small_model(backend="reference", direction=direction))
    x, t = torch.randn(2, 11, 3), torch.tensor([7, 300])
    grads = {}
    for backend in ("reference", "fused"):
        for block in model.blocks:
            block.backend = backend
        model.zero_grad()
        out = model(x, t)
        out.square().sum().backward()
        grads[backend] = (out.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads["fused"][0], grads["reference"][0], rtol=1e-4, atol=1e-5)
    for g_fused, g_ref in zip(grads["fused"][1], grads["reference"][1]):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-3, atol=1e-5)


def test_autocast_bf16_cpu_is_finite():
    torch.manual_seed(0)
    model = perturb(small_model(use_mask=True))
    x, t = torch.randn(2, 16, 3), torch.tensor([3, 700])
    mask = torch.rand(2, 16, 3) > 0.2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, mask)
        loss = out.float().square().mean()
    loss.backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    torch.testing.assert_close(out.float(), model(x, t, mask), rtol=0.1, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_scan_in_float32(dtype):
    torch.manual_seed(0)
    model = perturb(small_model())
    x, t = torch.randn(2, 16, 3), torch.tensor([3, 700])
    ref = model(x, t)
    with torch.autocast("cpu", dtype=dtype):  # Lightning "bf16-mixed" / "16-mixed"
        mixed = model(x, t)
    model.to(dtype)  # Lightning "bf16-true": weights and activations in low precision
    true_low = model(x.to(dtype), t)
    true_low.float().sum().backward()
    for out in (mixed, true_low):
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.05)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    sde = VPSDE(num_diffusion_timesteps=100)
    model = small_model(d_model=32)
    loss_fn = DenoisingLoss("random_walk", guidance_weight=0.01)
    x0 = torch.sin(torch.linspace(0, 6, 16))[None, :, None] * torch.randn(8, 1, 3)
    t = torch.randint(20, 80, (8,))
    x_t, eps = sde.sample(x0, t, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):  # at lr 3e-3 the loss is ~500x lower after ~100 steps
        eps_hat = model(x_t, t)
        loss = loss_fn(eps_hat, eps, sde.predict_x0(x_t, t, eps_hat))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


# ---- predictive head -------------------------------------------------------------------


def test_predictive_head_shapes_and_untrained_mixture():
    torch.manual_seed(0)
    model = small_model(heads="predictive", n_components=3, var_floor=1e-3)
    mu, var, logit = model.predict_mixture(torch.randn(2, 16, 3))
    assert mu.shape == var.shape == logit.shape == (2, 16, 3, 3)
    assert mu.dtype == torch.float32
    # untrained: mean 0, equal weights, distinct variances (breaks the component symmetry)
    assert mu.abs().max() == 0 and logit.abs().max() == 0
    torch.testing.assert_close(var[0, 0, 0], torch.logspace(-1, 0, 3))
    perturb(model)
    assert (model.predict_mixture(torch.randn(2, 16, 3))[1] >= 1e-3).all()
    assert not hasattr(model, "t_embed") and not hasattr(model, "head")
    with pytest.raises(ValueError, match="no ε-prediction head"):
        model(torch.randn(2, 16, 3), 5)
    with pytest.raises(ValueError, match="no predictive head"):
        small_model().predict_mixture(torch.randn(2, 16, 3))
    with pytest.raises(ValueError, match="direction='causal'"):
        small_model(heads="both", direction="bidirectional")


def test_forward_heads_rows_match_the_single_task_calls():
    """heads='both': one pass over a mixed batch gives, row by row, what forward and
    predict_mixture give on their own rows (per-sample conditioning, no cross-talk)."""
    torch.manual_seed(0)
    model = perturb(small_model(heads="both", n_components=2)).eval()
    x = torch.randn(4, 16, 3)
    mask = torch.rand(4, 16, 3) > 0.2
    t = torch.tensor([10, 700, 0, 0])
    is_pred = torch.tensor([False, False, True, True])
    eps_hat, mixture = model.forward_heads(x, t, mask, is_pred)
    torch.testing.assert_close(eps_hat[:2], model(x[:2], t[:2], mask[:2]))
    for got, ref in zip(mixture, model.predict_mixture(x[2:], mask[2:])):
        torch.testing.assert_close(got[2:], ref)
    # the predictive condition is its own embedding, not the timestep-0 one
    assert not torch.allclose(eps_hat[2:], model(x[2:], t[2:], mask[2:]))


def test_predict_mixture_is_causal_masked_and_streams():
    torch.manual_seed(0)
    model = perturb(small_model(heads="predictive")).eval()
    y = torch.randn(2, 20, 3)
    mask = torch.rand(2, 20, 3) > 0.2
    base = model.predict_mixture(y, mask)
    y2 = y.clone()
    y2[:, 12:] = 5 * torch.randn(2, 8, 3)
    for a, b in zip(base, model.predict_mixture(y2, mask)):
        torch.testing.assert_close(a[:, :12], b[:, :12])
        assert not torch.allclose(a[:, 12:], b[:, 12:])
    y3 = torch.where(mask, y, torch.nan)  # unobserved values never reach the network
    for a, b in zip(base, model.predict_mixture(y3, mask)):
        torch.testing.assert_close(a, b)
    first, state = model.predict_mixture(y[:, :9], mask[:, :9], return_state=True)
    second, _ = model.predict_mixture(y[:, 9:], mask[:, 9:], state=state, return_state=True)
    for a, b, c in zip(base, first, second):
        torch.testing.assert_close(torch.cat([b, c], 1), a, atol=1e-5, rtol=1e-5)
