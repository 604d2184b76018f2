"""MultivariateMambaDenoiser: ε-prediction network for windows of a feature group.

(x_t [B, L, F], t [B], observation mask [B, L, F]) -> ε̂ [B, L, F].

Each time step's F features are projected to d_model. With ``use_mask`` (the default),
unobserved inputs are set to 0 (masked_fill, so NaN there is harmless) and the F mask
channels (1 = observed) are concatenated to the features before the projection: the
network never sees an unobserved value, and knows which inputs are missing.

``direction="causal"`` (default) stacks forward-only Mamba blocks: ε̂ at row t depends on
rows <= t only, and the model can stream (hand its recurrent state from chunk to chunk).
``direction="bidirectional"`` stacks BiMamba blocks and adds a sinusoidal position
embedding. The diffusion timestep, embedded sinusoidally and passed through an MLP,
conditions every block through adaLN-Zero (DiT), and the output head too. The output head
is zero-initialised, so the untrained model predicts ε̂ = 0, the MSE-optimal constant, and
each block starts as the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mamba_denoiser.models.blocks import AdaLNZero, BiMambaBlock, MambaBlock, modulate
from mamba_denoiser.models.ssm import SSMState

DIRECTIONS = ("causal", "bidirectional")


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(...,) positions or timesteps -> (..., dim) [cos | sin] features, float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half
    )
    args = x.float()[..., None] * freqs  # (..., half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """t (B,) -> (B, dim): sinusoidal features -> MLP, as DiT's TimestepEmbedder."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.freq_dim)  # float32; the MLP may be bf16 ("-true")
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class MultivariateMambaDenoiser(nn.Module):
    """Mamba ε-predictor with adaLN-Zero timestep conditioning, causal or bidirectional.

    ``window_size`` is the training window length, kept as metadata (checkpoints,
    inference); the network itself accepts any length L. ``direction`` is kept as an
    attribute so that checkpoints record which backbone they hold.

    Streaming (causal only): ``forward(x_t, t, mask, state=None, return_state=True)``
    returns (ε̂, state), state a list with one ``SSMState`` per layer; passing it with the
    next chunk continues the sequence, so chunks give the ε̂ of one long pass (to float
    rounding). Only for the same batch rows and the same t. Inference only: see
    ``SelectiveSSM`` for gradients and backends.
    """

    def __init__(
        self,
        n_features: int,
        window_size: int,
        d_model: int = 128,
        n_layers: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dropout: float = 0.1,
        use_mask: bool = True,
        backend: str = "auto",
        direction: str = "causal",
    ):
        super().__init__()
        if n_features < 1 or window_size < 1 or n_layers < 1:
            raise ValueError(
                f"n_features, window_size and n_layers must be >= 1; "
                f"got {n_features}, {window_size}, {n_layers}"
            )
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.n_features, self.window_size, self.d_model = n_features, window_size, d_model
        self.use_mask, self.direction = use_mask, direction
        in_dim = 2 * n_features if use_mask else n_features  # values (+ mask channels)
        self.input_proj = nn.Linear(in_dim, d_model)
        self.t_embed = TimestepEmbedding(d_model)
        block = MambaBlock if direction == "causal" else BiMambaBlock
        self.blocks = nn.ModuleList(
            block(
                d_model,
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
                dropout=dropout,
                cond_dim=d_model,
                backend=backend,
            )  # fmt: skip
            for _ in range(n_layers)
        )
        self.norm_out = nn.LayerNorm(d_model, elementwise_affine=False)
        self.adaLN_out = AdaLNZero(d_model, d_model, n_chunks=2)  # (shift, scale)
        self.head = nn.Linear(d_model, n_features)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int | float,
        mask: torch.Tensor | None = None,
        state: list[SSMState] | None = None,
        return_state: bool = False,
    ):
        """x_t: (B, L, F) noisy window; t: (B,) or scalar timestep (int or float);
        mask: (B, L, F) bool, True where observed (needs use_mask=True; None = all observed).
        Returns ε̂ (B, L, F), or (ε̂, state) with ``return_state`` (causal only): state is
        a list of one SSMState per layer, to pass as ``state`` with the next chunk.
        """
        if x_t.dim() != 3 or x_t.shape[-1] != self.n_features:
            raise ValueError(
                f"x_t must be (B, L, F={self.n_features}), got shape {tuple(x_t.shape)}"
            )
        batch, L, _ = x_t.shape
        t = torch.as_tensor(t, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or of shape (B={batch},), got {tuple(t.shape)}")

        if self.use_mask:
            if mask is None:
                mask = torch.ones_like(x_t, dtype=torch.bool)
            if mask.shape != x_t.shape:
                raise ValueError(f"mask must match x_t's shape {tuple(x_t.shape)}")
            mask = mask.bool()
            # unobserved inputs are zeroed and the mask is a channel of its own, so a 0 that
            # was observed and a 0 that stands in for a missing value are told apart;
            # masked_fill (not *): unobserved entries may be NaN, and NaN * 0 is NaN
            x_in = torch.cat([x_t.masked_fill(~mask, 0.0), mask.to(x_t.dtype)], dim=-1)
        else:
            if mask is not None:
                raise ValueError(
                    "a mask was given but the model was built with use_mask=False; "
                    "build it with use_mask=True or drop the mask"
                )
            x_in = x_t

        stateful = state is not None or return_state
        if stateful and self.direction != "causal":
            raise ValueError(
                "state passing needs direction='causal': a bidirectional model "
                "sees the whole window and cannot be run in chunks"
            )
        if state is not None and len(state) != len(self.blocks):
            n = len(self.blocks)
            raise ValueError(f"state must hold one SSMState per layer ({n}), got {len(state)}")

        h = self.input_proj(x_in.to(self.input_proj.weight.dtype))  # (B, L, D)
        if self.direction == "bidirectional":
            # Absolute position within the window. Only the bidirectional model gets it: a
            # causal model must not know where a chunk starts, or running a series in
            # chunks (streaming) would differ from one long pass; the causal conv and the
            # SSM, both started from zero state, already tell it how far row t is from the
            # start of the sequence.
            pos = sinusoidal_embedding(torch.arange(L, device=x_t.device), self.d_model)
            h = h + pos.to(h.dtype)  # (L, D) broadcast over B
        c = self.t_embed(t)  # (B, D)
        new_state = []
        for i, block in enumerate(self.blocks):
            if stateful:
                h, s = block(h, c, state=None if state is None else state[i], return_state=True)
                new_state.append(s)
            else:
                h = block(h, c)
        shift, scale = self.adaLN_out(c)
        eps_hat = self.head(modulate(self.norm_out(h), shift, scale))  # (B, L, F)
        return (eps_hat, new_state) if return_state else eps_hat

    def initial_state(self, batch: int, device=None, dtype=None) -> list[SSMState]:
        """Zero state of every layer: equivalent to passing state=None (causal only)."""
        if self.direction != "causal":
            raise ValueError("only a causal model has a streaming state")
        return [block.initial_state(batch, device=device, dtype=dtype) for block in self.blocks]
