"""Triton selective scan (GPU default backend); same conventions as ``scan.selective_scan``.

One program per (batch · group, block of BLOCK_D channels). The state h
(BLOCK_D, BLOCK_N) lives in registers, in float32, and the program walks sequentially
over L, fusing softplus(Δ + bias), exp(ΔA), the B̄x update, C·h, the D skip and the SiLU(z)
gate; the output is the only (batch, dim, L) write. The forward stores h at the start of
every chunk of CHUNK steps. The backward walks the chunks in reverse: it recomputes the
chunk's states from the checkpoint into a per-program scratch buffer, then runs the
reverse-time adjoint recursion ∂h_t = Ā_{t+1} ⊙ ∂h_{t+1} + C_t ∂y_t in registers. Per-
channel gradients (u, Δ, z) are written directly; gradients shared across programs
(A, D, Δ-bias summed over batch; B, C summed over channels) go to per-program partial
buffers that the host sums, which keeps the result deterministic (no atomics).

triton is optional: without it this module imports fine and ``HAS_TRITON`` is False.
On a machine without a GPU the kernels can still be run by Triton's interpreter
(set TRITON_INTERPRET=1 before triton is first imported); the tests do this.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from mamba_denoiser.models.scan.common import _check_shapes, _no_autocast

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # triton is an optional (GPU) dependency
    triton = tl = None
    HAS_TRITON = False

_LOG2_E = math.log2(math.e)


if HAS_TRITON:

    @triton.jit
    def _softplus(x):
        # as mamba-ssm's kernel: identity above 20, where exp would only lose precision
        return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)

    @triton.jit
    def _program(G, Dg, N, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        # this program's (batch · group, block of channels): its batch row b, group g,
        # channels (global index offs_d) and state indices, with their masks
        pid_bg = tl.program_id(0)
        pid_d = tl.program_id(1)
        b = pid_bg // G
        g = pid_bg % G
        offs_c = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_c < Dg
        offs_d = g * Dg + offs_c  # global channel index
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_dn = mask_d[:, None] & mask_n[None, :]
        return pid_bg, pid_d, b, g, offs_d, offs_n, mask_d, mask_n, mask_dn

    @triton.jit
    def _addresses(
        b,
        g,
        offs_d,
        offs_n,
        s_b,
        s_d,
        s_Bb,
        s_Bg,
        s_Bn,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # where the program's (b, d, t) values live (row + t * s_l), its (b, g, n, t) ones
        # (brow + t * s_Bl), and its (BLOCK_D, BLOCK_N) state tile in a state buffer
        row = b * s_b + offs_d * s_d
        brow = b * s_Bb + g * s_Bg + offs_n * s_Bn
        tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
        return row, brow, tile

    @triton.jit
    def _load_params(
        A_ptr,
        D_ptr,
        bias_ptr,
        offs_d,
        offs_n,
        N,
        mask_d,
        mask_dn,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
    ):
        # this program's A (also pre-scaled by log2 e: exp(ΔA) = exp2(ΔA log2 e)), D and
        # Δ-bias; an absent D / Δ-bias is a 0.0 placeholder that is never read (HAS_D /
        # HAS_BIAS guard every use)
        A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0)
        A2 = A * 1.4426950408889634
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
        else:
            Dv = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
        else:
            bias = 0.0
        return A, A2, Dv, bias

    @triton.jit
    def _step_inputs(
        u_ptr, delta_ptr, B_ptr, at, bias, t, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr
    ):
        # what every step of the recursion reads at time t: u, Δ + bias before and after the
        # softplus, and B_t
        row, brow, _, s_l, s_Bl, mask_d, mask_n = at
        u = tl.load(u_ptr + row + t * s_l, mask=mask_d, other=0.0)
        dt_raw = tl.load(delta_ptr + row + t * s_l, mask=mask_d, other=0.0)
        if HAS_BIAS:
            dt_raw = dt_raw + bias
        if SOFTPLUS:
            dt = _softplus(dt_raw)
        else:
            dt = dt_raw
        Bt = tl.load(B_ptr + brow + t * s_Bl, mask=mask_n, other=0.0)
        return u, dt_raw, dt, Bt

    # The kernels' arguments, one group a line; ruff would put each on a line of its own.
    # fmt: off
    @triton.jit
    def _fwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,  # inputs
        out_ptr, ckpt_ptr,  # the output and the chunk-start states
        L, G, Dg, N, n_dblocks, n_chunks, CHUNK,  # sizes
        s_b, s_d, s_l, s_Bb, s_Bg, s_Bn, s_Bl,  # strides of (b, d, l) and (b, g, n, l)
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, SAVE_CKPT: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_bg, pid_d, b, g, offs_d, offs_n, mask_d, mask_n, mask_dn = _program(
            G, Dg, N, BLOCK_D, BLOCK_N
        )
        A, A2, Dv, bias = _load_params(
            A_ptr, D_ptr, bias_ptr, offs_d, offs_n, N, mask_d, mask_dn, HAS_D, HAS_BIAS
        )
        row, brow, tile = _addresses(
            b, g, offs_d, offs_n, s_b, s_d, s_Bb, s_Bg, s_Bn, BLOCK_D, BLOCK_N
        )
        at = (row, brow, 0, s_l, s_Bl, mask_d, mask_n)  # no B/C partials in the forward
        ckpt_base = (pid_bg * n_dblocks + pid_d) * n_chunks * BLOCK_D * BLOCK_N

        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for t in range(L):
            if SAVE_CKPT:
                if t % CHUNK == 0:
                    tl.store(ckpt_ptr + ckpt_base + (t // CHUNK) * BLOCK_D * BLOCK_N + tile, h)
            u, dt_raw, dt, Bt = _step_inputs(
                u_ptr, delta_ptr, B_ptr, at, bias, t, HAS_BIAS, SOFTPLUS
            )
            Ct = tl.load(C_ptr + brow + t * s_Bl, mask=mask_n, other=0.0)
            dA = tl.exp2(dt[:, None] * A2)
            h = dA * h + (dt * u)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
            if HAS_D:
                y = y + Dv * u
            if HAS_Z:
                zt = tl.load(z_ptr + row + t * s_l, mask=mask_d, other=0.0)
                y = y * zt * tl.sigmoid(zt)
            tl.store(out_ptr + row + t * s_l, y, mask=mask_d)
    # fmt: on

    @triton.jit
    def _bwd_recompute_chunk(
        ins, at, states, params, c, t0, n_steps, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr
    ):
        # backward, first pass over chunk c: rerun the forward recursion from the chunk's
        # checkpoint and keep every state in this program's scratch buffer
        u_ptr, delta_ptr, B_ptr, _, _, _ = ins
        ckpt_ptr, ckpt_base, scratch_ptr, scratch_base, tile, tile_size = states
        _, A2, _, bias = params
        # recompute the chunk's states: scratch slot 0 = h_{t0-1}, slot i+1 = h_{t0+i}
        h = tl.load(ckpt_ptr + ckpt_base + c * tile_size + tile)
        tl.store(scratch_ptr + scratch_base + tile, h)
        for i in range(n_steps):
            t = t0 + i
            u, dt_raw, dt, Bt = _step_inputs(
                u_ptr, delta_ptr, B_ptr, at, bias, t, HAS_BIAS, SOFTPLUS
            )
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scratch_ptr + scratch_base + (i + 1) * tile_size + tile, h)

    @triton.jit
    def _bwd_step(
        ins,
        outs,
        at,
        states,
        params,
        t,
        i,
        acc,
        HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
    ):
        # backward, one reverse-time step t (slot i of the chunk's scratch): the adjoint
        # recursion; writes the per-step gradients (u, Δ, z; B, C partials) and returns the
        # new carry and the running A, D, Δ-bias sums (acc: their values before this step)
        carry, gA_acc, gD_acc, gbias_acc = acc
        u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, gout_ptr = ins
        gu_ptr, gdelta_ptr, gz_ptr, gB_ptr, gC_ptr = outs
        row, brow, part, s_l, s_Bl, mask_d, mask_n = at
        _, _, scratch_ptr, scratch_base, tile, tile_size = states
        A, A2, Dv, bias = params
        u, dt_raw, dt, Bt = _step_inputs(u_ptr, delta_ptr, B_ptr, at, bias, t, HAS_BIAS, SOFTPLUS)
        Ct = tl.load(C_ptr + brow + t * s_Bl, mask=mask_n, other=0.0)
        gout = tl.load(gout_ptr + row + t * s_l, mask=mask_d, other=0.0)
        h_t = tl.load(scratch_ptr + scratch_base + (i + 1) * tile_size + tile)
        h_prev = tl.load(scratch_ptr + scratch_base + i * tile_size + tile)
        if HAS_Z:
            zt = tl.load(z_ptr + row + t * s_l, mask=mask_d, other=0.0)
            sz = tl.sigmoid(zt)
            y = tl.sum(h_t * Ct[None, :], axis=1)
            if HAS_D:
                y = y + Dv * u
            tl.store(gz_ptr + row + t * s_l, gout * y * sz * (1 + zt * (1 - sz)), mask=mask_d)
            gy = gout * zt * sz
        else:
            gy = gout
        gy = tl.where(mask_d, gy, 0.0)
        gh = carry + gy[:, None] * Ct[None, :]
        tl.store(gC_ptr + part + t, tl.sum(gy[:, None] * h_t, axis=0), mask=mask_n)
        tl.store(gB_ptr + part + t, tl.sum((dt * u)[:, None] * gh, axis=0), mask=mask_n)
        g_du = tl.sum(gh * Bt[None, :], axis=1)
        carry = gh * tl.exp2(dt[:, None] * A2)
        q = carry * h_prev  # ∂L/∂Ā_t ⊙ Ā_t
        g_dt = tl.sum(q * A, axis=1) + g_du * u
        gA_acc += q * dt[:, None]
        gu = g_du * dt
        if HAS_D:
            gu = gu + gy * Dv
            gD_acc += gy * u
        if SOFTPLUS:
            g_dt = g_dt * tl.sigmoid(dt_raw)
        gbias_acc += g_dt
        tl.store(gu_ptr + row + t * s_l, gu, mask=mask_d)
        tl.store(gdelta_ptr + row + t * s_l, g_dt, mask=mask_d)
        return carry, gA_acc, gD_acc, gbias_acc

    @triton.jit
    def _bwd_scan(
        ins,
        outs,
        at,
        states,
        params,
        seq,
        HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # backward, main loop: the chunks in reverse, each recomputed then walked back step by
        # step; returns this program's A, D and Δ-bias sums
        L, n_chunks, CHUNK = seq
        carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # Ā_{t+1} ⊙ ∂h_{t+1}
        gA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        gD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        gbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for cc in range(n_chunks):
            c = n_chunks - 1 - cc
            t0 = c * CHUNK
            n_steps = tl.minimum(L - t0, CHUNK)
            _bwd_recompute_chunk(ins, at, states, params, c, t0, n_steps, HAS_BIAS, SOFTPLUS)
            tl.debug_barrier()  # the states written above are read back by other threads
            for ii in range(n_steps):
                i = n_steps - 1 - ii
                t = t0 + i
                acc = (carry, gA_acc, gD_acc, gbias_acc)
                carry, gA_acc, gD_acc, gbias_acc = _bwd_step(
                    ins, outs, at, states, params, t, i, acc, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS
                )
            tl.debug_barrier()  # scratch is overwritten by the next chunk
        return gA_acc, gD_acc, gbias_acc

    # fmt: off
    @triton.jit
    def _bwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,  # inputs
        gout_ptr, ckpt_ptr, scratch_ptr,  # ∂L/∂out, the chunk-start states, scratch
        gu_ptr, gdelta_ptr, gz_ptr,  # per-channel gradients
        gA_ptr, gD_ptr, gbias_ptr, gB_ptr, gC_ptr,  # partial sums the host adds up
        L, G, Dg, N, dim, n_dblocks, n_chunks, CHUNK,  # sizes
        s_b, s_d, s_l, s_Bb, s_Bg, s_Bn, s_Bl,  # strides of (b, d, l) and (b, g, n, l)
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_bg, pid_d, b, g, offs_d, offs_n, mask_d, mask_n, mask_dn = _program(
            G, Dg, N, BLOCK_D, BLOCK_N
        )
        params = _load_params(
            A_ptr, D_ptr, bias_ptr, offs_d, offs_n, N, mask_d, mask_dn, HAS_D, HAS_BIAS
        )
        row, brow, tile = _addresses(
            b, g, offs_d, offs_n, s_b, s_d, s_Bb, s_Bg, s_Bn, BLOCK_D, BLOCK_N
        )
        tile_size = BLOCK_D * BLOCK_N
        prog = pid_bg * n_dblocks + pid_d
        ckpt_base = prog * n_chunks * tile_size
        scratch_base = prog * (CHUNK + 1) * tile_size
        # partial sums over this program's channels, for B and C: (n_dblocks, bG, N, L)
        part = (pid_d * (tl.num_programs(0)) + pid_bg) * N * L + offs_n * L

        # the helpers' arguments, bundled: per-step inputs, per-step gradient outputs, per-step
        # addressing ((b, d, t) at row + t * s_l, (b, g, n, t) at brow + t * s_Bl, B/C
        # partials at part + t), the state buffers, the sequence length and its chunking
        ins = (u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, gout_ptr)
        outs = (gu_ptr, gdelta_ptr, gz_ptr, gB_ptr, gC_ptr)
        at = (row, brow, part, s_l, s_Bl, mask_d, mask_n)
        states = (ckpt_ptr, ckpt_base, scratch_ptr, scratch_base, tile, tile_size)
        seq = (L, n_chunks, CHUNK)
        gA_acc, gD_acc, gbias_acc = _bwd_scan(
            ins, outs, at, states, params, seq, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_D, BLOCK_N
        )
        # per-batch partials over (dim, N) / (dim,); the host sums over batch
        tl.store(gA_ptr + b * dim * N + offs_d[:, None] * N + offs_n[None, :], gA_acc, mask=mask_dn)
        if HAS_D:
            tl.store(gD_ptr + b * dim + offs_d, gD_acc, mask=mask_d)
        if HAS_BIAS:
            tl.store(gbias_ptr + b * dim + offs_d, gbias_acc, mask=mask_d)
    # fmt: on


class _Launch(NamedTuple):
    """What both kernels are launched with for one scan: one program per (batch · group,
    block of BLOCK_D channels); the forward keeps the state at every CHUNK-th step."""

    grid: tuple[int, int]  # (batch · G, n_dblocks)
    sizes: tuple[int, int, int, int]  # L, G, Dg (channels per group), N
    chunking: tuple[int, int, int]  # n_dblocks, n_chunks, CHUNK
    strides: tuple[int, ...]  # u's (b, d, l), then B's (b, g, n, l)
    flags: dict[str, Any]  # the compile-time ones: HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_*

    def state_buffer(self, n_states: int, like: torch.Tensor) -> torch.Tensor:
        """Room for n_states (BLOCK_D, BLOCK_N) float32 tiles per program."""
        n_tiles = self.grid[0] * self.grid[1] * n_states
        return like.new_empty(n_tiles * self.flags["BLOCK_D"] * self.flags["BLOCK_N"])


def _launch(u, A, B, D, z, delta_bias, delta_softplus: bool) -> _Launch:
    batch, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    Dg = dim // G
    block_d = min(32, triton.next_power_of_2(Dg))
    chunk = max(1, math.isqrt(max(L - 1, 0)) + 1) if L > 1 else 1  # ~sqrt(L) states kept
    n_dblocks = triton.cdiv(Dg, block_d)
    flags = {
        "HAS_D": D is not None,
        "HAS_Z": z is not None,
        "HAS_BIAS": delta_bias is not None,
        "SOFTPLUS": bool(delta_softplus),
        "BLOCK_D": block_d,
        "BLOCK_N": triton.next_power_of_2(N),
    }
    return _Launch(
        grid=(batch * G, n_dblocks),
        sizes=(L, G, Dg, N),
        chunking=(n_dblocks, triton.cdiv(L, chunk), chunk),
        strides=(*u.stride(), *B.stride()),
        flags=flags,
    )


def _inputs(u, delta, A, B, C, D, z, delta_bias) -> tuple[torch.Tensor, ...]:
    """The kernels' eight input pointers: an absent D / z / Δ-bias is u, never read."""
    return (u, delta, A, B, C, *(u if x is None else x for x in (D, z, delta_bias)))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """float32 with L as the outer axis and channels innermost: (b, d, l) with memory
    (b, l, d), or (b, g, n, l) with memory (b, l, g, n). No copy if already so."""
    x = x.float()
    perm = (0, x.dim() - 1, *range(1, x.dim() - 1))  # logical -> memory order
    inv = [perm.index(i) for i in range(x.dim())]
    return x.permute(perm).contiguous().permute(inv)


class _TritonSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.dtypes = [None if x is None else x.dtype for x in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.B_shape, ctx.C_shape = B.shape, C.shape
        B = B.unsqueeze(1) if B.dim() == 3 else B
        C = C.unsqueeze(1) if C.dim() == 3 else C
        # channel-innermost memory: the BLOCK_D channels a program reads at step t are
        # adjacent (coalesced), and (b, l, d) tensors from the Mamba layers need no copy
        u, delta, z = (None if x is None else _channels_last(x) for x in (u, delta, z))
        B, C = _channels_last(B), _channels_last(C)
        A = A.float().contiguous()
        D = D.float().contiguous() if D is not None else None
        delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
        run = _launch(u, A, B, D, z, delta_bias, delta_softplus)
        out = torch.empty_like(u)
        ckpt = run.state_buffer(run.chunking[1], u)  # the state at the start of every chunk
        inputs = _inputs(u, delta, A, B, C, D, z, delta_bias)
        _fwd_kernel[run.grid](
            *inputs, out, ckpt, *run.sizes, *run.chunking, *run.strides, SAVE_CKPT=True, **run.flags
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        return out

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        gout = _channels_last(gout)
        if gout.stride() != u.stride():  # the kernel indexes gout with u's strides
            gout = torch.empty_like(u).copy_(gout)
        run = _launch(u, A, B, D, z, delta_bias, ctx.delta_softplus)
        batch, dim, L = u.shape
        G, N = B.shape[1], A.shape[1]
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gz = torch.empty_like(u) if z is not None else u
        gA = u.new_zeros(batch, dim, N)
        gD = u.new_zeros(batch, dim)
        gbias = u.new_zeros(batch, dim)
        gB = u.new_zeros(run.grid[1], batch * G, N, L)  # per channel block, summed below
        gC = u.new_zeros(run.grid[1], batch * G, N, L)
        scratch = run.state_buffer(run.chunking[2] + 1, u)  # one chunk's states
        grads = (gu, gdelta, gz, gA, gD, gbias, gB, gC)
        _bwd_kernel[run.grid](
            *_inputs(u, delta, A, B, C, D, z, delta_bias),
            gout,
            ckpt,
            scratch,
            *grads,
            *run.sizes,
            dim,
            *run.chunking,
            *run.strides,
            **run.flags,
        )
        t_u, t_delta, t_A, t_B, t_C, t_D, t_z, t_bias = ctx.dtypes
        gB = gB.sum(0).reshape(batch, G, N, L).reshape(ctx.B_shape).to(t_B)
        gC = gC.sum(0).reshape(batch, G, N, L).reshape(ctx.C_shape).to(t_C)
        return (
            gu.to(t_u),
            gdelta.to(t_delta),
            gA.sum(0).to(t_A),
            gB,
            gC,
            gD.sum(0).to(t_D) if D is not None else None,
            gz.to(t_z) if z is not None else None,
            gbias.sum(0).to(t_bias) if delta_bias is not None else None,
            None,
        )


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False
) -> torch.Tensor:
    """Triton backend of ``scan.selective_scan``; float32 inside, output in u's dtype."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; `pip install triton` or use backend='fused'")
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    with _no_autocast(u.device.type):
        out = _TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out.to(u.dtype)
