"""Residual Mamba blocks: unidirectional ``MambaBlock`` and bidirectional ``BiMambaBlock``.

Both are pre-norm residual blocks, x + mixer(norm(x)). Given a conditioning vector c
(``cond_dim``), they become adaLN-Zero blocks as in DiT: the norm loses its affine
parameters and c produces (shift, scale, gate), x + gate · mixer(norm(x) · (1 + scale) +
shift), with the projection zero-initialised so every block starts as the identity.

Their mixer is a ``SelectiveSSM``: causal in ``MambaBlock``, bidirectional in
``BiMambaBlock``. ``MambaBlock`` is causal (row t sees rows <= t) and can stream: it returns
and accepts the recurrent state of its mixer (an ``SSMState``), so a long sequence can be
processed chunk by chunk. ``BiMambaBlock`` sees the whole sequence and cannot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mamba_denoiser.models.ssm import SelectiveSSM, SSMState


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
    """Pre-norm residual wrapper around a subclass's ``mixer`` (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, dropout: float = 0.0, cond_dim: int | None = None):
        super().__init__()
        self.d_model, self.cond_dim = d_model, cond_dim
        # under adaLN the shift/scale come from c, so the norm has no parameters of its own
        self.norm = nn.LayerNorm(d_model, elementwise_affine=cond_dim is None)
        self.adaLN = AdaLNZero(cond_dim, d_model) if cond_dim is not None else None
        self.dropout = nn.Dropout(dropout)

    @property
    def backend(self) -> str:  # the scan lives in the mixer
        return self.mixer.backend

    @backend.setter
    def backend(self, name: str) -> None:
        self.mixer.backend = name

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x)

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

    ``ssm``: SelectiveSSM's options (d_state, d_conv, expand, dt_rank, ..., backend).
    ``forward(x, c, state=None, return_state=False)``: with ``return_state`` it returns
    (out, SSMState), the state to pass with the next chunk of the same sequence (and the
    same c). See ``SelectiveSSM`` for the backends that state passing runs on.
    """

    def __init__(self, d_model: int, dropout: float = 0.0, cond_dim: int | None = None, **ssm):
        super().__init__(d_model, dropout, cond_dim)
        self.mixer = SelectiveSSM(d_model, **ssm)

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
    """x + SelectiveSSM(norm(x), bidirectional): sees the whole sequence (Vim-v2 / Caduceus).

    ``ssm``: SelectiveSSM's options. The mixer's two directions share in_proj and out_proj
    and run as one stacked scan; see ``SelectiveSSM``.
    """

    # parameter names before the mixer moved into SelectiveSSM: old checkpoints still load
    _RENAMED = {
        "in_proj.": "mixer.in_proj.",
        "fwd.": "mixer.ssm.",
        "bwd.": "mixer.ssm_bwd.",
        "out_proj.": "mixer.out_proj.",
    }

    def __init__(self, d_model: int, dropout: float = 0.0, cond_dim: int | None = None, **ssm):
        super().__init__(d_model, dropout, cond_dim)
        self.mixer = SelectiveSSM(d_model, bidirectional=True, **ssm)
        self.register_load_state_dict_pre_hook(_rename_keys)


def _rename_keys(module, state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix) :]
        for old, new in module._RENAMED.items():
            if name.startswith(old):
                state_dict[prefix + new + name[len(old) :]] = state_dict.pop(key)
