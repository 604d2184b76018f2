"""Variance-preserving diffusion (DDPM's discrete VP-SDE).

Forward process, for t = 0 .. T-1:

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I),   ᾱ_t = Π_{s<=t} (1 - β_s)

so x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε. The network predicts ε; from ε̂ we get
x̂0 = (x_t - √(1 - ᾱ_t) ε̂) / √ᾱ_t, a DDPM ancestral step and a DDIM step (Song et al.)
to any earlier t_prev (t_prev = -1 is the clean end, ᾱ = 1).

Why an ``nn.Module`` with non-persistent buffers: put inside a LightningModule it follows
``.to(device)`` for free, so no coefficients are copied host -> device every step, and
non-persistent buffers keep checkpoints free of derived tensors (they are rebuilt from
the constructor arguments). ``_apply`` is overridden so module-wide dtype casts
(``.half()``, Lightning's "bf16-true") move the buffers to the new device but never
quantise them: the coefficients stay float32. All methods broadcast a per-sample t of
shape (B,) over x of any shape (B, ...), e.g. (B, L, F).
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("linear", "cosine")


def _betas(schedule: str, T: int, beta_min: float, beta_max: float, s: float) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(beta_min, beta_max, T, dtype=torch.float64)
    if schedule == "cosine":
        # Nichol & Dhariwal (2021): ᾱ(t) = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2);
        # β capped at 0.999 to avoid the singularity at t = T
        steps = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {SCHEDULES}")


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # at least float32: noise drawn in bf16 would be visibly non-Gaussian
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)


class VPSDE(nn.Module):
    """Discrete variance-preserving diffusion with T = ``num_diffusion_timesteps`` steps.

    schedule="linear": β_t linear in [beta_min, beta_max] (DDPM). schedule="cosine": the
    improved-DDPM cosine ᾱ (beta_min/beta_max are then unused; ``cosine_s`` is its offset).
    """

    def __init__(
        self,
        num_diffusion_timesteps: int = 1000,
        beta_min: float = 1e-4,
        beta_max: float = 0.02,
        schedule: str = "linear",
        cosine_s: float = 0.008,
    ):
        super().__init__()
        if num_diffusion_timesteps < 1:
            raise ValueError(f"num_diffusion_timesteps must be >= 1, got {num_diffusion_timesteps}")
        if schedule == "linear" and not 0 < beta_min <= beta_max < 1:
            raise ValueError(f"need 0 < beta_min <= beta_max < 1, got {beta_min}, {beta_max}")
        self.num_timesteps = T = int(num_diffusion_timesteps)
        self.schedule, self.beta_min, self.beta_max = schedule, beta_min, beta_max

        # computed in float64, stored in float32
        betas = _betas(schedule, T, beta_min, beta_max, cosine_s)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        coefs = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,  # ᾱ_t
            "alphas_cumprod_prev": alphas_cumprod_prev,  # ᾱ_{t-1}, with ᾱ_{-1} = 1
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),  # σ_t
            # variance of q(x_{t-1} | x_t, x_0): β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
            "posterior_variance": betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        }
        for name, value in coefs.items():
            self.register_buffer(name, value.float(), persistent=False)

    def _apply(self, fn, recurse=True):
        # follow device moves, ignore dtype casts: ᾱ near 1 - 1e-4 does not survive bf16
        def keep_float32(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=fn(t).device, dtype=torch.float32)

        return super()._apply(keep_float32, recurse)

    # ---------------------------------------------------------------- coefficient access

    def _coef(self, name: str, t, like: torch.Tensor | None = None) -> torch.Tensor:
        """Gather coefficient ``name`` at t; shaped to broadcast against ``like`` (B, ...)."""
        buf = getattr(self, name)
        device = like.device if like is not None else getattr(t, "device", buf.device)
        t = torch.as_tensor(t, device=buf.device).long()
        if t.device.type == "cpu" and t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            raise IndexError(
                f"timesteps must be in [0, {self.num_timesteps - 1}], got {t.tolist()}"
            )
        out = buf[t].to(device)
        if like is not None:
            if out.dim() == 0:
                out = out.expand(like.shape[0])
            out = out.reshape(-1, *([1] * (like.dim() - 1)))  # (B, 1, 1, ...)
        return out

    def alpha_bar(self, t) -> torch.Tensor:
        """ᾱ_t, float32, same shape as t."""
        return self._coef("alphas_cumprod", t)

    def sigma(self, t) -> torch.Tensor:
        """σ_t = √(1 - ᾱ_t): the noise level of x_t."""
        return self._coef("sqrt_one_minus_alphas_cumprod", t)

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t)."""
        a = self.alpha_bar(t)
        return a / (1.0 - a)

    # ---------------------------------------------------------------- forward process

    def sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x_t ~ q(x_t | x_0); returns (x_t, ε) with x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
        if noise is None:
            noise = _randn_like(x0, generator)
        x_t = (
            self._coef("sqrt_alphas_cumprod", t, x0) * x0
            + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )
        return x_t, noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t."""
        return (x_t - self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * eps) / self._coef(
            "sqrt_alphas_cumprod", t, x_t
        )

    # ---------------------------------------------------------------- reverse process

    def denoise_step(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps_hat: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDPM ancestral step x_t -> x_{t-1} with variance β̃_t; no noise where t == 0.

        x_{t-1} = (x_t - β_t / √(1-ᾱ_t) ε̂) / √α_t + √β̃_t z.
        """
        beta = self._coef("betas", t, x_t)
        mean = (x_t - beta / self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * eps_hat) / (
            self._coef("alphas", t, x_t).sqrt()
        )
        t_b = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        nonzero = (t_b > 0).float().reshape(-1, *([1] * (x_t.dim() - 1)))
        z = _randn_like(x_t, generator)
        return mean + nonzero * self._coef("posterior_variance", t, x_t).sqrt() * z

    def ddim_step(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor | int,
        eps_hat: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDIM step x_t -> x_{t_prev} for any t_prev < t (t_prev = -1: ᾱ = 1, the clean end).

        x_prev = √ᾱ_prev x̂0 + √(1 - ᾱ_prev - σ²) ε̂ + σ z,
        σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_prev). η = 0 is deterministic.
        """
        a_t = self._coef("alphas_cumprod", t, x_t)
        t_prev = torch.as_tensor(t_prev, device=self.alphas_cumprod.device).long()
        a_prev = torch.where(
            t_prev >= 0,
            self.alphas_cumprod[t_prev.clamp(min=0)],
            torch.ones((), device=self.alphas_cumprod.device),
        ).to(x_t.device)
        if a_prev.dim() == 0:
            a_prev = a_prev.expand(x_t.shape[0])
        a_prev = a_prev.reshape(-1, *([1] * (x_t.dim() - 1)))
        x0_hat = (x_t - (1 - a_t).sqrt() * eps_hat) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        x_prev = a_prev.sqrt() * x0_hat + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps_hat
        if eta > 0:
            z = _randn_like(x_t, generator)
            x_prev = x_prev + sigma * z
        return x_prev

    def ddim_timesteps(self, n_steps: int, t_start: int | None = None) -> torch.Tensor:
        """n_steps evenly spaced timesteps from t_start (default T-1) down to 0, descending.

        Pair each with the next one as t_prev, and the last (0) with t_prev = -1.
        """
        t_start = self.num_timesteps - 1 if t_start is None else int(t_start)
        if not 0 <= t_start < self.num_timesteps:
            raise ValueError(f"t_start must be in [0, {self.num_timesteps - 1}], got {t_start}")
        if not 1 <= n_steps <= t_start + 1:
            raise ValueError(f"n_steps must be in [1, t_start + 1 = {t_start + 1}], got {n_steps}")
        steps = torch.linspace(t_start, 0, n_steps, dtype=torch.float64).round().long()
        return steps

    def extra_repr(self) -> str:
        return f"T={self.num_timesteps}, schedule={self.schedule!r}"
