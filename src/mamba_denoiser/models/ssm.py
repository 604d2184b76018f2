"""Selective state-space layer (Mamba-1) and its pluggable scan backends.

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

Backends (all agree with ``reference`` in outputs and gradients; tests check it):

- ``reference``: mamba-ssm's ``selective_scan_ref``: the plain loop over time with
  autograd. Readable and slow (its backward is O(L²)); the oracle in the tests.
- ``fused``: CPU default. A custom autograd Function that loops over time computing
  exp(Δ_t A), Δ_t B_t x_t and C_t · h_t inside each step, so no (batch, L, dim, N)
  tensor is ever built. The backward runs in reverse time; it recomputes the states of one
  chunk of ~sqrt(L) steps at a time from checkpoints saved every chunk in the forward, so
  memory is O(sqrt(L)) states instead of O(L). Measured on 2 CPU cores (benchmarks/scan.py):
  ~35x faster than ``reference`` at B=64, L=60, D=256, N=16; only ~1.1-1.6x faster than a
  well-written autograd loop (``unbind`` over time), which is bound by the same ~20 memory
  passes over the state per step but keeps O(L) states for its backward. (docs/design.md
  "Selective scan backends": a parallel/Blelloch scan does not pay on CPU and its
  exp(S_t)·exp(-S_s) form overflows.)
- ``triton``: GPU default, see ``triton_scan.py``.
- ``mamba_ssm``: the reference CUDA kernel, used only when that package imports and runs.

Everything is computed in float32 regardless of the input dtype (and with autocast
disabled), because the state h accumulates over L steps and bf16/fp16 would drift.

State passing (streaming inference): ``reference`` and ``fused`` accept an initial state
``h0`` (batch, dim, N) and can return the state after the last step (as mamba-ssm's
``return_last_state``), so a long sequence can be scanned chunk by chunk with the result
of one pass. ``triton`` and ``mamba_ssm`` cannot (their kernels start from h = 0): "auto"
then picks ``fused`` (plain torch ops, so it runs on CUDA tensors too), and an explicit
request raises. In ``fused``, h0 is a constant (no gradient flows into it) and the last
state is returned without gradient: enough for inference and truncated BPTT.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

BACKENDS = ("reference", "fused", "triton", "mamba_ssm")


# --------------------------------------------------------------------------------------------
# argument handling shared by all backends
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# reference: the oracle
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# fused: CPU default
# --------------------------------------------------------------------------------------------


def _chunk_size(L: int) -> int:
    # sqrt(L) balances the checkpoints kept (L / k states) against the chunk recomputed in
    # the backward (k states). Smaller, cache-sized chunks measured within noise here.
    return math.isqrt(L - 1) + 1 if L > 1 else 1


def _time_major(x: torch.Tensor, G: int) -> torch.Tensor:
    """(batch, dim, L) -> (L, batch * G, dim // G), contiguous, float32 (maybe x itself)."""
    return rearrange(x.float(), "b (g c) l -> l (b g) c", g=G).contiguous()


def _bc_time_major(M: torch.Tensor) -> torch.Tensor:
    """(batch, G, N, L) -> (L, batch * G, N), contiguous, float32."""
    return rearrange(M.float(), "b g n l -> l (b g) n").contiguous()


def _grouped_A(A: torch.Tensor, batch: int, G: int) -> torch.Tensor:
    """(dim, N) -> (batch * G, N, dim // G): A laid out like the internal state."""
    A = rearrange(A.float(), "(g c) n -> g n c", g=G)
    return A.unsqueeze(0).expand(batch, -1, -1, -1).reshape(-1, *A.shape[1:])


_LOG2_E = math.log2(math.e)
_WORKSPACE = threading.local()


def _workspace(slot: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable float32 scratch tensor of ``shape`` (contents undefined).

    The chunk buffers are up to tens of MB. A fresh CPU allocation that large is mmap'ed
    and page-faulted in on first touch (~0.2 ms per 8 MB here, as much as one arithmetic
    pass over it), so the fused backend keeps five of them per thread and reuses them
    across calls: ~5-10% faster. ``release_workspace()`` frees them. CUDA's caching
    allocator already does this, so only CPU tensors use it.
    """
    numel = math.prod(shape)
    if like.device.type != "cpu":
        return like.new_empty(shape, dtype=torch.float32)
    bufs = getattr(_WORKSPACE, "bufs", None)
    if bufs is None:
        bufs = _WORKSPACE.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.numel() < numel:
        # Always a normal tensor: one made under inference_mode (e.g. Lightning's validation)
        # could not be written in a later training step.
        with torch.inference_mode(False):
            buf = bufs[slot] = torch.empty(numel, dtype=torch.float32)
    return buf[:numel].view(shape)


def release_workspace() -> None:
    """Free this thread's fused-scan scratch buffers (they are re-created on demand)."""
    _WORKSPACE.bufs = {}


def _scan_chunk(hs, dA, dt, du, B, A2_g) -> None:
    """Run n = len(dt) steps from hs[0], writing Ā_t to dA[:n] and h_t to hs[1..n].

    hs: (k+1, bg, N, c); dA: (k, bg, N, c); dt, du: (n, bg, c); B: (n, bg, N);
    A2_g = A·log2(e): (bg, N, c).
    """
    n = dt.shape[0]
    # Ā_t = exp(Δ_t A) = 2^(Δ_t A log2 e): on CPU exp2 is ~3x cheaper than exp, and these
    # exponentials are the largest single cost of the scan
    torch.mul(dt.unsqueeze(-2), A2_g, out=dA[:n]).exp2_()
    for i in range(n):
        torch.mul(dA[i], hs[i], out=hs[i + 1])
        hs[i + 1].addcmul_(B[i].unsqueeze(-1), du[i].unsqueeze(-2))  # + B_t ⊗ (Δ_t x_t)


def _per_channel(v: torch.Tensor, batch: int, G: int) -> torch.Tensor:
    """(dim,) -> (batch * G, dim // G), matching the internal (l, bg, c) layout."""
    return v.float().reshape(1, G, -1).expand(batch, -1, -1).reshape(batch * G, -1)


def _channel_sum(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(l, bg, c) -> (dim,): sum over time and batch of a per-channel quantity."""
    return x.sum(0).reshape(batch, -1).sum(0)


def _to_bdl(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(l, bg, c) -> (batch, dim, l) as a view: no transposing copy."""
    return rearrange(x, "l (b g) c -> b (g c) l", b=batch)


class _FusedSelectiveScan(torch.autograd.Function):
    """Sequential scan with a hand-written reverse-time backward.

    Layout: everything runs time-major, (l, batch·G, c) with c = dim // G, and the state is
    h: (batch·G, N, c): each group's B_t / C_t is one row, and the channel axis is
    innermost, so broadcasting a per-channel Δ_t against A vectorises (a trailing N = 16
    axis does not). Inputs are copied to this layout once (cheap when their memory is
    (batch, L, dim), as the Mamba layers pass them), and gradients/outputs are returned as
    (batch, dim, L) views of it, so no (dim <-> L) transposing copy is made.

    Time is processed in chunks of k = ceil(sqrt(L)) steps. Per step only the recurrences
    run (forward: h = Ā_t ⊙ h + B_t ⊗ (Δ_t x_t); backward: ∂h_t = Ā_{t+1} ⊙ ∂h_{t+1} +
    C_t ⊗ ∂y_t, and the ∂A accumulation); exp(Δ A), the C·h read-out and the other
    gradient contractions run once per chunk on (k, bg, N, c) workspace buffers; the rest
    (softplus, Δ·x, D skip, gate) once on all of L. The forward keeps one state per
    chunk; the backward recomputes a chunk's states from it, so the memory kept for
    backward is O(sqrt(L)) states, never the O(L) of a (batch, L, dim, N) tensor.
    Contractions over c are multiply-then-sum: as batched GEMVs they are ~6x slower on CPU.
    """

    @staticmethod
    def forward(
        ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, needs_grad, return_last
    ):
        # gradients go back in the dtype/shape each input came in (B, C may be 3-D)
        ctx.dtypes = [None if x is None else x.dtype for x in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.B_shape, ctx.C_shape = B.shape, C.shape
        with _no_autocast(u.device.type):
            batch, dim, L = u.shape
            B, C = _as_groups(B), _as_groups(C)
            G, N = B.shape[1], A.shape[1]
            Dg, BG = dim // G, batch * G

            u_tm = _time_major(u, G)  # (l, bg, c)
            dr_tm = _time_major(delta, G)  # Δ before softplus, bias included
            if delta_bias is not None:  # not in place: dr_tm may be a view of the input
                dr_tm = dr_tm + _per_channel(delta_bias, batch, G)
            dt_tm = F.softplus(dr_tm) if delta_softplus else dr_tm  # Δ
            du_tm = dt_tm * u_tm  # Δ_t x_t: the part of B̄_t x_t without B
            B_tm, C_tm = _bc_time_major(B), _bc_time_major(C)  # (l, bg, n)
            A2_g = _grouped_A(A, batch, G) * _LOG2_E  # (bg, n, c)

            k = _chunk_size(L)
            n_chunks = -(-L // k)
            ckpt = u_tm.new_empty(n_chunks, BG, N, Dg) if needs_grad else None
            hs = _workspace(0, (k + 1, BG, N, Dg), u)  # hs[0]: the state entering the chunk
            dA = _workspace(1, (k, BG, N, Dg), u)
            if h0 is None:
                hs[0].zero_()
            else:  # (b, d, n) -> the internal (bg, n, c)
                hs[0].copy_(rearrange(h0, "b (g c) n -> (b g) n c", g=G))
            y_tm = u_tm.new_empty(L, BG, Dg)
            for c in range(n_chunks):
                t0, t1 = c * k, min(L, (c + 1) * k)
                n = t1 - t0
                if needs_grad:
                    ckpt[c].copy_(hs[0])
                _scan_chunk(hs, dA, dt_tm[t0:t1], du_tm[t0:t1], B_tm[t0:t1], A2_g)
                # y_t = C_t · h_t for the chunk: (1, N) @ (N, c) per (t, bg)
                torch.bmm(
                    C_tm[t0:t1].flatten(0, 1).unsqueeze(1),
                    hs[1 : n + 1].flatten(0, 1),
                    out=y_tm[t0:t1].flatten(0, 1).unsqueeze(1),
                )
                hs[0].copy_(hs[n])
            if D is not None:
                y_tm.addcmul_(u_tm, _per_channel(D, batch, G))
            z_tm = _time_major(z, G) if z is not None else None
            out_tm = y_tm * F.silu(z_tm) if z is not None else y_tm

        if needs_grad:
            # Δ and Δx are cheap to recompute; saving them would cost two more (l, b, d) tensors
            ctx.save_for_backward(
                u_tm, dr_tm, A, B_tm, C_tm, D, z_tm, y_tm if z is not None else None, ckpt
            )
            ctx.has_bias = delta_bias is not None
            ctx.delta_softplus = delta_softplus
            ctx.shape = (batch, dim, L, G, N, k)
        out = _to_bdl(out_tm, batch)
        if not return_last:
            return out
        # hs[0] holds h_L after the loop; copied out because the workspace is reused
        last = rearrange(hs[0], "(b g) n c -> b (g c) n", b=batch).clone()
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, gout, *_):  # _: the last state's gradient, if returned (never used)
        u_tm, dr_tm, A, B_tm, C_tm, D, z_tm, y_tm, ckpt = ctx.saved_tensors
        batch, dim, L, G, N, k = ctx.shape
        Dg, BG = dim // G, batch * G
        with _no_autocast(gout.device.type):
            dt_tm = F.softplus(dr_tm) if ctx.delta_softplus else dr_tm
            du_tm = dt_tm * u_tm
            gout_tm = _time_major(gout, G)
            if z_tm is not None:
                sz = torch.sigmoid(z_tm)
                gy_tm = gout_tm * z_tm * sz  # ∂out/∂y = SiLU(z)
                # SiLU'(z) = σ(z)(1 + z(1 - σ(z)))
                gz_tm = gout_tm * y_tm * sz * (1 + z_tm * (1 - sz))
            else:
                gy_tm, gz_tm = gout_tm, None

            A_g = _grouped_A(A, batch, G)  # (bg, n, c)
            A2_g = A_g * _LOG2_E
            g_du = torch.empty_like(du_tm)  # ∂/∂(Δ_t x_t)
            g_dt = torch.empty_like(dt_tm)  # ∂/∂Δ_t, first through Ā_t = exp(Δ_t A) only
            gB_tm, gC_tm = torch.empty_like(B_tm), torch.empty_like(C_tm)
            gA = torch.zeros_like(A_g)  # per (bg, n, c); summed over batch at the end
            hs = _workspace(0, (k + 1, BG, N, Dg), u_tm)
            dA = _workspace(1, (k, BG, N, Dg), u_tm)
            gh = _workspace(2, (k, BG, N, Dg), u_tm)  # ∂L/∂h_t
            # carry[i] = Ā_t ⊙ ∂L/∂h_t: what flows back into h_{t-1} through the recurrence
            carry = _workspace(3, (k, BG, N, Dg), u_tm)
            tmp = _workspace(4, (k, BG, N, Dg), u_tm)
            carry_in = torch.zeros_like(A_g)  # from the chunk after this one

            for c in reversed(range(ckpt.shape[0])):
                t0, t1 = c * k, min(L, (c + 1) * k)
                n, sl = t1 - t0, slice(t0, t1)
                hs[0].copy_(ckpt[c])
                _scan_chunk(hs, dA, dt_tm[sl], du_tm[sl], B_tm[sl], A2_g)
                for i in reversed(range(n)):  # the only sequential part
                    prev = carry_in if i == n - 1 else carry[i + 1]
                    torch.addcmul(
                        prev, C_tm[t0 + i].unsqueeze(-1), gy_tm[t0 + i].unsqueeze(-2), out=gh[i]
                    )
                    torch.mul(gh[i], dA[i], out=carry[i])
                carry_in.copy_(carry[0])
                t = tmp[:n]
                # ∂C_t = Σ_c h_t ∂y_t,  ∂B_t = Σ_c ∂h_t (Δ_t x_t),  ∂(Δ_t x_t) = B_t · ∂h_t
                torch.sum(
                    torch.mul(hs[1 : n + 1], gy_tm[sl].unsqueeze(-2), out=t), -1, out=gC_tm[sl]
                )
                torch.sum(torch.mul(gh[:n], du_tm[sl].unsqueeze(-2), out=t), -1, out=gB_tm[sl])
                torch.bmm(
                    B_tm[sl].flatten(0, 1).unsqueeze(1),
                    gh[:n].flatten(0, 1),
                    out=g_du[sl].flatten(0, 1).unsqueeze(1),
                )
                # q = ∂L/∂Ā_t ⊙ Ā_t = carry ⊙ h_{t-1}; with exp' = exp it gives ∂Δ_t and ∂A
                q = carry[:n].mul_(hs[:n])
                torch.sum(torch.mul(q, A_g, out=t), -2, out=g_dt[sl])
                for i in range(n):  # a reduction over the chunk axis is slow; fused adds are not
                    gA.addcmul_(q[i], dt_tm[t0 + i].unsqueeze(-2))

            g_dt.addcmul_(g_du, u_tm)  # Δ also enters through Δ_t x_t
            gu_tm = g_du.mul_(dt_tm)
            if D is not None:
                gu_tm.addcmul_(gy_tm, _per_channel(D, batch, G))
                gD = _channel_sum(gy_tm * u_tm, batch)
            else:
                gD = None
            if ctx.delta_softplus:
                g_dt.mul_(torch.sigmoid(dr_tm))  # softplus' = sigmoid
            g_bias = _channel_sum(g_dt, batch) if ctx.has_bias else None
            gA = rearrange(gA, "(b g) n c -> b (g c) n", b=batch).sum(0)
            gB = rearrange(gB_tm, "l (b g) n -> b g n l", b=batch)
            gC = rearrange(gC_tm, "l (b g) n -> b g n l", b=batch)

        t_u, t_delta, t_A, t_B, t_C, t_D, t_z, t_bias = ctx.dtypes
        return (
            _to_bdl(gu_tm, batch).to(t_u),
            _to_bdl(g_dt, batch).to(t_delta),
            gA.to(t_A),
            gB.reshape(ctx.B_shape).to(t_B),
            gC.reshape(ctx.C_shape).to(t_C),
            gD.to(t_D) if gD is not None else None,
            _to_bdl(gz_tm, batch).to(t_z) if gz_tm is not None else None,
            g_bias.to(t_bias) if g_bias is not None else None,
            None,  # h0: a constant
            None,
            None,
            None,
        )


# The fused scan is a Python loop over time with a hand-written backward: dynamo cannot trace
# it (it aliases scratch buffers) and would gain nothing, so torch.compile leaves it out and
# compiles the projections, convolution and norms around it.
@torch.compiler.disable
def selective_scan_fused(
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
    """h0 (b, d, n): the state before the first step (default 0), a constant here: its
    gradient is not computed. With ``return_last_state`` returns (out, h_L), h_L (b, d, n)
    float32 without gradient. Gradients of all other inputs are exact given h0."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, h0)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if h0 is not None:
        if torch.is_grad_enabled() and h0.requires_grad:
            raise ValueError(
                "the fused scan treats h0 as a constant; detach it, or use backend='reference' "
                "to differentiate through the initial state"
            )
        h0 = h0.float()
    out = _FusedSelectiveScan.apply(
        u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, needs_grad, return_last_state
    )
    if return_last_state:
        return out[0].to(u.dtype), out[1]
    return out.to(u.dtype)


# --------------------------------------------------------------------------------------------
# optional GPU backends and dispatch
# --------------------------------------------------------------------------------------------

_MAMBA_SSM_PROBE: dict[str, object] = {}


def mamba_ssm_available() -> bool:
    """True if mamba-ssm imports AND its CUDA kernel runs here (probed once, then cached)."""
    if "ok" not in _MAMBA_SSM_PROBE:
        ok, reason = False, "not probed"
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            if not torch.cuda.is_available():
                reason = "CUDA is not available"
            else:
                x = torch.randn(1, 2, 4, device="cuda")
                out = selective_scan_fn(
                    x,
                    x.abs(),
                    -torch.ones(2, 2, device="cuda"),
                    x[:, :1].expand(1, 2, 4),
                    x[:, :1].expand(1, 2, 4).contiguous(),
                )
                torch.cuda.synchronize()
                ok, reason = bool(torch.isfinite(out).all()), "probe output not finite"
                _MAMBA_SSM_PROBE["fn"] = selective_scan_fn
        except Exception as err:  # any import/runtime failure just means "not usable"
            reason = f"{type(err).__name__}: {err}"
        _MAMBA_SSM_PROBE["ok"], _MAMBA_SSM_PROBE["reason"] = ok, ("" if ok else reason)
    return bool(_MAMBA_SSM_PROBE["ok"])


def triton_available() -> bool:
    from mamba_denoiser.models import triton_scan

    return triton_scan.HAS_TRITON


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
    import os

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
        why = "tensors are not on CUDA" if device.type != "cuda" else _MAMBA_SSM_PROBE["reason"]
        raise RuntimeError(
            f"scan backend 'mamba_ssm' requested but unusable ({why}); "
            "install mamba-ssm on a CUDA machine or use backend='auto'"
        )
    return backend


def _selective_scan_mamba_ssm(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    fn = _MAMBA_SSM_PROBE["fn"]
    dtype_in = u.dtype
    with _no_autocast("cuda"):
        out = fn(
            u.float().contiguous(),
            delta.float().contiguous(),
            A.float().contiguous(),
            B.float().contiguous(),
            C.float().contiguous(),
            D.float() if D is not None else None,
            z.float().contiguous() if z is not None else None,
            delta_bias.float() if delta_bias is not None else None,
            delta_softplus,
        )
    return out.to(dtype_in)


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
    if h0 is not None or return_last_state:
        if name in ("triton", "mamba_ssm"):
            if backend != "auto":
                raise ValueError(
                    f"scan backend {name!r} cannot take or return the state h (h0 / "
                    "return_last_state); use backend='fused' (runs on CUDA too) or 'auto'"
                )
            name = "fused"
        kw = dict(h0=h0, return_last_state=return_last_state)
        args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        if name == "reference":
            return selective_scan_reference(*args, **kw)
        return selective_scan_fused(*args, **kw)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "reference":
        return selective_scan_reference(*args)
    if name == "fused":
        return selective_scan_fused(*args)
    if name == "triton":
        from mamba_denoiser.models.triton_scan import selective_scan_triton

        return selective_scan_triton(*args)
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    return _selective_scan_mamba_ssm(*args)


# --------------------------------------------------------------------------------------------
# modules (they work in (batch, L, channels) layout end to end; see scan_bld)
# --------------------------------------------------------------------------------------------


class _CausalDepthwiseConv(torch.autograd.Function):
    """Depthwise causal conv along time on (b, l, d), as shifted multiply-adds.

    nn.Conv1d wants (b, d, l); the projections around it want (b, l, d). With d_conv = 4
    taps, four fused multiply-adds in (b, l, d) layout are cheaper than the two
    transposing copies (L becomes the innermost axis) that Conv1d would need each way.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        # out[:, t] = bias + Σ_j weight[:, j] · x[:, t - (K-1) + j]  (zero before t = 0)
        L, K = x.shape[1], weight.shape[1]
        w = weight.to(x.dtype)
        out = x * w[:, K - 1]
        if bias is not None:
            out += bias.to(x.dtype)
        for j in range(K - 1):
            s = K - 1 - j  # tap j looks s steps back
            if s < L:
                out[:, s:].addcmul_(x[:, : L - s], w[:, j])
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        L, K = x.shape[1], weight.shape[1]
        w = weight.to(g.dtype)
        gx = g * w[:, K - 1]
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        gw[:, K - 1] = (g * x).sum((0, 1))
        for j in range(K - 1):
            s = K - 1 - j
            if s < L:
                gx[:, : L - s].addcmul_(g[:, s:], w[:, j])
                gw[:, j] = (g[:, s:] * x[:, : L - s]).sum((0, 1))
        gb = g.sum((0, 1)).to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return gx, gw.to(weight.dtype), gb


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """Depthwise causal conv: x (b, l, d), weight (d, k), bias (d,) -> (b, l, d)."""
    return _CausalDepthwiseConv.apply(x, weight, bias)


def scan_bld(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=True,
    backend="auto",
    h0=None,
    return_last_state=False,
):
    """``selective_scan`` for (batch, L, ·) tensors: u, delta, z (b, l, d); B, C (b, l, n) or
    (b, l, G, n). Returns (b, l, d), and h_L (b, d, n) with ``return_last_state``. The
    layout changes are views: the fused backend reads (b, l, d) memory with d innermost
    without any transposing copy."""
    bc = "b l n -> b n l" if B.dim() == 3 else "b l g n -> b g n l"
    y = selective_scan(
        rearrange(u, "b l d -> b d l"),
        rearrange(delta, "b l d -> b d l"),
        A,
        rearrange(B, bc),
        rearrange(C, bc),
        D,
        z=rearrange(z, "b l d -> b d l") if z is not None else None,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        backend=backend,
        h0=h0,
        return_last_state=return_last_state,
    )
    if return_last_state:
        return rearrange(y[0], "b d l -> b l d"), y[1]
    return rearrange(y, "b d l -> b l d")


def init_dt_proj(
    dt_proj: nn.Linear,
    dt_rank: int,
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
    dt_init_floor: float = 1e-4,
    dt_scale: float = 1.0,
) -> None:
    """mamba-ssm's Δ init: softplus(bias) is log-uniform in [dt_min, dt_max]."""
    std = dt_rank**-0.5 * dt_scale
    nn.init.uniform_(dt_proj.weight, -std, std)
    d = dt_proj.out_features
    dt = torch.exp(torch.rand(d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
    with torch.no_grad():
        dt_proj.bias.copy_(inv_dt)
    dt_proj.bias._no_reinit = True


class SSMDirection(nn.Module):
    """The per-direction part of a Mamba mixer.

    Causal depthwise conv on x, SiLU, the selective projections x -> (Δ, B, C), and the
    diagonal state matrix A = -exp(A_log) with skip D. ``SelectiveSSM`` has one;
    ``BiMambaBlock`` has two (forward and time-reversed). Parameter names and shapes are
    mamba-ssm's (conv1d.weight is (d, 1, k)); the conv itself runs as ``causal_conv1d``.
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int = 16,
        d_conv: int = 4,
        dt_rank: int = 8,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
    ):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.conv1d = nn.Conv1d(
            d_inner,
            d_inner,
            kernel_size=d_conv,
            groups=d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        init_dt_proj(self.dt_proj, dt_rank, dt_min, dt_max, dt_init_floor, dt_scale)
        # S4D-real: A = -(1, 2, ..., N) for every channel
        A = repeat(torch.arange(1, d_state + 1, dtype=torch.float32), "n -> d n", d=d_inner)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True

    @property
    def A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.float())  # (d, n)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor | None = None):
        """x: (b, l, d) -> scan inputs u (b, l, d), Δ before its bias (b, l, d), B, C (b, l, n).

        conv_state (b, d, d_conv - 1): the conv inputs just before x (zeros at the start of
        a sequence). When given, the new conv state (the last d_conv - 1 conv inputs) is
        returned as a fifth output.
        """
        if conv_state is None:
            u = F.silu(causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias))
        else:
            # the conv over [state, x] from its first row is exactly the conv of one long
            # pass; its first d_conv - 1 outputs belong to the previous chunk
            n_prev = conv_state.shape[-1]
            x = torch.cat([conv_state.transpose(1, 2).to(x.dtype), x], dim=1)  # (b, k-1+l, d)
            u = causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias)[:, n_prev:]
            u = F.silu(u)
            conv_state = x[:, x.shape[1] - n_prev :].transpose(1, 2)  # (b, d, k-1)
        x_dbl = self.x_proj(u)  # (b, l, dt_rank + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # the bias is added (in float32) inside the scan, as mamba-ssm does
        delta = F.linear(dt, self.dt_proj.weight)  # (b, l, d)
        if conv_state is not None:
            return u, delta, B, C, conv_state
        return u, delta, B, C


class SSMState(NamedTuple):
    """The recurrent state of a ``SelectiveSSM`` after the last time step it has seen.

    Passing it back continues the sequence: forward(x[:, :a]) then forward(x[:, a:], state)
    gives forward(x) (up to float rounding). It is only meaningful for the same batch rows
    (and, in a conditioned model, the same conditioning).
    """

    conv: torch.Tensor  # (B, d_inner, d_conv - 1): the last conv inputs, activation dtype
    ssm: torch.Tensor  # (B, d_inner, d_state): h after the last step, float32


class SelectiveSSM(nn.Module):
    """Mamba-1 mixer (as mamba_simple.Mamba): (B, L, d_model) -> (B, L, d_model).

    in_proj -> (x, z); x -> causal depthwise conv -> SiLU -> selective scan with input-
    dependent Δ, B, C -> y · SiLU(z) -> out_proj. No norm or residual: see ``MambaBlock``.

    Streaming: ``forward(x, state=None, return_state=True)`` also returns an ``SSMState``
    to pass to the next chunk. State passing is for inference (the SSM state gets no
    gradient with the fused scan) and runs on the reference or fused scan: a module built
    with backend "triton"/"mamba_ssm" uses "fused" for it (plain torch ops, CUDA or CPU).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.d_model, self.d_state, self.expand = d_model, d_state, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.ssm = SSMDirection(
            self.d_inner,
            d_state,
            d_conv,
            self.dt_rank,
            dt_min,
            dt_max,
            dt_init_floor,
            dt_scale,
            conv_bias,
        )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, x: torch.Tensor, state: SSMState | None = None, return_state: bool = False):
        """x (B, L, d_model) -> (B, L, d_model); with ``return_state``, (y, SSMState).

        state: the SSMState returned for the previous chunk (None: start of a sequence).
        """
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (b, l, d_inner) each
        if state is None and not return_state:  # training: no state, no extra work
            u, delta, B, C = self.ssm(x)
            y = scan_bld(
                u,
                delta,
                self.ssm.A,
                B,
                C,
                self.ssm.D.float(),
                z=z,
                delta_bias=self.ssm.dt_proj.bias.float(),
                delta_softplus=True,
                backend=self.backend,
            )
            return self.out_proj(y)
        if state is None:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        u, delta, B, C, conv_state = self.ssm(x, conv_state=state.conv)
        backend = self.backend if self.backend in ("auto", "reference", "fused") else "fused"
        y, h = scan_bld(
            u,
            delta,
            self.ssm.A,
            B,
            C,
            self.ssm.D.float(),
            z=z,
            delta_bias=self.ssm.dt_proj.bias.float(),
            delta_softplus=True,
            backend=backend,
            h0=state.ssm,
            return_last_state=True,
        )
        y = self.out_proj(y)
        return (y, SSMState(conv_state, h)) if return_state else y

    def initial_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SSMState:
        """The state before the first step: zero conv inputs (the conv's zero padding), h = 0."""
        k = self.ssm.conv1d.kernel_size[0]
        return SSMState(
            conv=torch.zeros(batch, self.d_inner, k - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device),
        )
