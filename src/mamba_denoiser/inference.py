"""Panel -> denoised panel with one cluster's checkpoint: causal (default) or offline.

Which windows serve which rows (docs/design.md, "Denoising"):

causal, causal model -- overlapping chunks. Chunk k covers rows [s_k, s_k + L) with
    s_k = k·h, h = L // 2, so every row is served by a chunk in which it sits at window
    position >= L - h >= anchor_len. The row at
    position j of its chunk is computed from rows s_k .. s_k + j only: the network is
    causal, and the window's level (its anchor) comes from positions < anchor_len <= j
    (data/windows.py). A last chunk ending at row T-1 serves the rows not yet served.
    Rows before the panel's first anchor_len rows (position < anchor_len of the first
    chunk) have no causal anchor and pass through raw. Cost: about 2T/L windows.
causal, bidirectional model -- the window ending at row t, last position, for every
    t >= L-1 (T windows: the slow path); rows t < L-1 pass through raw.
offline (two-sided, uses FUTURE rows) -- windows with stride L // 4, every position,
    the values of all windows covering a row averaged. For analysis only.

Samplers (diffusion/sampling.py): posterior_mean (Tweedie with the feature's noise level σ)
or sdedit (diffuse to t*, reverse with DDIM/DDPM). σ per feature is estimated on the
TRAIN split only (diffusion/noise.py) or given; a feature whose σ the model cannot
resolve at the t used passes through unchanged, with the reason reported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamba_denoiser.checkpoint import CheckpointError, load_checkpoint
from mamba_denoiser.data.windows import gather_windows, normalise_windows

log = logging.getLogger(__name__)

MODES = ("causal", "offline")
SAMPLERS = ("posterior_mean", "sdedit")


@dataclass
class ClusterModel:
    """A trained cluster denoiser and everything needed to apply it (from its checkpoint)."""

    module: Any  # DenoiserModule in eval mode
    path: Path
    cluster: dict[str, Any]
    window: int
    mean: np.ndarray  # (F,) train-split z-score
    std: np.ndarray
    window_scale: np.ndarray  # (F,) in z units
    anchor_len: int
    direction: str
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return list(self.cluster["features"])

    @property
    def name(self) -> str:
        return f"c{self.cluster['id']}"


def load_cluster_model(path: str | Path, device: str = "cpu") -> ClusterModel:
    """Build the module from the checkpoint's hyper-parameters and load its (EMA) weights,
    reading the file with weights_only=True (a shared checkpoint cannot run code)."""
    from mamba_denoiser.training import DenoiserModule

    ck = load_checkpoint(path, map_location=device)
    hp = dict(ck["hyper_parameters"])
    hp["compile"] = False
    try:
        module = DenoiserModule(**hp)
        module.load_state_dict(ck["state_dict"])
    except (TypeError, RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its hyper-parameters describe "
            f"({str(e).splitlines()[0]}); was it written by another version of train.py?"
        ) from None
    module.eval().to(device)
    sc = hp["scaler"]
    n_f = len(hp["cluster"]["features"])
    if "window_scale" not in sc:
        raise CheckpointError(
            f"{path}: no window scale in its scaler (a checkpoint from before scale-free "
            "windows); retrain this cluster with the current train.py"
        )
    arrays = {k: np.asarray(sc[k], dtype=np.float64) for k in ("mean", "std", "window_scale")}
    if any(a.shape != (n_f,) for a in arrays.values()):
        raise CheckpointError(f"{path}: scaler sizes do not match its {n_f} features")
    return ClusterModel(
        module=module,
        path=Path(path),
        cluster=hp["cluster"],
        window=int(hp["window_size"]),
        anchor_len=int(sc.get("anchor_len", 10)),
        direction=str(hp["model"].get("direction", "causal")),  # the model's default
        source=dict(hp.get("source") or {}),
        **arrays,
    )


# ---- which windows serve which rows ---------------------------------------------------


def serving_plan(
    n_rows: int, window: int, anchor_len: int, mode: str, direction: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (starts (N,), rows (M,), positions (M,), window index (M,)): the windows to run
    and, for each served row, which window and position serve it. Offline returns every
    (window, position) pair, so rows repeat (they are averaged). Rules: module docstring."""
    if n_rows < window:
        raise ValueError(f"{n_rows} rows is fewer than one window of {window}")
    if mode == "offline":
        stride = max(window // 4, 1)
        starts = np.arange(0, n_rows - window + 1, stride)
        if starts[-1] != n_rows - window:
            starts = np.append(starts, n_rows - window)
        w_idx = np.repeat(np.arange(len(starts)), window)
        pos = np.tile(np.arange(window), len(starts))
        return starts, starts[w_idx] + pos, pos, w_idx
    if mode != "causal":
        raise ValueError(f"mode={mode!r}: choose one of {MODES}")
    if direction == "bidirectional":
        starts = np.arange(0, n_rows - window + 1)
        pos = np.full(len(starts), window - 1)
        return starts, starts + window - 1, pos, np.arange(len(starts))
    h = window // 2
    if window - h < anchor_len:
        raise ValueError(f"anchor_len {anchor_len} must be <= window - window // 2")
    starts = np.arange(0, n_rows - window + 1, h)
    rows, pos, w_idx = [], [], []
    served_to = 0  # rows < served_to are served (or passed through)
    for k, s in enumerate(starts):
        first = anchor_len if k == 0 else max(window - h, served_to - s)
        p = np.arange(first, window)
        rows.append(s + p), pos.append(p), w_idx.append(np.full(len(p), k))
        served_to = s + window
    if served_to < n_rows:  # the tail: one chunk ending at the last row
        s = n_rows - window
        p = np.arange(served_to - s, window)
        starts = np.append(starts, s)
        rows.append(s + p), pos.append(p), w_idx.append(np.full(len(p), len(starts) - 1))
    return starts, np.concatenate(rows), np.concatenate(pos), np.concatenate(w_idx)


# ---- one cluster ----------------------------------------------------------------------


@dataclass
class ClusterResult:
    mean: np.ndarray  # (T, F) native units; NaN where the input is NaN
    lower: np.ndarray | None
    upper: np.ndarray | None
    info: dict[str, Any]


def noise_in_window_units(model: ClusterModel, raw: np.ndarray, train: tuple[int, int]):
    """σ per feature, estimated on the train rows only, in the units the model sees."""
    from mamba_denoiser.diffusion.noise import estimate_noise_std

    sigma_raw = estimate_noise_std(raw[train[0] : train[1]])
    return sigma_raw, sigma_raw / (model.std * model.window_scale)


def denoise_cluster(
    model: ClusterModel,
    raw: np.ndarray,  # (T, F) native units, NaN where unobserved
    *,
    train: tuple[int, int],
    mode: str = "causal",
    sampler: str = "posterior_mean",
    sampler_kw: dict[str, Any] | None = None,
    sigma: np.ndarray | None = None,  # native units; None = estimate on the train split
    seed: int = 0,
    batch_windows: int = 256,
    bands: bool = False,
    progress=None,
) -> ClusterResult:
    """Denoise one cluster's (T, F) block with its model; everything batched over windows."""
    from mamba_denoiser.diffusion import sampling

    kw = dict(sampler_kw or {})
    t0 = time.perf_counter()
    T, F = raw.shape
    if F != len(model.features):
        raise ValueError(f"{model.name}: expected {len(model.features)} columns, got {F}")
    sde = model.module.sde
    if sigma is None:
        sigma_raw, sigma_w = noise_in_window_units(model, raw, train)
    else:
        sigma_raw = np.asarray(sigma, dtype=np.float64)
        sigma_w = sigma_raw / (model.std * model.window_scale)
    guidance = kw.pop("guidance", None)
    if guidance == "auto":
        guidance = model.module.loss_fn.strategy if hasattr(model.module, "loss_fn") else None
    if guidance in ("none", ""):
        guidance = None
    if mode == "causal" and not sampling.guidance_is_causal(guidance):
        raise ValueError(
            f"guidance={guidance!r} uses later rows of a window (TV/FFT along time) and "
            "cannot be used in causal mode; use sampler.guidance=null or mode=offline"
        )
    c = float(kw.pop("c", 0.5))
    t_fixed = kw.pop("t", None)
    sig_t = torch.as_tensor(sigma_w, dtype=torch.float32)
    finite = torch.isfinite(sig_t) & (sig_t > 0)
    # Features without a usable σ pass through (resolvable says so); the sampler still
    # needs a finite placeholder for them, which never reaches the output.
    sig_run = torch.where(finite, sig_t, torch.ones_like(sig_t))
    if t_fixed is not None:
        t = int(t_fixed)
    elif finite.any():
        t = int(sampling.choose_t(sde, sig_t[finite], c=c))
    else:
        t = 1
    ok, reasons = sampling.resolvable(sde, sig_t, t=t)
    ok = ok.cpu().numpy().astype(bool)

    z = ((raw - model.mean) / model.std).astype(np.float32)  # (T, F)
    starts, rows, pos, w_idx = serving_plan(
        T, model.window, model.anchor_len, mode, model.direction
    )
    values = torch.as_tensor(z)
    scale = torch.as_tensor(model.window_scale, dtype=torch.float32)
    gen = torch.Generator().manual_seed(int(seed) * 1000 + int(model.cluster["id"]))
    n_win = len(starts)
    out_w = {k: np.full((n_win, model.window, F), np.nan, np.float32) for k in ("m", "lo", "hi")}

    def eps_fn(x, tt, m):
        return model.module(x, tt, m)

    with torch.no_grad():
        for b0 in range(0, n_win, batch_windows):
            s = torch.as_tensor(starts[b0 : b0 + batch_windows])
            zw = gather_windows(values, s, model.window)  # (B, L, F)
            mask = ~torch.isnan(zw)
            w, anchor = normalise_windows(zw, mask, scale, model.anchor_len)
            if sampler == "posterior_mean":
                n_draws = int(kw.get("n_draws", 8))
                res = sampling.posterior_mean(
                    eps_fn, sde, w, mask, sigma=sig_run, t=t, generator=gen,
                    return_std=n_draws > 1, n_draws=n_draws,
                )  # fmt: skip
                mean_w, std_w = res if n_draws > 1 else (res, torch.zeros_like(res))
                z_m = float(kw.get("band_z", 1.645))
                lo_w, hi_w = mean_w - z_m * std_w, mean_w + z_m * std_w
            elif sampler == "sdedit":
                t_start = int(kw["t_start"]) if kw.get("t_start") is not None else t
                steps = kw.get("steps")
                # a small t_start (little noise) has fewer steps to take than asked for
                steps = min(int(steps), t_start + 1) if steps is not None else None
                res = sampling.sdedit(
                    eps_fn, sde, w, mask, t_start=t_start,
                    steps=steps,
                    method=kw.get("method", "ddim"), n_samples=int(kw.get("n_samples", 8)),
                    eta=float(kw.get("eta", 0.0)), guidance=guidance,
                    guidance_scale=float(kw.get("guidance_scale", 0.02)), generator=gen,
                    quantiles=tuple(kw.get("quantiles", (0.05, 0.95))),
                )  # fmt: skip
                mean_w, lo_w, hi_w = res.mean, res.lower, res.upper
            else:
                raise ValueError(f"sampler={sampler!r}: choose one of {SAMPLERS}")
            sl = slice(b0, b0 + len(s))
            for key, v in (("m", mean_w), ("lo", lo_w), ("hi", hi_w)):
                out_w[key][sl] = (v * scale + anchor).numpy()
            if progress is not None:
                progress(min(b0 + batch_windows, n_win), n_win)

    def assemble(wins: np.ndarray) -> np.ndarray:
        vals = wins[w_idx, pos]  # (M, F)
        if mode == "offline":
            acc = np.zeros((T, F))
            cnt = np.zeros((T, F))
            good = ~np.isnan(vals)
            np.add.at(acc, rows, np.where(good, vals, 0.0))
            np.add.at(cnt, rows, good)
            zz = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
        else:
            zz = np.full((T, F), np.nan)
            zz[rows] = vals
        served = ~np.isnan(zz)
        zz = np.where(served & ok[None, :], zz, z)  # unserved rows / unresolvable: raw
        out = zz * model.std + model.mean
        out = np.where(np.isnan(raw), np.nan, out)  # NaN stays NaN
        return np.where(ok[None, :] & served, out, raw)  # passthrough is exactly raw

    mean = assemble(out_w["m"])
    lower = assemble(out_w["lo"]) if bands else None
    upper = assemble(out_w["hi"]) if bands else None
    info = {
        "cluster": model.name,
        "type": model.cluster["type"],
        "direction": model.direction,
        "mode": mode,
        "uses_future_rows": mode == "offline",
        "sampler": sampler,
        "guidance": guidance,
        "t": t,
        "windows": int(n_win),
        "seconds": round(time.perf_counter() - t0, 3),
        "checkpoint": str(model.path),
        "features": {
            f: {
                "sigma": _f(sigma_raw[i]),
                "sigma_window_units": _f(sigma_w[i]),
                "denoised": bool(ok[i]),
                "reason": "" if ok[i] else reasons[i],
            }
            for i, f in enumerate(model.features)
        },
    }
    return ClusterResult(mean=mean, lower=lower, upper=upper, info=info)


def _f(x: float) -> float | None:
    x = float(x)
    return round(x, 8) if np.isfinite(x) else None
