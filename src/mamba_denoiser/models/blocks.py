"""Residual Mamba blocks: unidirectional ``MambaBlock`` and bidirectional ``BiMambaBlock``.

Both are pre-norm residual blocks, x + mixer(norm(x)). Given a conditioning vector c
(``cond_dim``), they become adaLN-Zero blocks as in DiT: the norm loses its affine
parameters and c produces (shift, scale, gate), x + gate · mixer(norm(x) · (1 + scale) +
shift), with the projection zero-initialised so every block starts as the identity.

``MambaBlock`` is causal (row t sees rows <= t) and can stream: it returns and accepts the
recurrent state of its mixer (an ``SSMState``), so a long sequence can be processed chunk by
chunk. ``BiMambaBlock`` sees the whole sequence and cannot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mamba_denoiser.models.scan import BACKENDS
from mamba_denoiser.models.ssm import SelectiveSSM, SSMDirection, SSMState, scan_bld


class AdaLNZero(nn.Module):
    """c (B, cond_dim) -> n_chunks tensors of (B, 1, d_model); zero at init."""

    def __init__(self, cond_dim: int, d_model: int, n_chunks: int = 3):
        super().__init__()
        self.n_chunks = n_chunks
        self.proj = nn.Linear(cond_dim, n_chunks * d_model)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(F.silu(c)).unsqueeze(1).chunk(self.n_chunks, dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class _ResidualBlock(nn.Module):
    """Pre-norm residual wrapper; subclasses provide ``mix`` (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, dropout: float = 0.0, cond_dim: int | None = None):
        super().__init__()
        self.d_model, self.cond_dim = d_model, cond_dim
        # under adaLN the shift/scale come from c, so the norm has no parameters of its own
        self.norm = nn.LayerNorm(d_model, elementwise_affine=cond_dim is None)
        self.adaLN = AdaLNZero(cond_dim, d_model) if cond_dim is not None else None
        self.dropout = nn.Dropout(dropout)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mixer_input(self, x: torch.Tensor, c: torch.Tensor | None):
        """(normalised, modulated input of the mixer (B, L, D), gate (B, 1, D) or None)."""
        if self.adaLN is None:
            if c is not None:
                raise ValueError("conditioning c given, but the block was built with cond_dim=None")
            return self.norm(x), None
        if c is None:
            raise ValueError(
                f"this block is adaLN-conditioned: pass c of shape (B, {self.cond_dim})"
            )
        shift, scale, gate = self.adaLN(c)  # each (B, 1, D)
        return modulate(self.norm(x), shift, scale), gate

    def residual(self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None):
        y = self.dropout(y)
        return x + (y if gate is None else gate * y)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, D); c: (B, cond_dim) if the block was built with cond_dim."""
        h, gate = self.mixer_input(x, c)
        return self.residual(x, self.mix(h), gate)


class MambaBlock(_ResidualBlock):
    """x + SelectiveSSM(norm(x)): causal, left-to-right only.

    ``forward(x, c, state=None, return_state=False)``: with ``return_state`` it returns
    (out, SSMState), the state to pass with the next chunk of the same sequence (and the
    same c). See ``SelectiveSSM`` for the backends that state passing runs on.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dropout: float = 0.0,
        cond_dim: int | None = None,
        backend: str = "auto",
    ):
        super().__init__(d_model, dropout, cond_dim)
        self.mixer = SelectiveSSM(d_model, d_state, d_conv, expand, backend=backend)

    @property
    def backend(self) -> str:  # as BiMambaBlock.backend; the scan lives in the mixer
        return self.mixer.backend

    @backend.setter
    def backend(self, name: str) -> None:
        self.mixer.backend = name

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None = None,
        state: SSMState | None = None,
        return_state: bool = False,
    ):
        """x: (B, L, D); c: (B, cond_dim) if built with cond_dim; state: from the last chunk."""
        h, gate = self.mixer_input(x, c)
        if state is None and not return_state:
            return self.residual(x, self.mixer(h), gate)
        y, state = self.mixer(h, state=state, return_state=True)
        out = self.residual(x, y, gate)
        return (out, state) if return_state else out

    def initial_state(self, batch: int, device=None, dtype=None) -> SSMState:
        return self.mixer.initial_state(batch, device=device, dtype=dtype)


class BiMambaBlock(_ResidualBlock):
    """Bidirectional Mamba block (Vim-v2 / Caduceus style).

    One shared in_proj -> (x, z) and out_proj; the forward and backward directions each
    have their own conv1d, x_proj, dt_proj, A_log and D. The backward direction scans the
    time-reversed sequence. Both scans run as ONE selective_scan call: the directions are
    stacked as channels (2 · d_inner) with one B/C group each. The two outputs, each gated
    by SiLU(z) at its own time step, are averaged before out_proj.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dropout: float = 0.0,
        cond_dim: int | None = None,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model, dropout, cond_dim)
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.d_inner = expand * d_model
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.fwd = SSMDirection(self.d_inner, d_state, d_conv, dt_rank)
        self.bwd = SSMDirection(self.d_inner, d_state, d_conv, dt_rank)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (b, l, d_inner) each
        u_f, delta_f, B_f, C_f = self.fwd(x)
        u_b, delta_b, B_b, C_b = self.bwd(x.flip(1))  # everything of bwd is in reversed time
        y = scan_bld(
            torch.cat([u_f, u_b], dim=-1),  # (b, l, 2 d_inner)
            torch.cat([delta_f, delta_b], dim=-1),
            torch.cat([self.fwd.A, self.bwd.A], dim=0),  # (2 d_inner, n)
            torch.stack([B_f, B_b], dim=2),  # (b, l, 2, n): group g serves direction g
            torch.stack([C_f, C_b], dim=2),
            torch.cat([self.fwd.D, self.bwd.D]).float(),
            z=torch.cat([z, z.flip(1)], dim=-1),
            delta_bias=torch.cat([self.fwd.dt_proj.bias, self.bwd.dt_proj.bias]).float(),
            delta_softplus=True,
            backend=self.backend,
        )
        y_f, y_b = y.chunk(2, dim=-1)
        y = 0.5 * (y_f + y_b.flip(1))  # back to forward time, then average  (b, l, d_inner)
        return self.out_proj(y)
