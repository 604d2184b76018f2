"""Group-specific multivariate Mamba diffusion denoiser."""

__version__ = "0.1.0"
