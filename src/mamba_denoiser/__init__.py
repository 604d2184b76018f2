"""Group-specific multivariate Mamba diffusion denoiser.

``from mamba_denoiser import Denoiser``: a trained sweep applied from Python (api.py).
"""

from mamba_denoiser.version import __version__

__all__ = ["Denoiser", "__version__"]


def __getattr__(name: str):
    # Lazy: ``import mamba_denoiser`` stays light (no torch, pandas or statsmodels) for the
    # entry scripts' config errors; the API loads them when first used.
    if name == "Denoiser":
        from mamba_denoiser.api import Denoiser

        return Denoiser
    raise AttributeError(f"module 'mamba_denoiser' has no attribute {name!r}")
