"""``mamba_ssm``: the reference CUDA kernel of the mamba-ssm package, when it imports and runs.

mamba-ssm is optional: it is imported (and its kernel probed once on a tiny input) only by
``mamba_ssm_available()``. Its kernel starts from h = 0, so it cannot pass the state.
"""

from __future__ import annotations

import torch

from mamba_denoiser.models.scan.common import _no_autocast

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


def mamba_ssm_reason() -> str:
    """Why ``mamba_ssm_available()`` said False ("" if it said True; call it first)."""
    return str(_MAMBA_SSM_PROBE["reason"])


def selective_scan_mamba_ssm(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mamba-ssm's kernel, float32 inside, output in u's dtype. Needs a True
    ``mamba_ssm_available()`` first (it stores the kernel); the caller checks the shapes."""
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
