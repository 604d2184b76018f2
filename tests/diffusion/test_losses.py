"""DenoisingLoss: guidance terms on known signals, strategy weights, masking."""

from __future__ import annotations

import math

import pytest
import torch

from mamba_denoiser.diffusion import DenoisingLoss, high_frequency_energy, total_variation

L = 64


def series(values: torch.Tensor, batch: int = 2, features: int = 3) -> torch.Tensor:
    return values.reshape(1, -1, 1).expand(batch, -1, features).clone()


def test_constant_has_no_variation_and_no_high_frequency():
    x = torch.full((2, L, 3), 4.2)
    assert total_variation(x) == 0
    assert high_frequency_energy(x) < 1e-10


def test_tv_of_unit_step():
    step = series((torch.arange(L) >= L // 2).float())
    torch.testing.assert_close(total_variation(step), torch.tensor(1 / (L - 1)))


def test_high_frequency_energy_on_known_signals():
    t = torch.arange(L, dtype=torch.float32)
    slow = series(torch.sin(2 * math.pi * t / L))  # 1 cycle per window: far below cutoff
    alternating = series((-1.0) ** t)  # the Nyquist frequency: all energy above the cutoff
    noise = torch.randn(2, L, 3, generator=torch.Generator().manual_seed(0))
    assert high_frequency_energy(slow) < 1e-8
    torch.testing.assert_close(high_frequency_energy(alternating), torch.tensor(1.0))
    assert high_frequency_energy(noise) > 100 * high_frequency_energy(slow) + 0.3
    # cutoff 0 keeps every non-DC bin: Parseval gives the (biased) variance
    centred = noise - noise.mean(dim=1, keepdim=True)
    torch.testing.assert_close(high_frequency_energy(noise, cutoff=0.0), centred.square().mean())
    # a sine just above / below cutoff x Nyquist (bin k has normalised frequency 2k/L)
    above = series(torch.sin(2 * math.pi * 9 * t / L))  # 2*9/64 = 0.28 > 0.25
    below = series(torch.sin(2 * math.pi * 7 * t / L))  # 0.22
    torch.testing.assert_close(high_frequency_energy(above), torch.tensor(0.5), atol=1e-5, rtol=0)
    assert high_frequency_energy(below) < 1e-8


@pytest.mark.parametrize(
    "cluster_type, tv_coef, fourier_coef",
    [("mean_reverting", 2.0, 0.0), ("trending", 0.0, 2.0), ("random_walk", 1.0, 1.0)],
)
def test_weights_follow_cluster_type(cluster_type, tv_coef, fourier_coef):
    g = torch.Generator().manual_seed(0)
    eps_hat, eps, x0_hat = (torch.randn(2, L, 3, generator=g) for _ in range(3))
    loss_fn = DenoisingLoss(cluster_type, guidance_weight=0.1, tv_weight=1.5, fourier_weight=0.5)
    loss, terms = loss_fn(eps_hat, eps, x0_hat, return_terms=True)
    mse = (eps_hat - eps).square().mean()
    tv, hf = total_variation(x0_hat), high_frequency_energy(x0_hat)
    expected = mse + 0.1 * (tv_coef * 1.5 * tv + fourier_coef * 0.5 * hf)
    torch.testing.assert_close(loss, expected)
    assert set(terms) == {"total", "noise_mse", "tv", "fourier", "guidance"}
    torch.testing.assert_close(terms["noise_mse"], mse)
    torch.testing.assert_close(terms["tv"], tv)
    torch.testing.assert_close(terms["fourier"], hf)
    torch.testing.assert_close(terms["total"], loss.detach())


def test_strategy_override():
    g = torch.Generator().manual_seed(0)
    eps_hat, eps, x0_hat = (torch.randn(2, L, 3, generator=g) for _ in range(3))
    mse = (eps_hat - eps).square().mean()
    none = DenoisingLoss("trending", strategy="none")
    torch.testing.assert_close(none(eps_hat, eps, x0_hat), mse)
    torch.testing.assert_close(none(eps_hat, eps), mse)  # x̂0 not needed without guidance
    tv = DenoisingLoss(strategy="tv", guidance_weight=1.0)
    torch.testing.assert_close(tv(eps_hat, eps, x0_hat), mse + 2 * total_variation(x0_hat))
    balanced = DenoisingLoss("mean_reverting", strategy="balanced", guidance_weight=1.0)
    expected = mse + total_variation(x0_hat) + high_frequency_energy(x0_hat)
    torch.testing.assert_close(balanced(eps_hat, eps, x0_hat), expected)
    _, terms = none(eps_hat, eps, return_terms=True)
    assert math.isnan(terms["tv"]) and terms["guidance"] == 0


def test_guidance_pushes_towards_smooth_x0():
    x0_hat = torch.randn(1, L, 2, requires_grad=True)
    eps = torch.zeros(1, L, 2)
    DenoisingLoss("random_walk", guidance_weight=1.0)(eps, eps, x0_hat).backward()
    with torch.no_grad():
        smoother = x0_hat - 0.01 * x0_hat.grad
    assert total_variation(smoother) < total_variation(x0_hat)
    assert high_frequency_energy(smoother) < high_frequency_energy(x0_hat)


@pytest.mark.parametrize("cluster_type", ["mean_reverting", "trending", "random_walk"])
def test_masked_positions_do_not_change_the_loss(cluster_type):
    g = torch.Generator().manual_seed(0)
    eps_hat, eps, x0_hat = (torch.randn(2, L, 3, generator=g) for _ in range(3))
    mask = torch.rand(2, L, 3, generator=g) > 0.3
    mask[:, :10, 0] = False  # a leading missing block, as in the real panel
    loss_fn = DenoisingLoss(cluster_type, guidance_weight=0.5)
    base = loss_fn(eps_hat, eps, x0_hat, mask=mask)

    junk = torch.full_like(x0_hat, float("nan"))
    args = [torch.where(mask, a, junk).requires_grad_() for a in (eps_hat, eps, x0_hat)]
    loss = loss_fn(*args, mask=mask)
    torch.testing.assert_close(loss, base)
    loss.backward()
    for a in args:
        assert torch.isfinite(a.grad).all()
        assert (a.grad[~mask] == 0).all()
    # with the mask, the loss must differ from treating everything as observed
    assert not torch.allclose(base, loss_fn(eps_hat, eps, x0_hat))


def test_masked_tv_counts_only_observed_pairs():
    x = series(torch.arange(L, dtype=torch.float32), batch=1, features=1)  # slope 1
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, 20:30] = False
    x_with_gap = x.clone()
    x_with_gap[:, 20:30] = 1e6
    torch.testing.assert_close(total_variation(x_with_gap, mask), torch.tensor(1.0))


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="mean_reverting, trending, random_walk"):
        DenoisingLoss(cluster_type="sideways")
    with pytest.raises(ValueError, match="valid: auto, tv, fourier, balanced, none"):
        DenoisingLoss("trending", strategy="wavelet")
    with pytest.raises(ValueError, match="cluster_type"):
        DenoisingLoss()
    with pytest.raises(ValueError, match="denoised_output"):
        DenoisingLoss("trending")(torch.zeros(1, 4, 1), torch.zeros(1, 4, 1))
    assert DenoisingLoss("Mean-Reverting").strategy == "tv"


def test_sample_weight_is_a_weighted_mean():
    torch.manual_seed(0)
    x = torch.randn(3, 20, 2)
    mask = torch.rand(3, 20, 2) > 0.2
    ones = torch.ones(3)
    for fn in (total_variation, lambda a, m, w: high_frequency_energy(a, 0.25, m, w)):
        # all-ones weights change nothing; a zero weight removes that sample entirely
        torch.testing.assert_close(fn(x, mask, ones), fn(x, mask, None))
        w = torch.tensor([1.0, 0.0, 1.0])
        keep = torch.tensor([0, 2])
        torch.testing.assert_close(fn(x, mask, w), fn(x[keep], mask[keep], None))
        # values of a zero-weight sample cannot change the result
        y = x.clone()
        y[1] = 1e6 * torch.randn(20, 2)
        torch.testing.assert_close(fn(y, mask, w), fn(x, mask, w))
