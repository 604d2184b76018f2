"""Denoising candidates: one protocol for every estimator the per-feature gate chooses from.

Each candidate is fitted on train rows (or was, when its network was trained), applied
causally to the whole (T, F) block, and reports the divergence ∂out_t/∂y_t that SURE
needs: exactly where it has a closed form (the Kalman filter: its gain; the predictive
head: the mixture's Kalman updates), or None, when the gate estimates it with a probe
(the diffusion posterior mean, SDEdit). docs/design.md, "Denoising".

=============  ===========================================================  ===========
candidate      output at row t                                             divergence
=============  ===========================================================  ===========
diffusion@t    score posterior mean ŝ = y - (k/τ_t) ε̂(√ᾱ_t y, t), k = σ²+τ_t²  probe
sdedit@t       diffuse to t, reverse with DDIM/DDPM, mean of n samples       probe
predictive     E[s_t | y_t, y_<t] under the head's Gaussian mixture          exact
kalman         causal Kalman filter of the lowest-AIC state-space fit       exact (gain)
robust         Gaussian-sum filter of that fit, noise law with outliers     exact
combiner       Kalman + the group's current innovations, weights fitted on  exact
               train rows against future targets (shared factors)
=============  ===========================================================  ===========

Adding a candidate is one class that follows ``Candidate`` plus one line in ``REGISTRY``:
the cluster pipeline (inference/cluster.py) builds, runs, gates, records and replays
every candidate through this protocol alone, and evaluate.py reports each family alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from mamba_denoiser.inference.plan import BATCH_WINDOWS, run_windows


@dataclass
class CandidateOutput:
    mean: np.ndarray  # (T, F) native units; NaN where not served or unobserved
    div: np.ndarray | None  # (T, F) exact ∂out_t/∂y_t, or None (the gate probes it)
    lower: np.ndarray | None = None  # (T, F) bands where the candidate has its own
    upper: np.ndarray | None = None


@dataclass(frozen=True)
class Context:
    """What a candidate may be built from: the cluster's model and block, the plan of
    step 1 (σ in window units, who is usable, the t grid) and the run's options."""

    model: Any  # inference.models.ClusterModel
    raw: np.ndarray  # (T, F) native units, NaN where unobserved
    train: tuple[int, int]
    sigma_w: np.ndarray  # (F,) σ in window units (1.0 as a placeholder where unknown)
    usable: np.ndarray  # (F,) bool: may be denoised
    mode: str  # causal | offline
    sampler: str
    sampler_kw: dict
    t_list: list[int]
    seed: int = 0
    batch_windows: int = BATCH_WINDOWS


@runtime_checkable
class Candidate(Protocol):
    """One estimator. Class-level declarations, read by the gate, replay and reports:

    family       the registry key and the name of its "alone" output
    causal_only  only served in causal mode (else it runs in offline mode too)
    linear       its output is linear in y: SURE is exact for it under any white noise;
                 a nonlinear candidate needs a score valid beyond Gaussian noise
    scope        "feature" (each column filtered on its own) or "group" (a vector filter
                 over the cluster's features; ``features`` then lists them)
    streaming    it has ``stream(history)``: a live step that serves new rows from
                 state held after the history, with no O(T) work, bit-identical to a
                 batch run over the grown panel (``Denoiser.update``, inference/
                 stream.py). Filters continue their recursion (recursion.Stepper);
                 networks run the one window of the causal plan that serves each new
                 row. A panel with a candidate that has none is served by the batch path
    """

    name: str  # unique within a cluster's run, e.g. "diffusion@t=40"
    family: ClassVar[str]
    causal_only: ClassVar[bool]
    linear: ClassVar[bool]
    scope: ClassVar[str]
    streaming: ClassVar[bool]

    def run(self, raw: np.ndarray, progress=None, rows=None) -> CandidateOutput:
        """(T, F) -> outputs on every row, causally. ``rows`` (T,) bool: the rows wanted; a
        candidate may skip the work of the others (NaN there), never change a wanted row."""
        ...

    # where ``streaming``: stream(history (T, F)) -> step(held (T', F), n0) -> (T' - n0, F),
    # the outputs of the rows n0.. of ``held`` (the history and the new rows after it)

    def decisions(self) -> Any:
        """What it fitted, JSON-able (None: nothing beyond the cluster's plan)."""
        ...

    @classmethod
    def build(cls, ctx: Context) -> list[Candidate]:
        """Its instances for this cluster, fitted on the train rows ([] where the model or
        mode cannot serve it)."""
        ...

    @classmethod
    def from_decisions(cls, ctx: Context, held: Any) -> list[Candidate]:
        """The same instances from what ``decisions()`` recorded: nothing re-fitted."""
        ...


class _Unfitted:
    """Candidates whose only fitted parts are the network and the cluster's plan."""

    # the network reads every feature of the cluster's window: a vector filter
    scope: ClassVar[str] = "group"
    streaming: ClassVar[bool] = True

    def decisions(self) -> None:
        return None

    def stream(self, history: np.ndarray):
        return _WindowStream(self.model, lambda local, want, a: self.run(local, rows=want).mean)

    def _windows(self, raw, fn, progress, rows, aux=None) -> dict[str, np.ndarray]:
        """``fn`` over the serving plan's windows of the model (plan.run_windows)."""
        kw = dict(mode=self.mode, batch_windows=self.batch, progress=progress, rows=rows)
        return run_windows(self.model, raw, fn, aux=aux, **kw)

    @classmethod
    def from_decisions(cls, ctx: Context, held: Any) -> list:
        return cls.build(ctx)


class _DiffusionHead(_Unfitted):
    """Candidates of the ε-network (the diffusion head): any mode, nonlinear in y."""

    causal_only: ClassVar[bool] = False
    linear: ClassVar[bool] = False


class DiffusionCandidate(_DiffusionHead):
    """The ε-network's posterior mean at one diffusion timestep t.

    constant (sampling.posterior_mean_n2s): "total_noise" (k = σ² + τ_t², the default: the
    least biased at τ_t ~ σ/2 and the most robust to ε̂ error, tests/diffusion/
    test_exact_score.py) or "noise2score" (k = σ², unbiased only as τ_t -> 0).
    With ``sampler=sdedit`` the registry's "diffusion" entry builds SDEdit instead."""

    family: ClassVar[str] = "diffusion"

    @classmethod
    def build(cls, ctx: Context) -> list:
        if not ctx.model.has_head("diffusion"):
            return []
        if ctx.sampler == "sdedit":
            return SDEditCandidate.build(ctx)
        kw = dict(mode=ctx.mode, batch_windows=ctx.batch_windows)
        constant = ctx.sampler_kw.get("constant", "total_noise")
        return [cls(ctx.model, ctx.sigma_w, t, constant=constant, **kw) for t in ctx.t_list]

    def __init__(
        self,
        model,
        sigma_w: np.ndarray,
        t: int,
        *,
        mode: str,
        batch_windows=BATCH_WINDOWS,
        constant: str = "total_noise",
    ):
        self.model, self.t, self.mode, self.batch = model, int(t), mode, batch_windows
        self.constant = constant
        self.sigma_w = torch.as_tensor(sigma_w, dtype=torch.float32)
        self.name = f"diffusion@t={self.t}"

    def run(self, raw: np.ndarray, progress=None, rows=None) -> CandidateOutput:
        from mamba_denoiser.diffusion import sampling

        module = self.model.module

        def fn(w, mask):
            m = sampling.posterior_mean_n2s(
                module, module.sde, w, mask, sigma=self.sigma_w, t=self.t, constant=self.constant
            )
            return {"mean": m}

        out = self._windows(raw, fn, progress, rows)
        return CandidateOutput(out["mean"], None)


class SDEditCandidate(_DiffusionHead):
    """SDEdit from t_start: diffuse, then the reverse process; mean and quantile bands.
    Built by the registry's "diffusion" entry (sampler=sdedit), which checks the head."""

    family: ClassVar[str] = "sdedit"
    # its draws follow the batch's order of windows: a live row would get other ones
    streaming: ClassVar[bool] = False

    @classmethod
    def build(cls, ctx: Context) -> list:
        kw = dict(mode=ctx.mode, seed=ctx.seed, batch_windows=ctx.batch_windows)
        return [cls(ctx.model, t, ctx.sampler_kw, **kw) for t in ctx.t_list]

    def __init__(
        self, model, t: int, kw: dict, *, mode: str, seed: int, batch_windows=BATCH_WINDOWS
    ):
        self.model, self.t, self.kw, self.mode = model, int(t), dict(kw), mode
        self.seed, self.batch = int(seed), batch_windows
        self.name = f"sdedit@t={self.t}"

    def run(self, raw: np.ndarray, progress=None, rows=None) -> CandidateOutput:
        from mamba_denoiser.diffusion import sampling

        module, kw = self.model.module, self.kw
        gen = torch.Generator().manual_seed(self.seed * 1000 + int(self.model.cluster["id"]))
        t_start = self.t
        steps = kw.get("steps")
        # a small t_start (little noise) has fewer steps to take than asked for
        steps = min(int(steps), t_start + 1) if steps is not None else None

        def fn(w, mask):
            res = sampling.sdedit(
                module,
                module.sde,
                w,
                mask,
                t_start=t_start,
                steps=steps,
                method=kw.get("method", "ddim"),
                n_samples=int(kw.get("n_samples", 8)),
                eta=float(kw.get("eta", 0.0)),
                guidance=kw.get("guidance"),
                guidance_scale=float(kw.get("guidance_scale", 0.02)),
                generator=gen,
                quantiles=tuple(kw.get("quantiles", (0.05, 0.95))),
            )
            return {"mean": res.mean, "mean_lo": res.lower, "mean_hi": res.upper}

        out = self._windows(raw, fn, progress, rows)
        return CandidateOutput(out["mean"], None, out["mean_lo"], out["mean_hi"])


class PredictiveCandidate(_Unfitted):
    """The causal backbone's one-step mixture prediction, updated with y_t in closed form.

    A residual head (diffusion/residual.py) starts from each feature's robust filter,
    fitted on the train rows as the robust candidate's (and recorded, so a replay re-runs
    the filter only), and updates with that filter's noise law: untrained, it is the
    filter."""

    family: ClassVar[str] = "predictive"
    causal_only: ClassVar[bool] = True
    linear: ClassVar[bool] = False  # the mixture's weights depend on y_t
    name = "predictive"

    @classmethod
    def build(cls, ctx: Context) -> list:
        if not ctx.model.has_head("predictive"):
            return []
        filters = None
        net = getattr(ctx.model, "predictive_module", None) or ctx.model.module
        if getattr(net, "residual", False):
            from mamba_denoiser.robust import fit_robust

            filters = fit_robust(ctx.raw, ctx.train)
        return [cls(ctx.model, ctx.sigma_w, batch_windows=ctx.batch_windows, filters=filters)]

    @classmethod
    def from_decisions(cls, ctx: Context, held: Any) -> list:
        if held is None or not ctx.model.has_head("predictive"):
            return cls.build(ctx)
        robust = RobustCandidate.from_decisions(ctx, held)[0]
        filters = (robust.fits, robust.laws)
        return [cls(ctx.model, ctx.sigma_w, batch_windows=ctx.batch_windows, filters=filters)]

    def __init__(self, model, sigma_w: np.ndarray, *, batch_windows=BATCH_WINDOWS, filters=None):
        self.model, self.batch, self.mode = model, batch_windows, "causal"
        # The feature's own σ, not the training floor (predictive.SIGMA_FLOOR): the head
        # learnt Var(y | past) − floor², but where σ is far below the floor, updating with
        # the floor over-smooths (measured: trend features, default noise, −4.0 dB with the
        # floor vs +0.1 dB without). SURE (gate.py) uses the same σ.
        self.sigma_w = torch.as_tensor(sigma_w, dtype=torch.float32)
        self.filters = filters  # (fits, laws) of a residual head, else None

    def _module(self):
        """The network whose predictive head serves: the one train.py chose on validation
        rows for this head (ClusterModel.predictive_module), else the cluster's."""
        return getattr(self.model, "predictive_module", None) or self.model.module

    def decisions(self) -> list | None:
        """A residual head's filters, as the robust candidate records them."""
        return None if self.filters is None else RobustCandidate(*self.filters).decisions()

    def run(self, raw: np.ndarray, progress=None, rows=None) -> CandidateOutput:
        if self.filters is not None:
            return self._run_residual(raw, progress, rows)
        from mamba_denoiser.diffusion import predictive

        module = self._module()

        def fn(w, mask):
            s_hat, div, _ = predictive.predict_windows(
                module, w, mask, sigma=self.sigma_w, anchor_len=self.model.anchor_len
            )
            return {"mean": s_hat, "div": div}

        out = self._windows(raw, fn, progress, rows)
        return CandidateOutput(out["mean"], out["div"])

    def stream(self, history: np.ndarray):
        if self.filters is None:
            return super().stream(history)
        return _ResidualStream(self, history)

    def _run_residual(self, raw, progress, rows, priors=None) -> CandidateOutput:
        """``priors``: the filter's (robust.Priors) on raw's rows, when raw is a cut of a
        longer panel (a live window: its priors come from the whole history)."""
        from mamba_denoiser.diffusion import residual
        from mamba_denoiser.robust import filter_priors

        module, anchor_len = self._module(), self.model.anchor_len
        p = filter_priors(raw, *self.filters) if priors is None else priors
        unit = self.model.scaler.unit
        nv = torch.as_tensor(p.noise_var / unit[:, None] ** 2, dtype=torch.float32)  # (F, 2)
        ep = torch.as_tensor(p.noise_weights, dtype=torch.float32)  # (F, 2)
        fw = torch.as_tensor(p.jump_weights, dtype=torch.float32)

        def fn(w, mask, aux):
            mu = aux["prior_mu"]
            var = torch.stack([aux["prior_var"], aux["prior_var_jump"]], -1)  # (B, L, F, 2)
            with torch.no_grad():
                innov = residual.innovations(w, mask, mu, var[..., 0], nv, ep)
                out = module.predict_residual(w, mask, innov)
                s_hat, div, _, _ = residual.window_outputs(
                    out, w, mask, mu, var, nv, ep, fw, anchor_len=anchor_len
                )
            return {"mean": s_hat, "div": div}

        aux = {
            "prior_mu": ("loc", p.mean),
            "prior_var": ("var", p.var),
            "prior_var_jump": ("var", p.var_jump),
        }
        out = self._windows(raw, fn, progress, rows, aux=aux)
        return CandidateOutput(out["mean"], out["div"])


class _Classical:
    """Classical filters: recursions over the whole history, causal mode only, carried over
    to a grown panel from their held state (recursion.py)."""

    causal_only: ClassVar[bool] = True
    scope: ClassVar[str] = "feature"
    streaming: ClassVar[bool] = True


class KalmanCandidate(_Classical):
    """Per feature, the causal Kalman filter of its lowest-AIC state-space fit (train rows).

    ``fits``: the fits of an earlier run (``decisions()``), held instead of re-fitted, so
    a replay at a cut inside the train rows re-runs the filter only."""

    family: ClassVar[str] = "kalman"
    linear: ClassVar[bool] = True
    name = "kalman"

    @classmethod
    def build(cls, ctx: Context) -> list:
        return [cls(ctx.raw, ctx.train)]

    @classmethod
    def from_decisions(cls, ctx: Context, held: Any) -> list:
        if held is None:  # the run replayed had no Kalman candidate
            return []
        return [cls(ctx.raw, ctx.train, fits=held)]

    def __init__(self, raw: np.ndarray, train: tuple[int, int], fits: list | None = None):
        from mamba_denoiser.classical import state_space_fits

        self.fits = state_space_fits(raw, train) if fits is None else _fits_from(fits)

    def decisions(self) -> list[dict | None]:
        """The fits as JSON-able dicts (model, params, center, scale, noise_var, aic)."""
        return [_fit_record(f) for f in self.fits]

    def run(self, raw: np.ndarray, progress=None, rows=None) -> CandidateOutput:
        from mamba_denoiser.classical import kalman_filters

        return CandidateOutput(*kalman_filters(self.fits, raw))

    def stream(self, history: np.ndarray):
        from mamba_denoiser.classical import KalmanStream

        ks = KalmanStream(self.fits, history)
        return lambda held, n0: ks(held[n0:])[0]


class RobustCandidate(_Classical):
    """Per feature, the Gaussian-sum filter of its lowest-AIC state-space fit under a noise
    law with outliers fitted on the train rows (robust.py): Kalman where the noise is
    Gaussian, robust to outliers where it is not. Nonlinear in y (the paired gate)."""

    family: ClassVar[str] = "robust"
    linear: ClassVar[bool] = False
    name = "robust"

    @classmethod
    def build(cls, ctx: Context) -> list:
        from mamba_denoiser.robust import fit_robust

        return [cls(*fit_robust(ctx.raw, ctx.train))]

    @classmethod
    def from_decisions(cls, ctx: Context, held: Any) -> list:
        from mamba_denoiser.robust import NoiseLaw

        if held is None:
            return []
        fits = _fits_from([None if h is None else h["fit"] for h in held])
        laws = [None if h is None else NoiseLaw(**h["law"]) for h in held]
        return [cls(fits, laws)]

    def __init__(self, fits: list, laws: list):
        self.fits, self.laws = fits, laws

    def decisions(self) -> list[dict | None]:
        """Per feature {fit: the state-space fit, law: {eps, ratio}}, or None."""
        return [
            None if f is None else {"fit": _fit_record(f), "law": vars(law).copy()}
            for f, law in zip(self.fits, self.laws)
        ]

    def run(self, raw: np.ndarray, progress=None, rows=None) -> CandidateOutput:
        from mamba_denoiser.robust import apply_robust_div

        return CandidateOutput(*apply_robust_div(raw, self.fits, self.laws))

    def stream(self, history: np.ndarray):
        from mamba_denoiser.robust import RobustStream

        rs = RobustStream(self.fits, self.laws, history)
        return lambda held, n0: rs(held[n0:])["filtered"]


class CombinerCandidate(_Classical):
    """Each feature's Kalman filter corrected with the current innovations of every feature
    of the cluster, weights fitted on the train rows against future targets (combiner.py):
    what a per-feature filter cannot see where features share factors. Linear: exact SURE."""

    family: ClassVar[str] = "combiner"
    linear: ClassVar[bool] = True
    scope: ClassVar[str] = "group"  # one filter over the cluster's features
    streaming: ClassVar[bool] = True  # its Kalman filters and its sums carry on (combiner.py)
    name = "combiner"

    @classmethod
    def build(cls, ctx: Context) -> list:
        from mamba_denoiser.combiner import fit_combiner

        if ctx.raw.shape[1] < 2:  # nothing to combine
            return []
        return [cls(fit_combiner(ctx.raw, ctx.train))]

    @classmethod
    def from_decisions(cls, ctx: Context, held: Any) -> list:
        from mamba_denoiser.combiner import from_record

        return [] if held is None else [cls(from_record(held))]

    def __init__(self, combiner):
        self.combiner = combiner

    def decisions(self) -> dict:
        from mamba_denoiser.combiner import to_record

        return to_record(self.combiner, _fit_record)

    def run(self, raw: np.ndarray, progress=None, rows=None) -> CandidateOutput:
        from mamba_denoiser.combiner import apply_combiner

        return CandidateOutput(*apply_combiner(self.combiner, raw))

    def stream(self, history: np.ndarray):
        from mamba_denoiser.combiner import CombinerStream

        cs = CombinerStream(self.combiner, history)
        return lambda held, n0: cs(held[n0:])


class _WindowStream:
    """Live serving of a network candidate: the new rows are served by the windows of the
    causal plan that serve them (plan.window_of_row), cut from the held rows and run by
    ``run_local(local (n, F), want (n,) bool, a) -> (n, F)``, ``local`` being rows a.. of
    the panel. Positions after the newest row are unobserved padding, which a causal
    network never reads for earlier positions: the bits of the batch run."""

    def __init__(self, model, run_local):
        from mamba_denoiser.inference.plan import window_of_row

        self.model, self.run_local = model, run_local
        self._starts = lambda r: window_of_row(r, model.window, model.anchor_len, model.direction)

    def __call__(self, held: np.ndarray, n0: int) -> np.ndarray:
        T, F = held.shape
        rows = np.arange(n0, T)
        starts = self._starts(rows)
        out = np.full((T - n0, F), np.nan)
        served = starts >= 0
        if not served.any():
            return out
        a, b = int(starts[served].min()), int(starts[served].max()) + self.model.window
        local = np.full((b - a, F), np.nan)
        local[: min(b, T) - a] = held[a : min(b, T)]
        want = np.zeros(b - a, bool)
        want[rows[served] - a] = True
        out[served] = self.run_local(local, want, a)[rows[served] - a]
        return out


class _ResidualStream:
    """Live serving of the residual predictive head: its filter's priors carried over new
    rows (robust.RobustStream) and held, so a window's priors are those of the whole
    history, then the window as ``_WindowStream``."""

    def __init__(self, cand: PredictiveCandidate, history: np.ndarray):
        from mamba_denoiser.robust import RobustStream, filter_priors
        from mamba_denoiser.rows import Rows

        p = filter_priors(history, *cand.filters)
        self.priors, F = p, history.shape[1]
        self.held = {k: Rows(F) for k in ("mean", "var", "var_jump")}
        for k, r in self.held.items():
            r.append(getattr(p, k))
        self.filter = RobustStream(*cand.filters, history)
        self.cand = cand
        self.windows = _WindowStream(cand.model, self._run_local)

    def _run_local(self, local: np.ndarray, want: np.ndarray, a: int) -> np.ndarray:
        from dataclasses import replace

        n = len(local)
        cut = {}
        for k, r in self.held.items():
            v = np.full(local.shape, np.nan)
            got = r.rows(a, min(a + n, r.n))
            v[: len(got)] = got
            cut[k] = v
        p = replace(self.priors, filtered=None, **cut)
        return self.cand._run_residual(local, None, want, priors=p).mean

    def __call__(self, held: np.ndarray, n0: int) -> np.ndarray:
        new = self.filter(held[n0:])
        for k, r in self.held.items():
            r.append(new[k])
        return self.windows(held, n0)


def _fit_record(f) -> dict | None:
    """A StateSpaceFit as a JSON-able dict (model, params, center, scale, noise_var, aic)."""
    if f is None:
        return None
    return {
        "model": f.model,
        "params": {k: float(v) for k, v in f.params.items()},
        "center": float(f.center),
        "scale": float(f.scale),
        "noise_var": float(f.noise_var),
        "aic": float(f.aic),
    }


def _fits_from(records: list) -> list:
    from mamba_denoiser.classical import StateSpaceFit

    return [None if f is None else StateSpaceFit(**f, fits={}) for f in records]


# The candidates a run can name (``candidates=[...]``), in the default order. The order
# matters only where two candidates tie on the gate's score (the first wins).
REGISTRY: dict[str, type] = {
    "diffusion": DiffusionCandidate,
    "predictive": PredictiveCandidate,
    "kalman": KalmanCandidate,
    "robust": RobustCandidate,
    "combiner": CombinerCandidate,
}
CANDIDATES = tuple(REGISTRY)  # the default set (sampler=posterior_mean)
