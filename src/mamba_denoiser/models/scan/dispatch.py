"""Backend choice and the ``selective_scan`` entry point every caller uses.

"auto" picks mamba_ssm if usable on CUDA, else triton on CUDA, else fused; an explicit
request is validated (``resolve_backend``) and fails with a message saying what to do.
``models.scan.triton`` is imported on first use only (``triton_available``): importing
triton is slow, and TRITON_INTERPRET must be set before it is.
"""

from __future__ import annotations

import os

import torch

from mamba_denoiser.models.scan.common import _check_shapes
from mamba_denoiser.models.scan.fused import selective_scan_fused
from mamba_denoiser.models.scan.mamba_ssm import (
    mamba_ssm_available,
    mamba_ssm_reason,
    selective_scan_mamba_ssm,
)
from mamba_denoiser.models.scan.reference import selective_scan_reference

BACKENDS = ("reference", "fused", "triton", "mamba_ssm")


def triton_available() -> bool:
    # imported on first use: importing triton is slow, and TRITON_INTERPRET must be set first
    from mamba_denoiser.models.scan import triton as triton_backend

    return triton_backend.HAS_TRITON


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on tensors of this device."""
    device = torch.device(device)
    names = ["reference", "fused"]
    if triton_available() and (device.type == "cuda" or _triton_interpret()):
        names.append("triton")
    if device.type == "cuda" and mamba_ssm_available():
        names.append("mamba_ssm")
    return names


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map "auto" to a concrete backend for this device; validate explicit requests."""
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda":
            if mamba_ssm_available():
                return "mamba_ssm"
            if triton_available():
                return "triton"
        return "fused"
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS + ('auto',)}")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(
                "scan backend 'triton' requested but triton is not importable; "
                "`pip install triton` (GPU) or use backend='fused'/'auto'"
            )
        if device.type != "cuda" and not _triton_interpret():
            raise RuntimeError(
                "scan backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                "triton is imported, for the slow CPU interpreter); use backend='fused' on CPU"
            )
    if backend == "mamba_ssm" and (device.type != "cuda" or not mamba_ssm_available()):
        why = "tensors are not on CUDA" if device.type != "cuda" else mamba_ssm_reason()
        raise RuntimeError(
            f"scan backend 'mamba_ssm' requested but unusable ({why}); "
            "install mamba-ssm on a CUDA machine or use backend='auto'"
        )
    return backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
    h0: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` conventions; returns (batch, dim, L).

    ``backend``: "auto" (mamba_ssm if usable on CUDA, else triton on CUDA, else fused),
    or one of "reference", "fused", "triton", "mamba_ssm". The output has u's dtype; the
    scan itself always runs in float32.

    State passing, ``reference`` and ``fused`` only (with "auto" it selects ``fused``):
    ``h0`` (batch, dim, N) is the state before the first step (default 0);
    ``return_last_state=True`` returns (out, h_L) with h_L (batch, dim, N) float32, the h0
    that continues the sequence.
    """
    name = resolve_backend(backend, u.device)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if h0 is not None or return_last_state:
        if name in ("triton", "mamba_ssm"):
            if backend != "auto":
                raise ValueError(
                    f"scan backend {name!r} cannot take or return the state h (h0 / "
                    "return_last_state); use backend='fused' (runs on CUDA too) or 'auto'"
                )
            name = "fused"
        kw = dict(h0=h0, return_last_state=return_last_state)
        if name == "reference":
            return selective_scan_reference(*args, **kw)
        return selective_scan_fused(*args, **kw)
    if name == "reference":
        return selective_scan_reference(*args)
    if name == "fused":
        return selective_scan_fused(*args)
    if name == "triton":
        from mamba_denoiser.models.scan.triton import selective_scan_triton

        return selective_scan_triton(*args)
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    return selective_scan_mamba_ssm(*args)
