"""Argument handling shared by all scan backends: shape checks, B/C groups, no autocast.

Shapes follow mamba-ssm's ``selective_scan_fn`` (see the package docstring): u, delta, z
(batch, dim, L); A (dim, N); B, C (batch, N, L) or (batch, G, N, L); D, delta_bias (dim,);
h0 (batch, dim, N).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def _no_autocast(device_type: str):
    # bmm/baddbmm are on autocast's low-precision list; the scan must stay float32.
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, h0=None) -> int:
    """Validate shapes; return the number of B/C groups G."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3:
            M = M.unsqueeze(1)
        if M.dim() != 4 or M.shape[0] != batch or M.shape[2] != N or M.shape[3] != L:
            raise ValueError(
                f"{name} must be (batch, N, L) or (batch, G, N, L) with batch={batch}, N={N}, "
                f"L={L}; got {tuple(M.shape)}. Input-independent (dim, N) {name} is not supported."
            )
    G = B.shape[1] if B.dim() == 4 else 1
    G_c = C.shape[1] if C.dim() == 4 else 1
    if G != G_c or dim % G:
        raise ValueError(f"B and C need the same group count G dividing dim={dim}; got {G}, {G_c}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if h0 is not None and h0.shape != (batch, dim, N):
        raise ValueError(f"h0 must be (batch, dim, N) = {(batch, dim, N)}, got {tuple(h0.shape)}")
    return G


def _as_groups(M: torch.Tensor) -> torch.Tensor:
    return M.unsqueeze(1) if M.dim() == 3 else M  # (batch, G, N, L)
