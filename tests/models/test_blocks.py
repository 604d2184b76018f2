"""MambaBlock / BiMambaBlock: shapes, directionality, one stacked scan, adaLN-Zero, streaming."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from mamba_denoiser.models import BiMambaBlock, MambaBlock
from mamba_denoiser.models.scan import selective_scan_reference
from mamba_denoiser.models.ssm import causal_conv1d


def test_bimamba_standalone_shape():
    torch.manual_seed(0)
    x = torch.randn(4, 60, 128)
    out = BiMambaBlock(d_model=128)(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def influence(block, x, t):
    """|∂ out_t / ∂ x_s| summed over channels, for every s."""
    x = x.clone().requires_grad_()
    block(x)[0, t].sum().backward()
    return x.grad[0].abs().sum(-1)


def test_bimamba_sees_both_directions_mamba_only_the_past():
    torch.manual_seed(0)
    x = torch.randn(1, 10, 16)
    bi = influence(BiMambaBlock(d_model=16), x, t=4)
    uni = influence(MambaBlock(d_model=16), x, t=4)
    assert bi[5:].min() > 0 and bi[:4].min() > 0
    assert uni[5:].max() == 0 and uni[:4].max() > 0


def test_bimamba_stacked_scan_equals_two_separate_scans():
    torch.manual_seed(0)
    block = BiMambaBlock(d_model=8, d_state=4, backend="fused")
    x = torch.randn(2, 9, 8)
    xs, z = block.mixer.in_proj(x).chunk(2, dim=-1)  # (b, l, d_inner)

    def direction(ssm, xs, z):  # one direction on its own, with the reference scan
        u, delta, B, C = ssm(xs)
        to_bdl = lambda t: rearrange(t, "b l d -> b d l")  # noqa: E731
        y = selective_scan_reference(
            to_bdl(u),
            to_bdl(delta),
            ssm.A,
            to_bdl(B),
            to_bdl(C),
            ssm.D,
            to_bdl(z),
            ssm.dt_proj.bias,
            delta_softplus=True,
        )
        return rearrange(y, "b d l -> b l d")

    y_f = direction(block.mixer.ssm, xs, z)
    y_b = direction(block.mixer.ssm_bwd, xs.flip(1), z.flip(1)).flip(1)
    expected = block.mixer.out_proj(0.5 * (y_f + y_b))
    torch.testing.assert_close(block.mix(x), expected, rtol=1e-4, atol=1e-5)


def test_causal_conv_matches_conv1d():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, kernel_size=4, groups=6, padding=3)
    for L in (1, 2, 7):
        x = torch.randn(2, L, 6, requires_grad=True)
        ours = causal_conv1d(x, conv.weight[:, 0], conv.bias)
        (ours * torch.arange(ours.numel()).reshape(ours.shape)).sum().backward()
        grads = [x.grad, conv.weight.grad, conv.bias.grad]
        x.grad, conv.weight.grad, conv.bias.grad = None, None, None
        ref = rearrange(conv(rearrange(x, "b l d -> b d l"))[..., :L], "b d l -> b l d")
        (ref * torch.arange(ref.numel()).reshape(ref.shape)).sum().backward()
        torch.testing.assert_close(ours, ref)
        for mine, theirs in zip(grads, [x.grad, conv.weight.grad, conv.bias.grad]):
            torch.testing.assert_close(mine, theirs)
        x.grad, conv.weight.grad, conv.bias.grad = None, None, None


def test_directions_have_their_own_parameters():
    block = BiMambaBlock(d_model=8)
    own = {"conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias"}
    own |= {"A_log", "D"}
    names = {n for n, _ in block.named_parameters()}
    for name in own:
        assert f"mixer.ssm.{name}" in names and f"mixer.ssm_bwd.{name}" in names
    assert block.mixer.ssm.x_proj.weight is not block.mixer.ssm_bwd.x_proj.weight
    assert "mixer.in_proj.weight" in names and "mixer.out_proj.weight" in names  # shared


def test_bimamba_loads_a_state_dict_of_the_old_layout():
    """Checkpoints written when BiMambaBlock held in_proj / fwd / bwd / out_proj itself."""
    torch.manual_seed(0)
    block = BiMambaBlock(d_model=8, d_state=4, cond_dim=6)
    torch.nn.init.normal_(block.adaLN.proj.weight)
    old = {
        k.replace("mixer.ssm_bwd.", "bwd.").replace("mixer.ssm.", "fwd.").replace("mixer.", ""): v
        for k, v in block.state_dict().items()
    }
    assert "fwd.A_log" in old and "in_proj.weight" in old and "bwd.D" in old
    torch.manual_seed(1)
    fresh = BiMambaBlock(d_model=8, d_state=4, cond_dim=6)
    fresh.load_state_dict(old)  # strict: every key lands
    x, c = torch.randn(2, 7, 8), torch.randn(2, 6)
    assert torch.equal(fresh(x, c), block(x, c))
    with pytest.raises(ValueError, match="cannot stream"):
        block.mixer(x, return_state=True)


@pytest.mark.parametrize("cls", [BiMambaBlock, MambaBlock])
def test_adaln_zero_block_is_identity_at_init(cls):
    torch.manual_seed(0)
    block = cls(d_model=16, cond_dim=12)
    x, c = torch.randn(3, 7, 16), torch.randn(3, 12)
    assert torch.equal(block(x, c), x)
    # and it is not the identity once the gate is non-zero
    torch.nn.init.normal_(block.adaLN.proj.bias)
    assert not torch.allclose(block(x, c), x)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_mamba_block_streams_in_chunks(backend):
    torch.manual_seed(0)
    block = MambaBlock(d_model=16, d_state=4, cond_dim=12, backend=backend)
    torch.nn.init.normal_(block.adaLN.proj.weight, std=0.3)  # not the identity any more
    x, c = torch.randn(2, 23, 16), torch.randn(2, 12)
    with torch.no_grad():
        full = block(x, c)
        outs, state = [], None
        for sl in (slice(0, 5), slice(5, 6), slice(6, 23)):
            y, state = block(x[:, sl], c, state=state, return_state=True)
            outs.append(y)
    assert not torch.allclose(full, x, atol=1e-3)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-5)
    assert state.ssm.shape == (2, block.mixer.d_inner, 4)


def test_mamba_block_backend_is_the_mixers():
    block = MambaBlock(d_model=8, backend="reference")
    assert block.backend == "reference"
    block.backend = "fused"
    assert block.mixer.backend == "fused"


def test_conditioning_errors():
    x = torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match="cond_dim=None"):
        BiMambaBlock(d_model=8)(x, torch.randn(1, 4))
    with pytest.raises(ValueError, match="adaLN-conditioned"):
        BiMambaBlock(d_model=8, cond_dim=4)(x)
