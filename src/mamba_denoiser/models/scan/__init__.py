"""Selective scan (Mamba-1) and its pluggable backends.

The recurrence every backend computes, per channel d and state index n:

    Δ_t   = softplus(delta_t + delta_bias)          (if delta_softplus)
    h_t   = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t     (zero-order hold: Ā = exp(ΔA), B̄x = ΔBx)
    y_t   = C_t · h_t + D x_t
    out_t = y_t · SiLU(z_t)                         (if z is given)

Argument conventions follow mamba-ssm's ``selective_scan_fn``:

    u, delta, z : (batch, dim, L)
    A           : (dim, N)            real, negative for a stable scan
    B, C        : (batch, N, L)       or (batch, G, N, L): G groups of dim // G channels
    D, delta_bias : (dim,)

Backends (all agree with ``reference`` in outputs and gradients; tests check it), one
module each, with ``selective_scan`` in ``dispatch.py`` choosing among them:

- ``reference`` (``reference.py``): mamba-ssm's ``selective_scan_ref``: the plain loop over
  time with autograd. Readable and slow (its backward is O(L²)); the oracle in the tests.
- ``fused`` (``fused.py``): CPU default. A custom autograd Function that never builds a
  (batch, L, dim, N) tensor and keeps O(sqrt(L)) states for its backward.
- ``triton`` (``triton.py``): GPU default.
- ``mamba_ssm`` (``mamba_ssm.py``): the reference CUDA kernel, used only when that package
  imports and runs.

``common.py`` holds the argument handling they share. Everything is computed in float32
regardless of the input dtype (and with autocast disabled), because the state h
accumulates over L steps and bf16/fp16 would drift.

State passing (streaming inference): ``reference`` and ``fused`` accept an initial state
``h0`` (batch, dim, N) and can return the state after the last step (as mamba-ssm's
``return_last_state``), so a long sequence can be scanned chunk by chunk with the result
of one pass. ``triton`` and ``mamba_ssm`` cannot (their kernels start from h = 0): "auto"
then picks ``fused`` (plain torch ops, so it runs on CUDA tensors too), and an explicit
request raises. In ``fused``, h0 is a constant (no gradient flows into it) and the last
state is returned without gradient: enough for inference and truncated BPTT.

Imports point downward: ``common`` <- ``reference``, ``fused``, ``mamba_ssm``, ``triton`` <-
``dispatch`` <- this package; nothing here imports ``models.ssm`` or above. triton and
mamba-ssm are optional: ``models.scan.triton`` (``selective_scan_triton``) and mamba-ssm
are imported on first use, not by importing this package.
"""

from mamba_denoiser.models.scan.dispatch import (
    BACKENDS,
    available_backends,
    resolve_backend,
    selective_scan,
    triton_available,
)
from mamba_denoiser.models.scan.fused import release_workspace, selective_scan_fused
from mamba_denoiser.models.scan.mamba_ssm import mamba_ssm_available
from mamba_denoiser.models.scan.reference import selective_scan_reference

__all__ = [
    "BACKENDS",
    "available_backends",
    "mamba_ssm_available",
    "release_workspace",
    "resolve_backend",
    "selective_scan",
    "selective_scan_fused",
    "selective_scan_reference",
    "triton_available",
]
