"""Selective state-space layer (Mamba-1): the modules around the selective scan.

``SelectiveSSM`` is the Mamba-1 mixer, causal or bidirectional; ``SSMDirection`` its
per-direction part (causal depthwise conv, SiLU, the selective projections x -> (Δ, B, C),
A and D), which a bidirectional mixer has twice; ``SSMState`` the recurrent state for
streaming. They work in (batch, L, channels) layout end to end: ``causal_conv1d`` is the
depthwise conv in that layout, and ``scan_bld`` runs ``models.scan.selective_scan`` on
(batch, L, ·) views.
``init_dt_proj`` is mamba-ssm's Δ initialisation.

The scan itself, its recurrence, argument conventions and backends (reference, fused,
triton, mamba_ssm) are in ``mamba_denoiser.models.scan``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from mamba_denoiser.models.scan import BACKENDS, selective_scan

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
    diagonal state matrix A = -exp(A_log) with skip D. ``SelectiveSSM`` has one, or two
    when bidirectional (forward and time-reversed). Parameter names and shapes are
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

    def scan(self, u, delta, B, C, *, z, backend: str, **state):
        """``scan_bld`` of this direction's forward outputs with its A, D and Δ-bias
        (softplus Δ), gated by SiLU(z); ``state``: h0 / return_last_state."""
        D, bias = self.D.float(), self.dt_proj.bias.float()
        return scan_bld(u, delta, self.A, B, C, D, z=z, delta_bias=bias, backend=backend, **state)

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

    ``bidirectional`` (Vim-v2 / Caduceus style, ``BiMambaBlock``): a second direction
    ``ssm_bwd`` with its own conv1d, x_proj, dt_proj, A_log and D scans the time-reversed
    sequence; in_proj and out_proj are shared. Both scans run as ONE selective_scan call
    (the directions stacked as channels, 2 · d_inner, with one B/C group each), and the two
    outputs, each gated by SiLU(z) at its own time step, are averaged before out_proj.

    Streaming (causal only): ``forward(x, state=None, return_state=True)`` also returns an
    ``SSMState`` to pass to the next chunk. State passing is for inference (the SSM state
    gets no gradient with the fused scan) and runs on the reference or fused scan: a
    module built with backend "triton"/"mamba_ssm" uses "fused" for it (plain torch ops,
    CUDA or CPU).
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
        bidirectional: bool = False,
    ):
        super().__init__()
        self.d_model, self.d_state, self.expand = d_model, d_state, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS}")
        self.backend, self.bidirectional = backend, bidirectional
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        dt_init = (dt_min, dt_max, dt_init_floor, dt_scale)
        direction = partial(
            SSMDirection, self.d_inner, d_state, d_conv, self.dt_rank, *dt_init, conv_bias
        )
        self.ssm = direction()
        if bidirectional:  # before out_proj: the RNG draws the parameters in this order
            self.ssm_bwd = direction()
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, x: torch.Tensor, state: SSMState | None = None, return_state: bool = False):
        """x (B, L, d_model) -> (B, L, d_model); with ``return_state``, (y, SSMState).

        state: the SSMState returned for the previous chunk (None: start of a sequence).
        """
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (b, l, d_inner) each
        if self.bidirectional:
            if state is not None or return_state:
                raise ValueError("a bidirectional mixer sees the whole sequence: it cannot stream")
            return self.out_proj(self._both_directions(x, z))
        if state is None and not return_state:  # training: no state, no extra work
            return self.out_proj(self.ssm.scan(*self.ssm(x), z=z, backend=self.backend))
        if state is None:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        u, delta, B, C, conv_state = self.ssm(x, conv_state=state.conv)
        backend = self.backend if self.backend in ("auto", "reference", "fused") else "fused"
        y, h = self.ssm.scan(
            u, delta, B, C, z=z, backend=backend, h0=state.ssm, return_last_state=True
        )
        y = self.out_proj(y)
        return (y, SSMState(conv_state, h)) if return_state else y

    def _both_directions(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(b, l, d_inner) x and z -> the average of the two directions' scans (b, l, d_inner)."""
        fwd, bwd = self.ssm, self.ssm_bwd
        u_f, delta_f, B_f, C_f = fwd(x)
        u_b, delta_b, B_b, C_b = bwd(x.flip(1))  # everything of bwd is in reversed time
        y = scan_bld(
            torch.cat([u_f, u_b], dim=-1),  # (b, l, 2 d_inner)
            torch.cat([delta_f, delta_b], dim=-1),
            torch.cat([fwd.A, bwd.A], dim=0),  # (2 d_inner, n)
            torch.stack([B_f, B_b], dim=2),  # (b, l, 2, n): group g serves direction g
            torch.stack([C_f, C_b], dim=2),
            torch.cat([fwd.D, bwd.D]).float(),
            z=torch.cat([z, z.flip(1)], dim=-1),
            delta_bias=torch.cat([fwd.dt_proj.bias, bwd.dt_proj.bias]).float(),
            backend=self.backend,
        )
        y_f, y_b = y.chunk(2, dim=-1)
        return 0.5 * (y_f + y_b.flip(1))  # back to forward time, then average

    def initial_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SSMState:
        """The state before the first step: zero conv inputs (the conv's zero padding), h = 0."""
        k = self.ssm.conv1d.kernel_size[0]
        return SSMState(
            conv=torch.zeros(batch, self.d_inner, k - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device),
        )
