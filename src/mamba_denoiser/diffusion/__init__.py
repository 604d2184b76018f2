"""Diffusion process (VP-SDE), the guided denoising loss, samplers and noise estimation."""

from mamba_denoiser.diffusion.losses import (
    CLUSTER_TYPES,
    STRATEGIES,
    DenoisingLoss,
    high_frequency_energy,
    total_variation,
)
from mamba_denoiser.diffusion.noise import (
    NOISE_METHODS,
    NoiseEstimate,
    estimate_noise,
    estimate_noise_std,
)
from mamba_denoiser.diffusion.sampling import (
    GUIDANCES,
    SDEditResult,
    choose_t,
    diffusion_noise,
    guidance_is_causal,
    posterior_mean_n2s,
    posterior_mean_renoised,
    resolvable,
    sdedit,
)
from mamba_denoiser.diffusion.sde import SCHEDULES, VPSDE

__all__ = [
    "CLUSTER_TYPES",
    "GUIDANCES",
    "NOISE_METHODS",
    "SCHEDULES",
    "STRATEGIES",
    "VPSDE",
    "DenoisingLoss",
    "NoiseEstimate",
    "SDEditResult",
    "choose_t",
    "diffusion_noise",
    "estimate_noise",
    "estimate_noise_std",
    "guidance_is_causal",
    "high_frequency_energy",
    "posterior_mean_n2s",
    "posterior_mean_renoised",
    "resolvable",
    "sdedit",
    "total_variation",
]
