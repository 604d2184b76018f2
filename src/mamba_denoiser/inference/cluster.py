"""One cluster's (T, F) block -> denoised block: plan -> candidates -> gate -> assemble.

1. Plan (train rows only): σ per feature (classical.noise_sigma: the moment estimate, or
   the lowest-AIC state-space fit's noise where that is clipped, disagrees or is a trend;
   or given), and a whiteness test of y (classical.whiteness): a white y passes through,
   because white signal plus white noise cannot be told apart.
2. Candidates (inference/candidates.py, REGISTRY): the diffusion posterior mean at a few
   timesteps, the predictive head, the Kalman filter, the robust Gaussian-sum filter and
   the group's combiner; each applied causally to the whole block.
3. Gate (inference/gate.py), validation rows: SURE for linear candidates (and, where the
   noise law is Gaussian, for nonlinear ones with an exact divergence), the paired
   future-target risk for the other nonlinear ones; per feature the best above the
   margin, else raw.
4. Assemble: chosen features take their candidate's values; the rest are exactly raw.

``replay`` re-runs with given decisions (σ, t grid, each family's fits, each feature's
choice and alone picks), so the serving path alone is causal at cuts inside the rows the
decisions were fitted on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mamba_denoiser.classical import future_targets
from mamba_denoiser.inference import gate as gating
from mamba_denoiser.inference.candidates import CANDIDATES, REGISTRY, CandidateOutput, Context
from mamba_denoiser.inference.plan import BATCH_WINDOWS, MODES

SAMPLERS = ("posterior_mean", "sdedit", "predictive")
BAND_Z = 1.645  # 90 % bands
PROBE_SEED = 7919  # the divergence probe's (inference/gate.py), whatever the run's seed


@dataclass
class ClusterResult:
    mean: np.ndarray  # (T, F) native units; NaN where the input is NaN
    lower: np.ndarray | None
    upper: np.ndarray | None
    info: dict[str, Any]
    alone: dict[str, np.ndarray] | None = None  # candidate family -> (T, F), every feature


@dataclass
class NoisePlan:
    sigma: np.ndarray  # (F,) native units, NaN = unknown
    source: list[str]
    white: np.ndarray  # (F,) bool
    ljung_box_p: np.ndarray  # (F,)
    var_rse: np.ndarray | None = None  # (F,) relative SE of σ² (batch means, σ̂s' disagreement)
    spread: np.ndarray | None = None  # (F,) row spread of a realised gain (spread.py)
    gaussian: np.ndarray | None = None  # (F,) bool: Gaussian noise law (gate: SURE for all)


def plan_noise(raw: np.ndarray, train: tuple[int, int], sigma=None) -> NoisePlan:
    """σ and whiteness per feature from the train rows (σ overridden where given), and how
    well the train rows pin σ² down (``noise_var_rse``) and how much a realised gain moves
    between blocks of rows (``row_spread`` of the train-fitted model and noise law), both
    for the gate's lower bounds."""
    from mamba_denoiser.classical import noise_sigma
    from mamba_denoiser.diffusion.noise import noise_var_rse
    from mamba_denoiser.inference.spread import row_spread
    from mamba_denoiser.robust import fit_robust, gaussian_noise

    F = raw.shape[1]
    given = None if sigma is None else np.asarray(sigma, dtype=np.float64)
    sig, src, white, p = np.full(F, np.nan), [], np.zeros(F, bool), np.full(F, np.nan)
    choices = []
    for j in range(F):
        ch = noise_sigma(raw[:, j], train)
        choices.append(ch)
        white[j], p[j] = ch.white, ch.ljung_box_p
        if given is not None and np.isfinite(given[j]):
            sig[j], s = given[j], "given"
        else:
            sig[j], s = ch.sigma, ch.source
        src.append(s)
    a, b = int(train[0]), int(train[1])
    rse = np.array([noise_var_rse(raw[a:b, j]) for j in range(F)])
    # σ² is also uncertain by its model: the moment and the state-space estimates are both
    # consistent under the feature's model, so where they disagree, by half the log ratio
    # of their σ² each (batch means over the train rows see only sampling error: 3-8 % on
    # seed 1's ×5 jumps panel, where σ̂ was 0.73-1.39x the truth and the two disagreed)
    dis = np.array([_disagreement(c) for c in choices])
    rse = np.where(np.isfinite(rse), np.hypot(rse, dis), np.where(dis > 0, dis, rse))
    fits, laws = fit_robust(raw, train)  # memoised: the robust candidate reads the same fits
    spread = np.array([row_spread(f, w) for f, w in zip(fits, laws)])
    return NoisePlan(sig, src, white, p, rse, spread, gaussian_noise(laws))


def _disagreement(ch) -> float:
    """Half the |log ratio| of a NoiseChoice's moment and state-space σ², or 0 where one
    is missing (a clipped moment estimate is 0: missing)."""
    m, ss = ch.moment_sigma, ch.state_space_sigma
    if not (np.isfinite(m) and np.isfinite(ss) and m > 0 and ss > 0):
        return 0.0
    return float(abs(np.log(m / ss)))  # = |log(m²/ss²)| / 2


def _t_grid(model, sigma_w: np.ndarray, usable: np.ndarray, n_levels: int, c: float):
    """Candidate timesteps: τ_t on a geometric grid over c·σ of the usable features."""
    from mamba_denoiser.diffusion import sampling

    if not usable.any():
        return []
    s = sigma_w[usable]
    lo, hi = float(s.min()), float(s.max())
    levels = (
        np.geomspace(lo, hi, n_levels)
        if n_levels > 1 and hi > lo
        else [float(np.exp(np.log(s).mean()))]
    )
    sde = model.module.sde
    return sorted({int(sampling.choose_t(sde, torch.tensor([lv]), c=c)) for lv in levels})


def _build(names, ctx: Context, replay: dict[str, Any] | None) -> list:
    """The candidate objects for this cluster, through the registry: fitted on the train
    rows, or rebuilt from the fits a replayed run recorded (``decisions["fits"]``)."""
    held = _held_fits(replay) if replay is not None else None
    cands = []
    for name in names:
        cls = REGISTRY[name]
        if cls.causal_only and ctx.mode != "causal":
            continue
        if held is None:
            cands += cls.build(ctx)
        else:
            cands += cls.from_decisions(ctx, held.get(cls.family))
    return cands


def _held_fits(replay: dict[str, Any]) -> dict[str, Any]:
    """Each candidate family's recorded fits; runs recorded before the registry kept the
    Kalman fits under a key of their own."""
    fits = dict(replay.get("fits") or {})
    if "kalman" in replay:
        fits.setdefault("kalman", replay["kalman"])
    return fits


@dataclass
class _Plan:
    """Step 1's output: σ and whiteness per feature, who may be denoised, the t grid."""

    noise: NoisePlan
    sigma_w: np.ndarray  # (F,) window units
    usable: np.ndarray  # (F,) bool: finite positive σ and not white
    t_list: list[int]
    sig_run: np.ndarray  # (F,) σ_w where usable-ish, 1.0 as a placeholder elsewhere


def denoise_cluster(
    model,
    raw: np.ndarray,  # (T, F) native units, NaN where unobserved
    *,
    train: tuple[int, int],
    mode: str = "causal",
    sampler: str = "posterior_mean",
    sampler_kw: dict[str, Any] | None = None,
    candidates: list[str] | None = None,  # None: by sampler (CANDIDATES for posterior_mean)
    sigma: np.ndarray | None = None,  # native units; None/NaN = estimate on the train split
    gate_rows: tuple[int, int] | None = None,  # validation rows for the SURE gate
    gate_margin_db: float = 0.1,
    replay: dict[str, Any] | None = None,  # info["decisions"] of an earlier run
    seed: int = 0,
    batch_windows: int = BATCH_WINDOWS,
    bands: bool = False,
    band_z: float = BAND_Z,  # bands: ŝ ± band_z·(posterior sd); 1.645: 90 %
    alone: bool = False,  # also return each candidate family applied to every feature
    progress=None,
    rows: tuple[int, int] | None = None,  # serve only these rows (and the gate's): checks
) -> ClusterResult:
    """Denoise one cluster's block; every decision from train and validation rows only.

    Candidates, gate and pass-through rules: module docstring. Without ``gate_rows`` each
    feature takes the first candidate available to it (for the diffusion head, the t
    whose τ_t is closest to c·σ). ``replay`` fixes σ, the t grid and each feature's
    choice to those of an earlier run (its ``info["decisions"]``). ``rows`` (a, b): only
    rows a..b-1 are served, besides the validation rows the gate reads (the others stay
    raw); their values and every decision are those of the whole run, at a fraction of
    its cost (evaluate.py's leakage checks re-run a few windows per cut this way).
    """
    t0 = time.perf_counter()
    if raw.shape[1] != len(model.features):
        raise ValueError(
            f"{model.name}: expected {len(model.features)} columns, got {raw.shape[1]}"
        )
    opts = dict(mode=mode, sampler=sampler, sampler_kw=sampler_kw, candidates=candidates)
    kw, c, plan, cands = setup(  # 1. plan, 2. candidates
        model, raw, train, replay, sigma=sigma, seed=seed, batch_windows=batch_windows, **opts
    )
    names = [cd.name for cd in cands]
    wanted = _wanted_rows(len(raw), rows, gate_rows)
    held_alone = (replay or {}).get("alone") or {}
    run_idx = (
        [k for k, n in enumerate(names) if n in _replayed(replay, held_alone, alone)]
        if replay is not None
        else list(range(len(cands)))
    )
    outs: dict[int, CandidateOutput] = {
        k: cands[k].run(raw, progress, rows=wanted) for k in run_idx
    }
    if replay is not None:  # 3. gate
        choice = replayed_choice(names, replay)
        nan = np.full((len(cands), raw.shape[1]), np.nan)
        scores = gating.GateResult(choice, nan, nan, _paired(cands, raw.shape[1]), plan.noise.sigma)
        # bands need the chosen candidates' divergences (exact, else probed as below)
        divs = _divergences(model, cands, outs, raw, plan, bands, False, wanted) if bands else {}
    else:
        choice, scores, divs = _gate(
            model, cands, outs, raw, plan, train, gate_rows, gate_margin_db, bands, c, wanted
        )
    mean, lower, upper = _assemble(raw, choice, outs, divs, plan, gate_rows, bands, band_z)  # 4.
    info = _info(model, mode, sampler, kw["guidance"], cands, names, plan, choice)
    info["features"] = _feature_info(model, names, plan, choice, scores, gate_rows, gate_margin_db)
    picks = _alone_picks(cands, outs, scores.risk, names, held_alone)
    info["decisions"]["alone"] = {f: [names[k] for k in ks] for f, ks in picks.items()}
    info["seconds"] = round(time.perf_counter() - t0, 3)
    alone_out = _alone(picks, outs, raw, plan.usable) if alone else None
    return ClusterResult(mean=mean, lower=lower, upper=upper, info=info, alone=alone_out)


def setup(
    model,
    raw,
    train,
    replay,
    *,
    sigma=None,
    mode="causal",
    sampler="posterior_mean",
    sampler_kw=None,
    candidates=None,
    seed=0,
    batch_windows=BATCH_WINDOWS,
):
    """Steps 1 and 2 (denoise_cluster's arguments): -> (sampler kwargs, c, the plan, the
    candidate objects), fitted on the train rows or rebuilt from ``replay``."""
    kw, c, n_levels, candidates = _options(model, mode, sampler, sampler_kw, candidates)
    # an explicit SDEdit t_start is the one t: it replaces the grid chosen from σ
    t_fixed = kw.get("t_start") if sampler == "sdedit" else None
    plan = _plan(model, raw, train, sigma, replay, n_levels, c, t_fixed)
    ctx = Context(
        model=model,
        raw=raw,
        train=train,
        sigma_w=plan.sig_run,
        usable=plan.usable,
        mode=mode,
        sampler=sampler,
        sampler_kw=kw,
        t_list=plan.t_list,
        seed=seed,
        batch_windows=batch_windows,
    )
    return kw, c, plan, _build(candidates, ctx, replay)


def replayed_choice(names: list[str], replay: dict[str, Any]) -> np.ndarray:
    """(F,) each feature's candidate index among ``names`` as ``replay`` chose, -1 raw."""
    return np.array([names.index(n) if n is not None else -1 for n in replay["choice"]])


def _wanted_rows(n_rows: int, rows, gate_rows) -> np.ndarray | None:
    """(T,) bool: the rows to serve (``rows`` and the gate's), or None for all."""
    if rows is None:
        return None
    wanted = np.zeros(n_rows, bool)
    wanted[slice(*rows)] = True
    if gate_rows is not None:
        wanted[slice(*gate_rows)] = True
    return wanted


def _replayed(replay: dict, held_alone: dict, alone: bool) -> set:
    """The candidates a replay runs: the chosen ones, and each family's alone picks."""
    names = {n for n in replay["choice"] if n is not None}
    if alone:
        names |= {n for picks in held_alone.values() for n in picks}
    return names


def _options(model, mode, sampler, sampler_kw, candidates):
    """Checked options: (sampler kwargs with the resolved guidance, c, t levels, candidates)."""
    from mamba_denoiser.diffusion import sampling

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {MODES}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: choose one of {SAMPLERS}")
    kw = dict(sampler_kw or {})
    guidance = kw.pop("guidance", None)
    if guidance == "auto":
        guidance = getattr(model.module, "strategy", None)  # the guidance it trained with
    if guidance in ("none", ""):
        guidance = None
    if mode == "causal" and not sampling.guidance_is_causal(guidance):
        raise ValueError(
            f"guidance={guidance!r} uses later rows of a window (TV/FFT along time) and "
            "cannot be used in causal mode; use sampler.guidance=null or mode=offline"
        )
    kw["guidance"] = guidance
    c = float(kw.pop("c", 0.5))
    n_levels = int(kw.pop("t_levels", 4 if sampler == "posterior_mean" else 1))
    if candidates is None:
        candidates = {
            "posterior_mean": list(CANDIDATES),
            "sdedit": ["diffusion"],
            "predictive": ["predictive"],
        }[sampler]
    unknown = sorted(set(candidates) - set(REGISTRY))
    if unknown:
        raise ValueError(f"candidates {unknown} unknown; choose from {list(REGISTRY)}")
    return kw, c, n_levels, candidates


def _plan(model, raw, train, sigma, replay, n_levels: int, c: float, t_fixed=None) -> _Plan:
    """1. σ, whiteness and the t grid from the train rows (or held from ``replay``; or
    ``t_fixed`` alone when given)."""
    if replay is not None:
        noise = NoisePlan(
            np.asarray(replay["sigma"], float),
            list(replay["sigma_source"]),
            np.asarray(replay["white"], bool),
            np.full(raw.shape[1], np.nan),
        )
    else:
        noise = plan_noise(raw, train, sigma)
    sigma_w = noise.sigma / model.unit
    usable = np.isfinite(sigma_w) & (sigma_w > 0) & ~noise.white
    if replay is not None:
        t_list = list(replay["t_list"])
    elif t_fixed is not None:
        t_list = [int(t_fixed)]
    else:
        t_list = _t_grid(model, sigma_w, usable, n_levels, c)
    sig_run = np.where(np.isfinite(sigma_w) & (sigma_w > 0), sigma_w, 1.0)  # placeholder
    return _Plan(noise, sigma_w, usable, t_list, sig_run)


def _gate(model, cands, outs, raw, plan: _Plan, train, gate_rows, margin, bands, c, wanted=None):
    """3. The divergences SURE needs (exact, else probed: linear candidates, and every
    candidate when bands are asked for) and the gate on the validation rows (gate.py:
    SURE for linear candidates, and for nonlinear ones with an exact divergence where the
    noise law is Gaussian; the paired future-target risk for the others); per feature the
    best above ``margin``, else raw. -> (choice, GateResult, divs)."""
    K, F = len(cands), raw.shape[1]
    divs = _divergences(model, cands, outs, raw, plan, bands, gate_rows is not None, wanted)
    if gate_rows is None:  # no gate: the first available candidate, for diffusion the t
        choice = _ungated_choice(model, cands, plan.usable, plan.sigma_w, c)  # nearest c·σ
        nan = np.full((K, F), np.nan)
        return (
            choice,
            gating.GateResult(choice, nan, nan, _paired(cands, F), plan.noise.sigma),
            divs,
        )
    g = slice(*gate_rows)
    res = gating.gate(
        raw[g],
        plan.noise.sigma,
        [outs[k].mean[g] for k in range(K)],
        _scoring_divs(cands, outs, divs, g),
        [cd.linear for cd in cands],
        future_targets(raw[: gate_rows[1]], train)[g],  # reads validation rows only
        margin_db=margin,
        usable=plan.usable,
        var_rse=plan.noise.var_rse,
        spread=plan.noise.spread,
        gaussian=plan.noise.gaussian,
        groups=np.zeros(F, int),  # the cluster: its features share how much a head saves
    )
    return res.choice, res, divs


def _paired(cands, F: int) -> np.ndarray:
    """(K, F) bool: how an ungated or replayed run labels each candidate's score (the
    paired future-target risk for a nonlinear one; the gate refines it per feature)."""
    return np.repeat(np.array([not cd.linear for cd in cands], bool)[:, None], F, axis=1)


def _scoring_divs(cands, outs, divs: dict, rows: slice) -> list:
    """The divergences the gate may score with, on ``rows``: a linear candidate's (exact or
    probed), a nonlinear one's only where it is exact. A probe (run for bands) is unbiased
    but noisy per row, and SURE scores a nonlinear candidate only under Gaussian noise
    with its exact divergence (a diffusion head's probed SURE is what the issue's S4, t(5)
    noise, was fooled by)."""
    return [
        divs[k][rows] if k in divs and (cands[k].linear or outs[k].div is not None) else None
        for k in range(len(cands))
    ]


def _divergences(model, cands, outs, raw, plan: _Plan, bands, sure, wanted) -> dict:
    """∂out_t/∂y_t of the candidates run (``outs``): exact where a candidate reports it,
    else probed, for the linear ones when ``sure`` (the gate scores them) and for all when
    ``bands``."""
    divs: dict[int, np.ndarray] = {}
    need = [k for k in outs if outs[k].div is None and (bands or cands[k].linear)]
    if need and (sure or bands):
        # Only the usable columns are probed: a probe on a column that is never gated
        # (white, σ unknown) reaches the others through the network and only adds noise
        # to their estimates. The probe's seed is fixed, so decisions never depend on the
        # run's seed; and its draws fill rows in order, so a longer panel probes the
        # validation rows alike (live equals backtest).
        rng = np.random.default_rng([PROBE_SEED, int(model.cluster["id"])])
        probe = np.where(plan.usable, rng.choice([-1.0, 1.0], size=raw.shape), 0.0)
        delta = 0.05 * plan.sig_run * model.unit
        for k in need:
            d_probe = cands[k].run(raw + delta * probe, rows=wanted).mean
            divs[k] = gating.probe_divergence(outs[k].mean, d_probe, probe, delta)
    divs.update({k: o.div for k, o in outs.items() if o.div is not None})
    return divs


def _assemble(raw, choice, outs, divs, plan: _Plan, gate_rows, bands, band_z=BAND_Z):
    """4. Chosen features take their candidate's values; the rest are exactly raw."""
    mean = raw.copy()
    lower = raw.copy() if bands else None
    upper = raw.copy() if bands else None
    for j, k in enumerate(choice):
        if k < 0:
            continue
        o = outs[k]
        col = o.mean[:, j]
        served = np.isfinite(col)
        mean[served, j] = col[served]
        if bands:
            lo, hi = _bands(o, divs.get(k), j, plan.noise.sigma[j], gate_rows, band_z)
            lower[served, j], upper[served, j] = lo[served], hi[served]
    return mean, lower, upper


def _info(model, mode, sampler, guidance, cands, names, plan: _Plan, choice):
    """The cluster's record in denoise_summary.json (features and seconds: the caller's)."""
    t_list = [int(t) for t in plan.t_list]
    return {
        "cluster": model.name,
        "type": model.cluster["type"],
        "direction": model.direction,
        "heads": model.heads,
        "mode": mode,
        "uses_future_rows": mode == "offline",
        "sampler": sampler,
        "guidance": guidance,
        "candidates": names,
        "t": t_list,
        "seconds": None,
        "checkpoint": str(model.path),
        "decisions": {
            # exact floats (the replay must reproduce them), None for NaN (strict JSON)
            "sigma": [float(s) if np.isfinite(s) else None for s in plan.noise.sigma],
            "sigma_source": list(plan.noise.source),
            "white": [bool(w) for w in plan.noise.white],
            "t_list": t_list,
            "choice": [names[k] if k >= 0 else None for k in choice],
            # each candidate family's fits under its registry key (replayed by _build)
            "fits": {cd.family: d for cd in cands if (d := cd.decisions()) is not None},
        },
    }


def _feature_info(model, names, plan: _Plan, choice, scores, gate_rows, margin) -> dict:
    noise = plan.noise
    gains, lower = scores.gain, scores.lower  # dB; NaN where the risk estimate is not > 0
    reasons = _reasons(choice, noise, plan.usable, scores, gate_rows, margin, names)
    best = _lowest(scores.risk)  # (F,) the lowest-risk candidate, -1 where none scored

    def pick(arr, i):
        k = choice[i] if choice[i] >= 0 else best[i]
        return _f(arr[k, i]) if k >= 0 else None

    return {
        f: {
            "sigma": _f(noise.sigma[i]),
            "sigma_source": noise.source[i],
            "sigma_window_units": _f(plan.sigma_w[i]),
            "ljung_box_p": _f(noise.ljung_box_p[i]),
            "white": bool(noise.white[i]),
            "gain_db_val_by_candidate": {n: _f(gains[k, i]) for k, n in enumerate(names)},
            "chosen": names[choice[i]] if choice[i] >= 0 else "raw",
            # the chosen candidate's (else the best one's) estimated gain and its lower
            # prediction bound (risk + 2·√2 block-bootstrap SE); None where the risk
            # estimate is not positive: noise in the estimate, never shown as a gain
            "gain_db_val": pick(gains, i),
            "gain_db_val_lower": pick(lower, i),
            # sure: exact for a linear candidate under any white noise, and for any
            # candidate with an exact divergence under Gaussian noise; paired: a future-
            # target risk difference against the best linear candidate (gate.py)
            "score": ("paired" if scores.paired[choice[i], i] else "sure")
            if choice[i] >= 0
            else None,
            "denoised": bool(choice[i] >= 0),
            "reason": reasons[i],
        }
        for i, f in enumerate(model.features)
    }


def _lowest(risk: np.ndarray) -> np.ndarray:
    """(F,) the index of the lowest finite risk per column, -1 where there is none."""
    if not len(risk):
        return np.full(risk.shape[1], -1)
    r = np.where(np.isnan(risk), np.inf, risk)
    return np.where(np.isfinite(r).any(0), r.argmin(0), -1)


def _ungated_choice(model, cands, usable, sigma_w, c) -> np.ndarray:
    from mamba_denoiser.diffusion import sampling

    tau = sampling.diffusion_noise(model.module.sde).numpy()
    F = len(usable)
    choice = np.full(F, -1)
    if not cands:
        return choice
    fam = cands[0].family
    idx = [k for k, cd in enumerate(cands) if cd.family == fam]
    if fam in ("diffusion", "sdedit"):
        ts = np.array([cands[k].t for k in idx])
        dist = np.abs(np.log(tau[ts])[:, None] - np.log(c * np.where(usable, sigma_w, 1.0)))
        pick = np.array(idx)[dist.argmin(0)]
    else:
        pick = np.full(F, idx[0])
    return np.where(usable, pick, -1)


def _bands(o: CandidateOutput, div, j, sigma, gate_rows, z=BAND_Z):
    """Bands (90 % at z = 1.645): the candidate's own (SDEdit samples' quantiles), else
    ŝ ± z·σ·√div (Tweedie: Var[s | y] = σ² ∂E[s|y]/∂y for Gaussian noise; for the Kalman
    filter σ²·gain is its posterior variance exactly, for the predictive head its
    mixture's); a probed divergence is averaged over the validation rows, an exact one is
    used row by row."""
    if o.lower is not None:
        return o.lower[:, j], o.upper[:, j]
    col = o.mean[:, j]
    if div is None:
        return col, col
    d = div[:, j]
    if o.div is None:  # a probe estimate: only its mean over rows is meaningful
        rows = slice(*gate_rows) if gate_rows is not None else slice(None)
        d = np.full_like(col, np.nanmean(d[rows]))
    half = z * sigma * np.sqrt(np.clip(d, 0.0, 1.0))
    return col - half, col + half


def _alone_picks(cands, outs, risk, names, held: dict) -> dict[str, list[int]]:
    """Per candidate family, the slot each feature takes when the family serves alone
    (no raw option): the lowest validation risk where a family has several slots
    (diffusion timesteps); held from a replayed run's record where it has one."""
    picks = {}
    for fam in dict.fromkeys(cd.family for cd in cands):
        if fam in held:
            picks[fam] = [names.index(n) for n in held[fam]]
            continue
        idx = [k for k, cd in enumerate(cands) if cd.family == fam and k in outs]
        if not idx:
            continue
        r = np.where(np.isnan(risk[idx]), np.inf, risk[idx])
        picks[fam] = np.array(idx)[r.argmin(0)].tolist()
    return picks


def _alone(picks: dict[str, list[int]], outs, raw, usable) -> dict[str, np.ndarray]:
    """Each candidate family on every feature it can serve, with its slot from ``picks``."""
    res = {}
    for fam, best in picks.items():
        out = raw.copy()
        for j in range(raw.shape[1]):
            col = outs[best[j]].mean[:, j]
            served = np.isfinite(col) & usable[j]
            out[served, j] = col[served]
        res[fam] = out
    return res


def _reasons(choice, noise, usable, scores, gate_rows, margin, names) -> list[str]:
    best = _lowest(scores.risk)
    gains = scores.gain
    out = []
    for j, k in enumerate(choice):
        if k >= 0:
            out.append("")
        elif noise.white[j]:
            p = noise.ljung_box_p[j]  # NaN when the decision was held from a replayed run
            test = f"Ljung-Box p = {p:.2g}" if np.isfinite(p) else "as decided by the run replayed"
            out.append(
                f"y is white on the train split ({test}): "
                "white signal plus white noise cannot be told apart"
            )
        elif not usable[j]:
            out.append(f"σ not usable ({noise.source[j]})")
        elif not names:
            out.append("no candidate available for this model and mode")
        elif gate_rows is not None and best[j] >= 0:
            k = best[j]
            est = f"{names[k]}: estimated gain {_db(gains[k, j])}"
            out.append(
                f"validation rows, SURE: best {est} <= {margin} dB"
                if not scores.paired[k, j]
                else f"validation rows: best {est} (paired risk), not below raw's risk by "
                f"2 block-bootstrap SE and {margin} dB"
            )
        elif gate_rows is not None:
            out.append("validation rows: no candidate could be scored")
        else:
            out.append("no candidate could serve it")
    return out


def _db(x: float) -> str:
    return f"{x:.2f} dB" if np.isfinite(x) else "not estimable (risk estimate <= 0)"


def _f(x: float) -> float | None:
    x = float(x)
    return round(x, 8) if np.isfinite(x) else None
