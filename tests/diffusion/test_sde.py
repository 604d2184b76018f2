"""VPSDE: schedule sanity, forward-process identities, DDPM and DDIM steps."""

from __future__ import annotations

import pytest
import torch

from mamba_denoiser.diffusion import VPSDE


@pytest.fixture(params=["linear", "cosine"])
def sde(request):
    return VPSDE(num_diffusion_timesteps=1000, schedule=request.param)


def test_schedule_is_sane(sde):
    a = sde.alphas_cumprod
    assert a.dtype == sde.betas.dtype == torch.float32
    assert a.shape == (1000,)
    assert torch.all((a > 0) & (a < 1))
    assert torch.all(a[1:] < a[:-1])  # ᾱ strictly decreasing
    assert a[0] > 0.999 and a[-1] < 1e-3
    assert torch.all((sde.betas > 0) & (sde.betas <= 0.999))
    torch.testing.assert_close(sde.alpha_bar(torch.arange(1000)), a)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(sde.sigma(t) ** 2 + sde.alpha_bar(t), torch.ones(4))
    snr = sde.snr(torch.arange(1000))
    assert torch.all(snr[1:] < snr[:-1])


def test_linear_schedule_matches_ddpm():
    sde = VPSDE(num_diffusion_timesteps=1000, beta_min=1e-4, beta_max=0.02)
    torch.testing.assert_close(sde.betas[[0, -1]], torch.tensor([1e-4, 0.02]))
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(sde.alphas_cumprod, expected.float())


def test_cosine_schedule_follows_the_cosine():
    sde = VPSDE(num_diffusion_timesteps=1000, schedule="cosine")
    t = torch.tensor([250, 500, 750])
    s = 0.008
    f = lambda x: torch.cos((x / 1000 + s) / (1 + s) * torch.pi / 2) ** 2  # noqa: E731
    expected = f(t.double() + 1) / f(torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(sde.alpha_bar(t), expected.float(), rtol=1e-4, atol=1e-6)


def test_sample_then_predict_x0_recovers_x0(sde):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 60, 20, generator=g)
    # not t = T-1: the cosine ᾱ there is ~1e-8, and 1/√ᾱ amplifies float32 rounding
    t = torch.tensor([0, 1, 500, 950])
    x_t, noise = sde.sample(x0, t, generator=g)
    assert x_t.shape == noise.shape == x0.shape
    torch.testing.assert_close(sde.predict_x0(x_t, t, noise), x0, rtol=1e-4, atol=1e-3)
    # each sample uses its own t
    a = sde.alpha_bar(t)[:, None, None]
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)


def test_given_noise_is_used_and_statistics_are_right():
    sde = VPSDE()
    x0 = torch.full((20000, 1, 1), 2.0)
    t = torch.full((20000,), 300)
    noise = torch.randn_like(x0)
    x_t, eps = sde.sample(x0, t, noise=noise)
    assert eps is noise
    a = sde.alpha_bar(300)
    assert abs(x_t.mean() - 2.0 * a.sqrt()) < 0.03
    assert abs(x_t.var() - (1 - a)) < 0.03


def test_bf16_inputs_get_float32_coefficients_and_module_casts_do_not_quantise():
    sde = VPSDE()
    x0 = torch.randn(2, 5, 3).bfloat16()
    x_t, noise = sde.sample(x0, torch.tensor([3, 900]))
    assert x_t.dtype == noise.dtype == torch.float32
    exact = sde.alphas_cumprod.clone()
    sde.to(torch.bfloat16)
    assert sde.alphas_cumprod.dtype == torch.float32
    assert torch.equal(sde.alphas_cumprod, exact)
    assert sde.state_dict() == {}  # derived buffers are not checkpointed


def test_ddpm_step_mean_is_the_posterior_mean():
    sde = VPSDE()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 8, 2, generator=g)
    t = torch.tensor([1, 400, 999])
    x_t, eps = sde.sample(x0, t, generator=g)
    x_prev = sde.denoise_step(x_t, t, eps, generator=torch.Generator().manual_seed(5))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5))
    # μ̃(x_t, x0) and β̃ in float64 (at t=1 the float32 form of this formula loses 4e-4)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    a_all = torch.cumprod(1 - betas, 0)
    a_prev_all = torch.cat([torch.ones(1, dtype=torch.float64), a_all[:-1]])
    beta, a, a_prev = (v[t].view(-1, 1, 1) for v in (betas, a_all, a_prev_all))
    mu = (a_prev.sqrt() * beta / (1 - a)) * x0.double()
    mu = mu + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a)) * x_t.double()
    var = beta * (1 - a_prev) / (1 - a)
    torch.testing.assert_close(x_prev.double(), mu + var.sqrt() * z, rtol=1e-5, atol=1e-6)


def test_ddpm_step_at_t0_is_noise_free_and_returns_x0():
    sde = VPSDE()
    x0 = torch.randn(2, 6, 3)
    t = torch.zeros(2, dtype=torch.long)
    x_t, eps = sde.sample(x0, t)
    out1 = sde.denoise_step(x_t, t, eps, generator=torch.Generator().manual_seed(1))
    out2 = sde.denoise_step(x_t, t, eps, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out1, out2)
    torch.testing.assert_close(out1, x0, rtol=1e-4, atol=1e-4)


def test_ddim_step_with_true_noise_stays_on_the_trajectory(sde):
    x0 = torch.randn(2, 10, 4)
    t = torch.tensor([700, 700])
    x_t, eps = sde.sample(x0, t)
    x_prev = sde.ddim_step(x_t, t, 300, eps)
    a_prev = sde.alpha_bar(300)
    torch.testing.assert_close(x_prev, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps)
    torch.testing.assert_close(sde.ddim_step(x_t, t, -1, eps), x0, rtol=1e-4, atol=1e-4)


def test_full_ddim_is_deterministic_and_recovers_x0():
    sde = VPSDE(num_diffusion_timesteps=200)
    x0 = torch.randn(2, 12, 3)
    x_T = torch.randn(2, 12, 3)

    def oracle_eps(x_t, t):  # the ε that is consistent with x0
        return (x_t - sde.alpha_bar(t).sqrt() * x0) / sde.sigma(t)

    def run(n_steps):
        steps = sde.ddim_timesteps(n_steps)
        x = x_T.clone()
        for i, t in enumerate(steps.tolist()):
            t_prev = steps[i + 1].item() if i + 1 < len(steps) else -1
            x = sde.ddim_step(x, torch.full((2,), t), t_prev, oracle_eps(x, t), eta=0.0)
        return x

    full = run(200)
    assert torch.equal(full, run(200))  # no randomness at eta = 0
    torch.testing.assert_close(full, x0, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(run(10), x0, rtol=1e-3, atol=1e-3)


def test_ddim_with_eta_one_adds_noise():
    sde = VPSDE()
    x_t, t = torch.randn(2, 5, 1), torch.tensor([500, 500])
    eps = torch.randn_like(x_t)
    a = sde.ddim_step(x_t, t, 400, eps, eta=1.0, generator=torch.Generator().manual_seed(0))
    b = sde.ddim_step(x_t, t, 400, eps, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, b)


def test_ddim_timesteps():
    sde = VPSDE(num_diffusion_timesteps=1000)
    steps = sde.ddim_timesteps(50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    assert torch.all(steps[1:] < steps[:-1])
    assert torch.equal(sde.ddim_timesteps(1000), torch.arange(999, -1, -1))
    assert torch.equal(sde.ddim_timesteps(3, t_start=100), torch.tensor([100, 50, 0]))
    with pytest.raises(ValueError, match="n_steps"):
        sde.ddim_timesteps(0)


def test_errors():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        VPSDE(schedule="quadratic")
    with pytest.raises(IndexError, match="timesteps must be in"):
        VPSDE(num_diffusion_timesteps=10).sample(torch.zeros(1, 2, 1), torch.tensor([10]))
