"""Mamba backbone: selective-scan backends, residual blocks and the multivariate denoiser."""

from mamba_denoiser.models.blocks import BiMambaBlock, MambaBlock
from mamba_denoiser.models.denoiser import MultivariateMambaDenoiser
from mamba_denoiser.models.ssm import (
    BACKENDS,
    SelectiveSSM,
    available_backends,
    resolve_backend,
    selective_scan,
)

__all__ = [
    "BACKENDS",
    "BiMambaBlock",
    "MambaBlock",
    "MultivariateMambaDenoiser",
    "SelectiveSSM",
    "available_backends",
    "resolve_backend",
    "selective_scan",
]
