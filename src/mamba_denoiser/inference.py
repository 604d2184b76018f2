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
TRAIN split only (diffusion/noise.py) or given. A feature passes through unchanged, with
the reason reported, when its noise share σ²/Var(y) on the train split exceeds
MAX_NOISE_SHARE (white at the daily scale), when the model cannot resolve its σ at the t
used, or when SURE on the validation rows does not estimate a gain (sure_gain_db).
"""

from __future__ import annotations

import logging
import time
import warnings
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
    """σ per feature, estimated on the train rows only, in native units and in the units
    the model sees; and the noise share σ² / Var(y) on those rows."""
    from mamba_denoiser.diffusion.noise import estimate_noise

    est = [estimate_noise(raw[train[0] : train[1], j]) for j in range(raw.shape[1])]
    sigma_raw = np.array([e.sigma for e in est])
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.array([e.sigma**2 / e.variance if e.variance > 0 else np.nan for e in est])
    return sigma_raw, sigma_raw / (model.std * model.window_scale), share


# A series whose estimated noise is most of its variance is white at the daily scale
# (e.g. returns): signal and noise cannot be told apart, and shrinking it destroys signal.
MAX_NOISE_SHARE = 0.5


def sure_gain_db(
    y: np.ndarray, d: np.ndarray, d_probe: np.ndarray, probe: np.ndarray, delta, sigma
) -> np.ndarray:
    """Stein's unbiased risk estimate of a denoiser d(y) against the clean signal, as a
    gain over leaving the data alone (whose risk is σ²), per column, in dB:

        SURE = mean((d - y)²) + 2σ² · mean(∂d_t/∂y_t) - σ²,

    the divergence by a Hutchinson probe: ∂d_t/∂y_t ≈ b_t (d_t(y + δb) - d_t(y)) / δ with
    b = ±1 (cross terms average out). y, d, d_probe, probe: (N, F) rows to score."""
    ok = np.isfinite(y) & np.isfinite(d) & np.isfinite(d_probe)
    n = ok.sum(0).clip(min=1)
    mse = np.where(ok, (d - y) ** 2, 0.0).sum(0) / n
    div = np.where(ok, probe * (d_probe - d) / delta, 0.0).sum(0) / n
    sure = mse + 2 * sigma**2 * div - sigma**2
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10 * np.log10(sigma**2 / np.maximum(sure, 1e-3 * sigma**2))


def denoise_cluster(
    model: ClusterModel,
    raw: np.ndarray,  # (T, F) native units, NaN where unobserved
    *,
    train: tuple[int, int],
    mode: str = "causal",
    sampler: str = "posterior_mean",
    sampler_kw: dict[str, Any] | None = None,
    sigma: np.ndarray | None = None,  # native units; None = estimate on the train split
    gate_rows: tuple[int, int] | None = None,  # validation rows for the SURE gate
    gate_margin_db: float = 0.1,
    denoise_features: np.ndarray | None = None,  # (F,) int: replay info["choice"], no gate
    seed: int = 0,
    batch_windows: int = 256,
    bands: bool = False,
    progress=None,
) -> ClusterResult:
    """Denoise one cluster's (T, F) block with its model; everything batched over windows.

    Which features are denoised (the rest pass through exactly): σ must be estimable,
    σ² at most MAX_NOISE_SHARE of the series' variance, resolvable by the model at the t
    used (diffusion/sampling.resolvable), and, with `gate_rows` (the validation split),
    the SURE estimate of the gain on those rows must exceed `gate_margin_db`. Every one of
    these decisions is made from train and validation rows; `denoise_features` replaces
    them with given decisions (to re-run on perturbed data with the same ones, pass
    denoise_features=info["choice"], the same `sigma` and sampler_kw["t"] = info["t_list"]).

    Timestep: the network takes one t per call, so the posterior mean runs at a grid of
    `t_levels` candidates spanning the cluster's σ (τ_t = c·σ, c = 1 minimises the ε̂
    error amplification σ/τ + τ/σ) and each feature takes the candidate with the best SURE
    gain on the validation rows (or, without the gate, the candidate closest to c·σ).
    """
    from mamba_denoiser.diffusion import sampling

    kw = dict(sampler_kw or {})
    t0 = time.perf_counter()
    T, F = raw.shape
    if F != len(model.features):
        raise ValueError(f"{model.name}: expected {len(model.features)} columns, got {F}")
    sde = model.module.sde
    sigma_raw, sigma_w, share = noise_in_window_units(model, raw, train)
    if sigma is not None:
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
    c = float(kw.pop("c", 1.0))
    t_fixed = kw.pop("t", None)
    n_levels = int(kw.pop("t_levels", 4 if sampler == "posterior_mean" else 1))
    sig_t = torch.as_tensor(sigma_w, dtype=torch.float32)
    finite = torch.isfinite(sig_t) & (sig_t > 0)
    # Features without a usable σ pass through; the sampler still needs a finite
    # placeholder for them, which never reaches the output.
    sig_run = torch.where(finite, sig_t, torch.ones_like(sig_t))
    # NaN share (σ not estimable) is not "white"; such features are not `finite` anyway
    white = np.greater(share, MAX_NOISE_SHARE, where=np.isfinite(share), out=np.zeros(F, bool))
    pick = (finite & torch.as_tensor(~white)).numpy()
    # Candidate timesteps (the network takes one t per call): a geometric grid of noise
    # levels over the features' σ, each turned into the t whose diffusion noise is c·σ.
    if t_fixed is not None:
        t_list = [int(t) for t in np.atleast_1d(t_fixed)]
    elif pick.any():
        s_ok = sig_t[torch.as_tensor(pick)].double()
        lo, hi = float(s_ok.min()), float(s_ok.max())
        levels = np.geomspace(lo, hi, n_levels) if n_levels > 1 and hi > lo else [float(
            torch.exp(torch.log(s_ok).mean()))]  # fmt: skip
        t_list = sorted({int(sampling.choose_t(sde, torch.tensor([lv]), c=c)) for lv in levels})
    else:
        t_list = [1]
    # per candidate t: can the model resolve each feature's σ there?
    res_ok, res_why = [], []
    for t in t_list:
        ok_t, why = sampling.resolvable(sde, sig_t, t=t)
        res_ok.append(ok_t.cpu().numpy().astype(bool) & pick)
        res_why.append(list(why))
    tau = sampling.diffusion_noise(sde).double().cpu().numpy()
    # without the gate: each feature takes the candidate closest to c·σ (in log noise)
    dist = np.array([np.abs(np.log(tau[t]) - np.log(c * np.where(pick, sigma_w, 1.0)))
                     for t in t_list])  # fmt: skip
    dist = np.where(np.array(res_ok), dist, np.inf)
    choice = np.where(np.isfinite(dist.min(0)), dist.argmin(0), -1)  # (F,) index or -1
    reasons = []
    for j in range(F):
        if white[j]:
            reasons.append(
                f"noise share σ²/Var(y) = {share[j]:.2f} > {MAX_NOISE_SHARE} on the train "
                "split: white at the daily scale, signal and noise cannot be separated"
            )
        elif choice[j] < 0:
            reasons.append(res_why[0][j] or "σ not estimable on the train split")
        else:
            reasons.append("")

    plan = serving_plan(T, model.window, model.anchor_len, mode, model.direction)
    starts, rows, pos, w_idx = plan
    scale = torch.as_tensor(model.window_scale, dtype=torch.float32)
    n_win = len(starts)

    def eps_fn(x, tt, m):
        return model.module(x, tt, m)

    def run(x_native: np.ndarray, with_bands: bool, t: int) -> dict[str, np.ndarray]:
        """All windows through the sampler; the same random draws for the same seed."""
        z = ((x_native - model.mean) / model.std).astype(np.float32)  # (T, F)
        values = torch.as_tensor(z)
        gen = torch.Generator().manual_seed(int(seed) * 1000 + int(model.cluster["id"]))
        keys = ("m", "lo", "hi") if with_bands else ("m",)
        out_w = {k: np.full((n_win, model.window, F), np.nan, np.float32) for k in keys}
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
                        eps_fn, sde, w, mask, t_start=t_start, steps=steps,
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
                    if key in out_w:
                        out_w[key][sl] = (v * scale + anchor).numpy()
                if progress is not None:
                    progress(min(b0 + batch_windows, n_win), n_win)
        return {k: _assemble(v, z, x_native) for k, v in out_w.items()}

    def _assemble(wins: np.ndarray, z: np.ndarray, x_native: np.ndarray) -> np.ndarray:
        """Window outputs -> (T, F) native units; unserved rows and NaN keep the input."""
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
        out = zz * model.std + model.mean
        return np.where(np.isnan(zz) | np.isnan(x_native), x_native, out)

    gate_db = np.full((len(t_list), F), np.nan)
    if denoise_features is not None:  # replay: the decisions are given
        choice = np.asarray(denoise_features, dtype=int).copy()
    gating = denoise_features is None and gate_rows is not None
    # the gate scores every usable candidate; otherwise only the chosen ones are run
    needed = (
        [k for k in range(len(t_list)) if res_ok[k].any()]
        if gating
        else sorted(set(choice[choice >= 0].tolist()))
    )
    outs = {k: run(raw, bands, t_list[k]) for k in needed}
    if gating and needed:
        # SURE on the validation rows for every candidate t, with a ±δ probe and the same
        # random draws; each feature takes its best candidate, or stays raw.
        rng = np.random.default_rng(int(seed) + 7919 * int(model.cluster["id"]))
        probe = rng.choice([-1.0, 1.0], size=raw.shape)
        delta = 0.05 * np.where(np.isfinite(sigma_raw) & (sigma_raw > 0), sigma_raw, 1.0)
        g = slice(*gate_rows)
        for k in needed:
            d_probe = run(raw + delta * probe, False, t_list[k])["m"]
            gate_db[k] = sure_gain_db(
                raw[g], outs[k]["m"][g], d_probe[g], probe[g], delta, sigma_raw
            )
            gate_db[k][~res_ok[k]] = np.nan
        scored = np.where(np.isnan(gate_db), -np.inf, gate_db)  # (K, F)
        best = scored.max(axis=0)
        choice = np.where(best > gate_margin_db, scored.argmax(axis=0), -1)
        for j in range(F):
            if choice[j] < 0 and not reasons[j]:
                reasons[j] = (
                    f"SURE on the validation rows: best estimated gain {best[j]:.2f} dB "
                    f"<= {gate_margin_db} dB"
                )
    ok = choice >= 0

    def pick_out(key: str) -> np.ndarray:
        out = raw.copy()  # pass-through features are exactly raw
        for k in needed:
            cols = choice == k
            out[:, cols] = outs[k][key][:, cols]
        return out

    mean = pick_out("m")
    lower = pick_out("lo") if bands else None
    upper = pick_out("hi") if bands else None
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: not gated
        best_gain = np.nanmax(gate_db, axis=0)
    feature_gain = np.where(ok, gate_db[np.maximum(choice, 0), np.arange(F)], best_gain)
    info = {
        "cluster": model.name,
        "type": model.cluster["type"],
        "direction": model.direction,
        "mode": mode,
        "uses_future_rows": mode == "offline",
        "sampler": sampler,
        "guidance": guidance,
        "t": [t_list[k] for k in needed],  # the candidate timesteps run
        "t_list": t_list,
        "choice": choice.tolist(),  # per feature: index into t_list, -1 = raw (replayable)
        "windows": int(n_win),
        "seconds": round(time.perf_counter() - t0, 3),
        "checkpoint": str(model.path),
        "features": {
            f: {
                "sigma": _f(sigma_raw[i]),
                "sigma_window_units": _f(sigma_w[i]),
                "noise_share": _f(share[i]),
                "t": t_list[choice[i]] if ok[i] else None,
                "sure_gain_db_val": _f(feature_gain[i]),
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
