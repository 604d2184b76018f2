"""Every error type of the package, in one module with no heavy imports (no torch, no
Lightning), so that catching one (cli.user_errors) never pulls in a framework.

The modules that raise them re-export them under their old names (``from
mamba_denoiser.errors import PanelError  # noqa: F401``), so both import paths work.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work here (e.g. trainer=gpu on a machine without one)."""


class LeakageError(RuntimeError):
    """Future information reached a place that must only see the past."""


class ClustersError(ValueError):
    """A clusters.json that cannot be used; the message says which file and what to do."""


class NonFiniteLossError(FloatingPointError):
    """Training diverged; raised before the optimiser step so no broken weights are saved."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a mamba-denoiser checkpoint."""


class DataOptionsError(ValueError):
    """A given data option contradicts the one the upstream stage recorded."""


class PanelError(ValueError):
    """Bad input: the message names the file, column or row and what to do."""


class BundleError(CheckpointError):
    """A saved Denoiser bundle (Denoiser.save) that is missing a file, was changed after
    saving, or is not a bundle; the message names the file and what to do."""


class Preempted(BaseException):
    """A preemption or timeout signal stopped training at a batch boundary, before anything
    of the unfinished epoch was saved; the job is requeued and resumes from last.ckpt.
    A BaseException, like KeyboardInterrupt: no ``except Exception`` may swallow it."""
