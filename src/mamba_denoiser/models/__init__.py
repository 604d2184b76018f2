"""Mamba backbone: selective-scan backends, residual blocks and the multivariate denoiser."""

from mamba_denoiser.models.blocks import BiMambaBlock, MambaBlock
from mamba_denoiser.models.denoiser import DIRECTIONS, MultivariateMambaDenoiser
from mamba_denoiser.models.scan import (
    BACKENDS,
    available_backends,
    resolve_backend,
    selective_scan,
)
from mamba_denoiser.models.ssm import SelectiveSSM, SSMState

__all__ = [
    "BACKENDS",
    "BiMambaBlock",
    "DIRECTIONS",
    "MambaBlock",
    "MultivariateMambaDenoiser",
    "SSMState",
    "SelectiveSSM",
    "available_backends",
    "resolve_backend",
    "selective_scan",
]
