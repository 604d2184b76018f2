"""Predictive head's closed forms: Kalman equivalence (K = 1), exact divergence, SURE known
answer, NLL, and the causal window denoiser ``predict_windows``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mamba_denoiser.diffusion import predictive as pred
from mamba_denoiser.models import MultivariateMambaDenoiser


def kalman_ar1(y: np.ndarray, phi: float, q: float, r: float):
    """Scalar Kalman filter of s_t = φ s_{t-1} + N(0, q), y_t = s_t + N(0, r), stationary
    start: (predicted mean, predicted var, filtered mean, gain), each (T,)."""
    T = len(y)
    a_pred, p_pred, a_filt, gain = (np.empty(T) for _ in range(4))
    a, p = 0.0, q / (1 - phi**2)
    for t in range(T):
        a_pred[t], p_pred[t] = a, p
        k = p / (p + r)
        a_filt[t], gain[t] = a + k * (y[t] - a), k
        a, p = phi * a_filt[t], phi**2 * (1 - k) * p + q
    return a_pred, p_pred, a_filt, gain


def simulate_ar1(T: int, phi: float, q: float, r: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    e = rng.normal(0, math.sqrt(q), T)
    s = np.empty(T)
    s[0] = rng.normal(0, math.sqrt(q / (1 - phi**2)))
    for t in range(1, T):
        s[t] = phi * s[t - 1] + e[t]
    return s, s + rng.normal(0, math.sqrt(r), T)


def random_mixture(shape, K, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(*shape, K, generator=g, dtype=dtype)
    var = 0.05 + torch.rand(*shape, K, generator=g, dtype=dtype)
    logit = torch.randn(*shape, K, generator=g, dtype=dtype)
    return mu, var, logit


def test_k1_is_the_kalman_update():
    phi, q, r = 0.9, 0.19, 1.0  # 0 dB: stationary signal variance 1 = noise variance
    _, y = simulate_ar1(2000, phi, q, r)
    a_pred, p_pred, a_filt, gain = kalman_ar1(y, phi, q, r)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    s_hat, div = pred.mixture_posterior(
        t(y),
        t(a_pred)[:, None],
        t(p_pred)[:, None],
        torch.zeros(len(y), 1, dtype=torch.float64),
        math.sqrt(r),
    )
    np.testing.assert_allclose(s_hat.numpy(), a_filt, atol=1e-6)
    np.testing.assert_allclose(div.numpy(), gain, atol=1e-6)  # the divergence is the gain


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_divergence_matches_autograd_k3(dtype, tol):
    mu, var, logit = random_mixture((400,), 3, dtype=dtype)
    # y spread over the components and far into their tails, where the weights swing
    y = 3 * torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y.requires_grad_(True)
    sigma = 0.4
    s_hat, div = pred.mixture_posterior(y, mu, var, logit, sigma)
    (grad,) = torch.autograd.grad(s_hat.sum(), y)  # cells are independent: the diagonal
    torch.testing.assert_close(div.detach(), grad, atol=tol, rtol=tol)
    # the weights' derivative matters: the gains alone are not the divergence
    S = var + sigma**2
    w = torch.softmax(
        torch.log_softmax(logit, -1) - 0.5 * (S.log() + (y[:, None] - mu) ** 2 / S), -1
    )
    gains_only = (w * var / S).sum(-1).detach()
    assert (gains_only - grad).abs().max() > 0.1


def test_sigma_broadcasts_per_feature():
    mu, var, logit = random_mixture((50, 4), 2)
    y = torch.randn(50, 4, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    s_hat, div = pred.mixture_posterior(y, mu, var, logit, sigma)
    for f in range(4):
        s_f, d_f = pred.mixture_posterior(y[:, f], mu[:, f], var[:, f], logit[:, f], sigma[f])
        torch.testing.assert_close(s_hat[:, f], s_f)
        torch.testing.assert_close(div[:, f], d_f)


def test_sure_known_answer_two_component_prior():
    n, sigma = 200_000, 0.5
    pi, mu, v = np.array([0.8, 0.2]), np.array([0.0, 2.0]), np.array([0.1, 1.0])
    rng = np.random.default_rng(0)
    k = rng.choice(2, size=n, p=pi)
    s = rng.normal(mu[k], np.sqrt(v[k]))
    y = s + rng.normal(0, sigma, n)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    mu_t, v_t = t(mu).expand(n, 2), t(v).expand(n, 2)
    logit = t(np.log(pi)).expand(n, 2)
    s_hat, div = pred.mixture_posterior(t(y), mu_t, v_t, logit, sigma)
    true_mse = float(((s_hat - t(s)) ** 2).mean())
    sure = float(pred.sure_cells(t(y), s_hat, div, sigma).mean())
    assert abs(sure - true_mse) / true_mse < 0.03, (sure, true_mse)
    assert true_mse < 0.6 * sigma**2  # it denoises
    # a divergence without the weights' derivative gives a SURE that is visibly wrong
    S = v_t + sigma**2
    r = t(y)[:, None] - mu_t
    w = torch.softmax(logit - 0.5 * (S.log() + r**2 / S), -1)
    wrong = float(pred.sure_cells(t(y), s_hat, (w * v_t / S).sum(-1), sigma).mean())
    assert abs(wrong - true_mse) / true_mse > 0.1, (wrong, true_mse)


def test_nll_matches_a_gaussian_and_skips_masked_cells():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(6, 5, generator=g, dtype=torch.float64)
    mu, var, logit = random_mixture((6, 5), 1)
    mask = torch.rand(6, 5, generator=g) > 0.3
    y_nan = torch.where(mask, y, torch.nan)
    nll = pred.mixture_nll(y_nan, mu, var, logit, 0.3, mask)
    S = var[..., 0] + 0.09
    ref = 0.5 * (math.log(2 * math.pi) + S.log() + (y - mu[..., 0]) ** 2 / S)
    torch.testing.assert_close(nll, ref[mask].mean())
    # mixture: −log Σ π N; equal components collapse to the single Gaussian
    mu3, var3 = mu.expand(6, 5, 3), var.expand(6, 5, 3)
    logit3 = torch.randn(6, 5, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(pred.mixture_nll(y_nan, mu3, var3, logit3, 0.3, mask), nll)
    empty = pred.mixture_nll(y_nan, mu, var, logit, 0.3, torch.zeros_like(mask))
    assert empty.item() == 0.0


def test_sigma_to_window_units_floor():
    out = pred.sigma_to_window_units(
        np.array([2.0, np.nan, 0.0, 0.001]), np.array([4.0, 1.0, 1.0, 1.0]), floor=0.05
    )
    np.testing.assert_allclose(out, [0.5, 0.05, 0.05, 0.05])


def test_target_mask_rules():
    mask = torch.ones(1, 8, 2, dtype=torch.bool)
    mask[0, :5, 1] = False  # feature 1 starts at position 5: its anchor is that value
    mask[0, 6, 0] = False
    keep = pred.target_mask(mask, anchor_len=3)[0]
    assert keep[:3].sum() == 0  # the anchor rows
    assert keep[3:, 0].tolist() == [True, True, True, False, True]
    assert keep[:, 1].tolist() == [False] * 6 + [True, True]  # not its first observation


# ---- predict_windows on a network -------------------------------------------------------


def predictive_net(n_features=3, K=3, seed=0):
    torch.manual_seed(seed)
    net = MultivariateMambaDenoiser(
        n_features=n_features,
        window_size=24,
        d_model=16,
        n_layers=2,
        d_state=4,
        dropout=0.0,
        heads="predictive",
        n_components=K,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move the zero-initialised weights so outputs depend on everything
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def windows(B=3, L=24, F=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(B, L, F, generator=g)
    mask = torch.rand(B, L, F, generator=g) > 0.15
    return torch.where(mask, w, torch.nan), mask


def test_predict_windows_is_the_shifted_posterior_with_nan_where_unscored():
    net = predictive_net()
    w, mask = windows()
    sigma = torch.tensor([0.2, 0.5, 1.0])
    s_hat, div, mu_mix = pred.predict_windows(net, w, mask, sigma=sigma, anchor_len=5)
    assert s_hat.shape == div.shape == mu_mix.shape == w.shape
    mu, var, logit = net.predict_mixture(w, mask)
    keep = pred.target_mask(mask, 5)
    for l in (5, 11, 23):
        ref_s, ref_d = pred.mixture_posterior(
            torch.nan_to_num(w[:, l]), mu[:, l - 1], var[:, l - 1], logit[:, l - 1], sigma
        )
        k = keep[:, l]
        torch.testing.assert_close(s_hat[:, l][k], ref_s[k].detach())
        torch.testing.assert_close(div[:, l][k], ref_d[k].detach())
        ref_mix = (torch.softmax(logit[:, l - 1], -1) * mu[:, l - 1]).sum(-1)
        ok = pred.forecast_mask(mask, 5)[:, l]  # also at unobserved cells
        torch.testing.assert_close(mu_mix[:, l][ok], ref_mix[ok].detach())
    assert torch.isnan(s_hat[:, :5]).all() and torch.isnan(div[~keep]).all()
    assert torch.isfinite(s_hat[keep]).all() and torch.isfinite(div[keep]).all()
    assert (~mask[:, 5:]).any() and torch.isnan(s_hat[:, 5:][~mask[:, 5:]]).all()


def test_predict_windows_divergence_is_the_derivative_through_the_network():
    net = predictive_net()
    w, mask = windows(seed=1)
    w, mask = torch.nan_to_num(w), torch.ones_like(mask)
    s_hat, div, _ = pred.predict_windows(net, w, mask, sigma=0.5, anchor_len=5)
    h, l = 1e-2, 13
    up, dn = w.clone(), w.clone()
    up[:, l] += h
    dn[:, l] -= h
    s_up = pred.predict_windows(net, up, mask, sigma=0.5, anchor_len=5)[0][:, l]
    s_dn = pred.predict_windows(net, dn, mask, sigma=0.5, anchor_len=5)[0][:, l]
    fd = (s_up - s_dn) / (2 * h)
    torch.testing.assert_close(div[:, l], fd, atol=2e-3, rtol=2e-3)


def test_predict_windows_is_causal():
    net = predictive_net()
    w, mask = windows(seed=2)
    sigma = torch.tensor([0.3, 0.3, 0.6])
    base = pred.predict_windows(net, w, mask, sigma=sigma, anchor_len=4)
    g = torch.Generator().manual_seed(5)
    for l in (4, 10, 22):
        w2, mask2 = w.clone(), mask.clone()
        w2[:, l + 1 :] = 10 * torch.randn(w2[:, l + 1 :].shape, generator=g)
        mask2[:, l + 1 :] = torch.rand(mask2[:, l + 1 :].shape, generator=g) > 0.5
        w2 = torch.where(mask2, w2, torch.nan)
        out = pred.predict_windows(net, w2, mask2, sigma=sigma, anchor_len=4)
        for a, b in zip(base[:2], out[:2]):  # ŝ and div
            torch.testing.assert_close(a[:, : l + 1], b[:, : l + 1], equal_nan=True)
            assert not torch.allclose(a[:, l + 1 :], b[:, l + 1 :], equal_nan=True)
        # the forecast at row l+1 comes from rows <= l: it does not see row l+1 either
        torch.testing.assert_close(base[2][:, : l + 2], out[2][:, : l + 2], equal_nan=True)
        if l + 2 < w.shape[1]:
            assert not torch.allclose(base[2][:, l + 2 :], out[2][:, l + 2 :], equal_nan=True)
