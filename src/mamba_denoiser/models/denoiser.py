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

Heads (``heads``): "diffusion" (the ε-predictor above, the default), "predictive" or "both".
The predictive head (``predict_mixture``) reads the same causal backbone on the observed
windows y (no diffusion noise) and gives, at every position l, a K-component Gaussian
mixture (means, variances = softplus + floor, logits) per feature for the clean value at
position l+1 (diffusion/predictive.py turns it into a denoiser). Its adaLN conditioning is a
dedicated learned embedding ``pred_embed`` rather than the timestep-0 embedding: t = 0 means
"a nearly clean input" to the diffusion head, while the predictive input carries the full
observation noise, so the two tasks get distinct conditions. Its variance biases start
spread over [0.1, 1] (window units), which breaks the symmetry between components.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mamba_denoiser.models.blocks import AdaLNZero, BiMambaBlock, MambaBlock, modulate
from mamba_denoiser.models.ssm import SSMState

DIRECTIONS = ("causal", "bidirectional")
HEADS = ("diffusion", "predictive", "both")
# residual head: extra component k starts at variance 10^k times the filter's prediction
# (wider components for jumps); its weight starts at exactly 0 (diffusion/residual.py)
EXTRA_VAR_STEP = math.log(10.0)


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
        heads: str = "diffusion",
        n_components: int = 3,
        var_floor: float = 1e-4,
        residual: bool = False,
    ):
        super().__init__()
        if n_features < 1 or window_size < 1 or n_layers < 1:
            raise ValueError(
                f"n_features, window_size and n_layers must be >= 1; "
                f"got {n_features}, {window_size}, {n_layers}"
            )
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
        if heads != "diffusion" and (direction != "causal" or n_components < 1):
            raise ValueError(
                f"a predictive head needs direction='causal' (its prediction for row l must "
                f"not see row l) and n_components >= 1; got {direction!r}, {n_components}"
            )
        self.n_features, self.window_size, self.d_model = n_features, window_size, d_model
        self.use_mask, self.direction, self.heads = use_mask, direction, heads
        self.n_components, self.var_floor = n_components, var_floor
        self.residual = bool(residual) and self.has_predictive_head
        in_dim = 2 * n_features if use_mask else n_features  # values (+ mask channels)
        self.input_proj = nn.Linear(in_dim, d_model)
        if self.has_diffusion_head:  # predictive-only models have no timestep input at all
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
            )
            for _ in range(n_layers)
        )
        if self.has_diffusion_head:
            self.norm_out = nn.LayerNorm(d_model, elementwise_affine=False)
            self.adaLN_out = AdaLNZero(d_model, d_model, n_chunks=2)  # (shift, scale)
            self.head = nn.Linear(d_model, n_features)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if self.has_predictive_head:
            self.pred_embed = nn.Parameter(0.02 * torch.randn(d_model))  # (D,) its condition
            self.pred_norm = nn.LayerNorm(d_model, elementwise_affine=False)
            self.pred_adaLN = AdaLNZero(d_model, d_model, n_chunks=2)
            self.pred_head = nn.Linear(d_model, n_features * 3 * n_components)
            nn.init.zeros_(self.pred_head.weight)
            with torch.no_grad():
                # untrained: mean 0, equal weights, variances spread over [0.1, 1]
                v0 = torch.logspace(-1, 0, n_components) if n_components > 1 else torch.ones(1)
                bias = torch.zeros(n_features, 3, n_components)
                bias[:, 1] = torch.log(torch.expm1((v0 - var_floor).clamp(min=1e-6)))
                if self.residual:  # corrections to the filter (diffusion/residual.py)
                    bias.zero_()  # component 0 = the filter's prediction, exactly
                    bias[:, 1] = EXTRA_VAR_STEP * torch.arange(n_components)
                self.pred_head.bias.copy_(bias.flatten())
            if self.residual:
                # the filter's innovations as an input (zero: the backbone starts as it was),
                # the zero-diagonal current-row layer, and the extra components' multiplier
                self.innov_proj = nn.Linear(n_features, d_model, bias=False)
                nn.init.zeros_(self.innov_proj.weight)
                self.cross = nn.Parameter(torch.zeros(n_features, n_features))  # (F, F)
                self.extra_weight = nn.Parameter(torch.zeros(n_features))  # λ (F,)

    @property
    def has_diffusion_head(self) -> bool:
        return self.heads in ("diffusion", "both")

    @property
    def has_predictive_head(self) -> bool:
        return self.heads in ("predictive", "both")

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
        if not self.has_diffusion_head:
            raise ValueError(
                "this model was built with heads='predictive' and has no ε-prediction head; "
                "use predict_mixture, or train with heads=diffusion or both"
            )
        batch = self._check_input(x_t)
        c = self.t_embed(self._timesteps(t, batch, x_t.device))  # (B, D)
        h, new_state = self._backbone(x_t, mask, c, state, return_state)
        eps_hat = self._eps_head(h, c)  # (B, L, F)
        return (eps_hat, new_state) if return_state else eps_hat

    def predict_mixture(
        self,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: list[SSMState] | None = None,
        return_state: bool = False,
    ):
        """y: (B, L, F) observed windows (no diffusion noise; NaN allowed where mask is
        False); mask as in ``forward``. Returns (mu, var, logit_pi), each (B, L, F, K): the
        mixture at position l is the prediction for position l+1, from rows <= l. With
        ``return_state``, ((mu, var, logit_pi), state) for streaming as in ``forward``.
        """
        if not self.has_predictive_head:
            raise ValueError(
                "this model has no predictive head; train it with heads=predictive or both"
            )
        if self.residual:
            raise ValueError("a residual predictive head needs its filter: predict_residual")
        batch = self._check_input(y)
        c = self.pred_embed.expand(batch, -1)  # (B, D)
        h, new_state = self._backbone(y, mask, c, state, return_state)
        mixture = self._mixture_head(h, c)
        return (mixture, new_state) if return_state else mixture

    def predict_residual(
        self,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        innov: torch.Tensor,
        state: list[SSMState] | None = None,
        return_state: bool = False,
    ):
        """Residual head (``residual=True``): y, mask (B, L, F) as in ``predict_mixture``,
        innov (B, L, F) the filter's standardised innovations (residual.innovations).
        Returns (raw (B, L, F, 3, K) float32, the corrections at position l for row l+1;
        cross (B, L, F), the zero-diagonal term of row l's other features for row l;
        λ (F,)), to combine with the filter's prediction in ``residual.assemble``."""
        if not self.residual:
            raise ValueError("this model has no residual head; train it with residual: true")
        batch = self._check_input(y)
        c = self.pred_embed.expand(batch, -1)  # (B, D)
        h, new_state = self._backbone(y, mask, c, state, return_state, extra=innov)
        out = (self._raw_mixture(h, c), self._cross(innov), self.extra_weight)
        return (out, new_state) if return_state else out

    def _cross(self, innov: torch.Tensor) -> torch.Tensor:
        """(B, L, F) -> (B, L, F): Σ_{j≠i} W_ij e_j, never feature i's own y_l."""
        off = 1.0 - torch.eye(self.n_features, device=innov.device, dtype=innov.dtype)
        return innov @ (self.cross.to(innov.dtype) * off).T

    def forward_heads(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor | None,
        predictive: torch.Tensor,
        innov: torch.Tensor | None = None,
    ):
        """One backbone pass over a batch that mixes both tasks (heads="both" training).

        x: (B, L, F), noisy x_t in rows where ``predictive`` (B,) bool is False, observed
        y where it is True; t: (B,) timesteps (ignored in predictive rows). Returns
        (ε̂ (B, L, F), (mu, var, logit_pi) each (B, L, F, K)); each head is evaluated on every
        row (they are linear, the backbone is the cost), the caller keeps its own rows.
        A residual model takes ``innov`` (B, L, F), zero in the diffusion rows (x_t there is
        not the observed y the innovations come from), and returns
        (ε̂, (raw, cross, λ)) as ``predict_residual``.
        """
        if self.heads != "both":
            raise ValueError("forward_heads needs a model built with heads='both'")
        batch = self._check_input(x)
        c_t = self.t_embed(self._timesteps(t, batch, x.device))  # (B, D)
        pred = torch.as_tensor(predictive, device=x.device).bool().view(-1, 1)
        c = torch.where(pred, self.pred_embed.to(c_t.dtype), c_t)
        if self.residual:
            innov = torch.where(pred.unsqueeze(-1), innov, torch.zeros_like(innov))
            h, _ = self._backbone(x, mask, c, None, False, extra=innov)
            return self._eps_head(h, c), (
                self._raw_mixture(h, c),
                self._cross(innov),
                self.extra_weight,
            )
        h, _ = self._backbone(x, mask, c, None, False)
        return self._eps_head(h, c), self._mixture_head(h, c)

    # ---- pieces ----------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> int:
        if x.dim() != 3 or x.shape[-1] != self.n_features:
            raise ValueError(f"x_t must be (B, L, F={self.n_features}), got shape {tuple(x.shape)}")
        return x.shape[0]

    @staticmethod
    def _timesteps(t, batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or of shape (B={batch},), got {tuple(t.shape)}")
        return t

    def _backbone(self, x_t, mask, c, state, return_state, extra=None):
        """(B, L, F) inputs, (B, D) condition -> (h (B, L, D), new state list or []).
        ``extra`` (B, L, F): the residual head's innovations, projected and added."""
        L = x_t.shape[1]
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
        if extra is not None:
            h = h + self.innov_proj(extra.to(h.dtype))
        if self.direction == "bidirectional":
            # Absolute position within the window. Only the bidirectional model gets it: a
            # causal model must not know where a chunk starts, or running a series in
            # chunks (streaming) would differ from one long pass; the causal conv and the
            # SSM, both started from zero state, already tell it how far row t is from the
            # start of the sequence.
            pos = sinusoidal_embedding(torch.arange(L, device=x_t.device), self.d_model)
            h = h + pos.to(h.dtype)  # (L, D) broadcast over B
        new_state = []
        for i, block in enumerate(self.blocks):
            if stateful:
                h, s = block(h, c, state=None if state is None else state[i], return_state=True)
                new_state.append(s)
            else:
                h = block(h, c)
        return h, new_state

    def _eps_head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_out(c)
        return self.head(modulate(self.norm_out(h), shift, scale))  # (B, L, F)

    def _raw_mixture(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, F, 3, K) float32: the predictive head's raw output."""
        shift, scale = self.pred_adaLN(c)
        raw = self.pred_head(modulate(self.pred_norm(h), shift, scale)).float()
        return raw.unflatten(-1, (self.n_features, 3, self.n_components))

    def _mixture_head(self, h: torch.Tensor, c: torch.Tensor):
        """(B, L, D) -> (mu, var, logit_pi), each (B, L, F, K), float32."""
        mu, raw_var, logit_pi = self._raw_mixture(h, c).unbind(-2)
        var = nn.functional.softplus(raw_var) + self.var_floor
        return mu, var, logit_pi

    def initial_state(self, batch: int, device=None, dtype=None) -> list[SSMState]:
        """Zero state of every layer: equivalent to passing state=None (causal only)."""
        if self.direction != "causal":
            raise ValueError("only a causal model has a streaming state")
        return [block.initial_state(batch, device=device, dtype=dtype) for block in self.blocks]
