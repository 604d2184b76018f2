"""Diffusion process (VP-SDE) and the guided denoising loss."""

from mamba_denoiser.diffusion.losses import (
    CLUSTER_TYPES,
    STRATEGIES,
    DenoisingLoss,
    high_frequency_energy,
    total_variation,
)
from mamba_denoiser.diffusion.sde import SCHEDULES, VPSDE

__all__ = [
    "CLUSTER_TYPES",
    "SCHEDULES",
    "STRATEGIES",
    "VPSDE",
    "DenoisingLoss",
    "high_frequency_energy",
    "total_variation",
]
