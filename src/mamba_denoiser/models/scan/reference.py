"""``reference``: the oracle, mamba-ssm's ``selective_scan_ref``.

The plain loop over time with autograd. Readable and slow (its backward is O(L²)); the
oracle in the tests: every other backend agrees with it in outputs and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamba_denoiser.models.scan.common import _as_groups, _check_shapes, _no_autocast


def selective_scan_reference(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    h0=None,
    return_last_state=False,
):
    """The oracle: mamba-ssm's ``selective_scan_ref``, a plain loop over time with autograd.

    Ā and B̄x are computed for all steps up front as (b, d, l, n) tensors and the loop
    indexes them. Slow by construction, and the more so the longer L: the backward of each
    per-step index op writes a full (b, d, l, n) gradient, so the backward is O(L²).
    h0 (b, d, n): the state before the first step (default 0). With ``return_last_state``
    returns (out, h_L) with h_L (b, d, n) float32, differentiable like everything here.
    """
    G = _check_shapes(u, delta, A, B, C, D, z, delta_bias, h0)
    dtype_in = u.dtype
    with _no_autocast(u.device.type):
        u, delta, A = u.float(), delta.float(), A.float()
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        batch, dim, L = u.shape
        # channels as (group g, channel c within it): channel (g, c) reads B[:, g], C[:, g]
        B, C = _as_groups(B).float(), _as_groups(C).float()  # (b, g, n, l)
        u_g = u.reshape(batch, G, dim // G, L)
        delta_g = delta.reshape(batch, G, dim // G, L)
        A_g = A.reshape(G, dim // G, -1)
        deltaA = torch.exp(torch.einsum("bgcl,gcn->bgcln", delta_g, A_g))  # Ā_t = exp(Δ_t A)
        deltaB_u = torch.einsum("bgcl,bgnl,bgcl->bgcln", delta_g, B, u_g)  # B̄_t x_t
        if h0 is None:
            h = u.new_zeros(batch, G, dim // G, A.shape[1])  # (b, g, c, n)
        else:
            h = h0.float().reshape(batch, G, dim // G, A.shape[1])
        ys = []
        for t in range(L):
            h = deltaA[:, :, :, t] * h + deltaB_u[:, :, :, t]
            ys.append(torch.einsum("bgcn,bgn->bgc", h, C[:, :, :, t]))  # y_t = C_t · h_t
        y = torch.stack(ys, dim=-1).reshape(batch, dim, L)
        if D is not None:
            y = y + u * D.float()[:, None]
        if z is not None:
            y = y * F.silu(z.float())
    y = y.to(dtype_in)
    return (y, h.reshape(batch, dim, -1)) if return_last_state else y
