"""evaluate.py's work: does denoising help? Quality, leakage checks, forecasting; one report.

1. The denoiser variants (``methods``: sampler x mode) over every cluster, each with its
   chosen mix (per feature the best candidate by SURE on the validation rows, or raw) and
   each candidate family alone on every feature, so the learned heads' own quality is
   never hidden behind the Kalman candidate.
2. Classical baselines with the SAME σ per feature as the denoiser (classical.noise_sigma
   on the train rows), each alone, and the anchor: "best classical", chosen per feature
   like the denoiser's mix (raw always a candidate, white series pass through, SURE on the
   validation rows, exact for these linear filters).
3. Leakage checks that stop the run (LeakageError): the whole causal path (σ, whiteness,
   Kalman fits, SURE gate, candidate choice) re-run end to end on panels whose rows after
   a cut are replaced, with cuts inside the test split; at cuts inside the train and
   validation splits, whose rows the decisions are fitted on by design, the serving path
   with the decisions held; and a look-ahead statistic calibrated on a null, on every
   causal output, per class of the estimator serving each feature (linear candidates:
   innovations of a linear AR; nonlinear ones: of a nonlinear predictor fitted on the
   train rows, leakage.nonlinear_innovations).
4. With known clean values (the built-in data, or ``truth=PATH``): SNR gain on the TEST
   rows per planted family (primary) and per cluster type, causal and two-sided apart.
5. With targets: purged walk-forward forecasts of the RAW forward return from raw vs
   denoised vs anchor features, every scored block inside the test split.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from mamba_denoiser.background import Background
from mamba_denoiser.cli import fail_cleanly
from mamba_denoiser.config_schema import check
from mamba_denoiser.data.source import load_truth
from mamba_denoiser.errors import ConfigError
from mamba_denoiser.evaluation.headroom import report_section as headroom_section
from mamba_denoiser.evaluation.report import (
    ANCHOR,
    ReportTables,
    evaluation_report,
    key_tables,
    run_tables,
)
from mamba_denoiser.evaluation.truth import builtin_truth, load_truth_file
from mamba_denoiser.io import atomic_write_csv, atomic_write_text, console
from mamba_denoiser.stage import load_trained, output_dir, prefit, to_dict
from mamba_denoiser.tables import console_tables

log = logging.getLogger("mamba_denoiser")

# The steps import what pulls in torch, scipy, statsmodels, scikit-learn or matplotlib
# where they use it, so that evaluate.py answers a config error without loading them.


@dataclass
class _Inputs:
    """What every step reads: the panel, its models, the features and one σ per feature."""

    cfg: DictConfig
    panel: Any
    models: dict[int, Any]
    ck_dir: Path
    names: list[str]  # the cluster features, in cluster order
    ftype: dict[str, str]  # feature -> cluster type
    raw: np.ndarray  # (T, F) observed
    truth: Any  # evaluation.truth.Truth, or None without clean values
    true_sd: dict[str, float]  # feature -> the true noise std, where clean values are known
    noise: dict[str, tuple]  # feature -> (σ, source, white, Ljung-Box p), train rows

    @property
    def sigma(self) -> np.ndarray:
        return np.array([self.noise[f][0] for f in self.names])

    @property
    def white(self) -> np.ndarray:
        return np.array([self.noise[f][2] for f in self.names])

    @property
    def cluster_of(self) -> np.ndarray:
        """(F,) each feature's cluster id, the denoiser's gate pools within it."""
        return np.array([k for k, m in self.models.items() for _ in m.features])


@dataclass
class _Outputs:
    """The methods' outputs: denoiser variants, baselines, the anchor, stacked per mode."""

    methods: list[dict]
    den: dict[str, Any]  # method -> PanelResult
    bl: dict[str, Any]  # baseline -> its causal and two-sided output
    anchor: Any  # evaluation.anchor's best classical per feature
    causal_out: dict[str, np.ndarray]  # name -> (T, F), raw first
    two_out: dict[str, np.ndarray]
    # causal output name -> the denoiser method it comes from (its chosen mix and each of
    # its candidate families alone); what the exact perturbation test of that method covers
    method_of: dict[str, str] = field(default_factory=dict)

    @property
    def causal(self) -> list[str]:
        return [m["name"] for m in self.methods if m["mode"] == "causal"]

    @property
    def two_sided(self) -> list[str]:
        return [m["name"] for m in self.methods if m["mode"] != "causal"]


def _method_kw(method: dict, cfg) -> dict:
    """The options of denoise_panel for one method: its sampler's settings are the sampler
    group's (conf/sampler/<sampler>.yaml, loaded by the variants file under ``samplers``),
    then the method's own ``sampler_kw``."""
    kw = dict(to_dict(cfg.get("samplers") or {}).get(method["sampler"]) or {})
    kw.pop("name", None)
    return dict(
        mode=method["mode"],
        sampler=method["sampler"],
        sampler_kw={**kw, **(method.get("sampler_kw") or {})},
        candidates=method.get("candidates"),
        seed=int(cfg.seed),
        gate_margin_db=float(cfg.gate_margin_db),
        bands=bool(method.get("bands")),
    )


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    t_start = time.perf_counter()
    with fail_cleanly(out):
        check(cfg, "evaluate")  # typed configs: a wrong value fails before any data are read
        inp = _load(cfg)
        methods = [dict(m) for m in to_dict(cfg.methods)]
        den = _denoise_variants(inp, methods)
        # 3a runs in a worker beside 2-5; collected before anything is written. Where a
        # later step fails, 3a's failure is raised first, as when it ran before them.
        exact = _start_exact_checks(inp, methods, den)
        try:
            bl, anchor = _baselines(inp)
            res = _stack_outputs(inp, methods, den, bl, anchor)
            with exact.failure_first():
                lookahead = _lookahead_checks(inp, res)
                tables = _quality_tables(inp, res)
                tables.downstream, curves = _forecasting(inp, res)
            checks = _checks_passed(exact, lookahead)
        finally:
            exact.stop()  # a step failed first: the worker is not waited for
        _write_outputs(out, inp, res, checks, tables, curves, t_start)
    _print_key(tables, den, inp.names)
    print(f"report: {out / 'report.md'}")
    return {"tables": tables, "checks": checks, "denoised": den, "anchor": anchor}


def _load(cfg: DictConfig) -> _Inputs:
    """The panel and checkpoints (stage.load_trained), clean values where known, and
    one σ per feature for every method: the denoiser's own plan (train rows only)."""
    from mamba_denoiser.inference import plan_noise

    panel, models, _clusters, ck_dir = load_trained(cfg)
    _check_test_rows(panel, models)
    prefit(cfg, panel, models)
    names = [f for m in models.values() for f in m.features]
    ftype = {f: m.cluster["type"] for m in models.values() for f in m.features}
    raw = panel.frame[names].to_numpy(dtype=np.float64)
    meta = load_truth(panel.source)  # the built-in data's truth file, read once
    truth = _truth(cfg, panel, names, meta)
    true_sd = (meta or {}).get("noise_std", {}) if truth is not None else {}
    noise = {f: None for f in names}
    for m in models.values():
        p = plan_noise(panel.frame[m.features].to_numpy(float), panel.bounds["train"])
        for i, f in enumerate(m.features):
            noise[f] = (p.sigma[i], p.source[i], bool(p.white[i]), p.ljung_box_p[i])
    return _Inputs(cfg, panel, models, ck_dir, names, ftype, raw, truth, true_sd, noise)


def _check_test_rows(panel, models: dict) -> None:
    """Quality, the leakage cuts and the forecasts all live in the test split: a split
    without one (a deploy split) is refused, saying what to do instead."""
    a, b = panel.bounds["test"]
    window = max(m.window for m in models.values())
    if b - a < window:
        raise ConfigError(
            f"the split of {panel.source} has {b - a} test rows, fewer than one window "
            f"({window}): evaluate.py scores test rows only, and a deploy split "
            "(experiment=deploy, data.split.test=0, or data.split.val_end=null) has none. "
            "Evaluate a run trained with a test split, or wait for new rows: appended to "
            "the data, the rows after validation are test rows"
        )


def _denoise_variants(inp: _Inputs, methods: list[dict]) -> dict[str, Any]:
    """1. Every denoiser variant over every cluster, each candidate family alone too."""
    from mamba_denoiser.inference.panel import denoise_panel

    cfg, den = inp.cfg, {}
    for method in methods:
        log.info("Denoiser %s (%s, %s)", method["name"], method["sampler"], method["mode"])
        try:
            den[method["name"]] = denoise_panel(
                inp.models,
                inp.panel.frame,
                inp.panel.bounds,
                gate=bool(cfg.gate),
                alone=True,
                **_method_kw(method, cfg),
            )
        except ValueError as e:
            raise ConfigError(f"methods ({method['name']}): {e}") from None
        d = den[method["name"]]
        log.info("  %.1fs, %d of %d features changed", d.seconds, d.n_changed, len(inp.names))
    return den


def _baselines(inp: _Inputs) -> tuple[dict[str, Any], Any]:
    """2. The classical baselines with the same σ, and the anchor (best classical)."""
    from mamba_denoiser.classical import future_targets
    from mamba_denoiser.evaluation.anchor import best_classical
    from mamba_denoiser.evaluation.baselines import apply_baselines
    from mamba_denoiser.robust import apply_robust_div, fit_robust, gaussian_noise

    cfg, sigma = inp.cfg, inp.sigma
    t0 = time.perf_counter()
    train, val = inp.panel.bounds["train"], inp.panel.bounds["val"]
    bl = apply_baselines(
        inp.raw, train, names=list(cfg.baselines), noise_var=sigma**2, n_jobs=int(cfg.n_jobs)
    )
    # the robust filter joins the anchor as a nonlinear option (scored as in the gate)
    fits, laws = fit_robust(inp.raw, train)
    robust, robust_div = apply_robust_div(inp.raw, fits, laws)
    anchor = best_classical(
        inp.raw,
        bl,
        sigma=sigma,
        white=inp.white,
        rows=val,
        margin_db=float(cfg.gate_margin_db),
        nonlinear={"robust": robust},
        target=future_targets(inp.raw[: val[1]], train),  # validation rows only
        groups=inp.cluster_of,  # pooled like the denoiser's gate: fair
        nonlinear_div={"robust": robust_div},
        gaussian=gaussian_noise(laws),
    )
    log.info(
        "Baselines (%s) and the anchor: %.1fs",
        ", ".join(cfg.baselines),
        time.perf_counter() - t0,
    )
    return bl, anchor


def _stack_outputs(inp: _Inputs, methods, den, bl, anchor) -> _Outputs:
    """(T, F) outputs by name: the causal ones (raw first, each family alone, the anchor,
    the causal baselines), then the two-sided ones."""
    from mamba_denoiser.evaluation.checks import alone_output

    names, raw = inp.names, inp.raw
    res = _Outputs(methods, den, bl, anchor, {"raw": raw}, {})
    for n in res.causal:
        res.causal_out[n] = den[n].stack("mean", names)
        res.method_of[n] = n
        for fam in sorted(den[n].alone):
            res.causal_out[f"{n}: {fam} alone"] = alone_output(den[n], fam, names, raw)
            res.method_of[f"{n}: {fam} alone"] = n
    res.causal_out[ANCHOR] = anchor.output
    res.causal_out.update({f"{b} (causal)": bl[b].causal for b in bl})
    res.two_out.update({n: den[n].stack("mean", names) for n in res.two_sided})
    res.two_out.update(
        {f"{b} (two-sided)": bl[b].two_sided for b in bl if bl[b].two_sided is not None}
    )
    return res


def _start_exact_checks(inp: _Inputs, methods: list[dict], den: dict[str, Any]) -> Background:
    """3a. The exact perturbation checks (evaluation/checks.py) of every causal method
    ``leakage.perturbation_methods`` names (null: all), started in the background; its
    ``result()``: the passed checks' report lines."""
    from mamba_denoiser.evaluation.checks import method_checks

    cfg = inp.cfg

    def run() -> list[str]:
        lines = []
        for method in _perturbed(cfg, methods):
            kw = _method_kw(method, cfg)
            name = method["name"]
            lines += method_checks(
                inp.models, inp.panel, inp.names, den[name], name, gate=bool(cfg.gate), **kw
            )
        return lines

    return Background(run)


def _perturbed(cfg: DictConfig, methods: list[dict]) -> list[dict]:
    """The causal methods whose whole path the exact checks re-run:
    ``leakage.perturbation_methods`` (null: every causal method)."""
    wanted = cfg.leakage.perturbation_methods
    return [m for m in methods if m["mode"] == "causal" and (wanted is None or m["name"] in wanted)]


def _checks_passed(exact: Background, lookahead: list[str]) -> list[str]:
    """3. Every passed leakage check, described: the exact ones (waited for here; their
    LeakageError stops the run), then the look-ahead ones."""
    t0 = time.perf_counter()
    checks = exact.result() + lookahead
    log.info(
        "Leakage checks passed: %d (%.1fs waiting for the exact ones)",
        len(checks),
        time.perf_counter() - t0,
    )
    return checks


def _lookahead_checks(inp: _Inputs, res: _Outputs) -> list[str]:
    """3b. The look-ahead statistic of every causal output, per class of the estimator
    serving each feature (LeakageError stops the run); the passed ones, described."""
    t0 = time.perf_counter()
    perturbed = {m["name"] for m in _perturbed(inp.cfg, res.methods)}
    checks = _lookahead_lines(inp, res, perturbed)
    log.info("Look-ahead checks passed: %d (%.1fs)", len(checks), time.perf_counter() - t0)
    return checks


def _lookahead_lines(inp: _Inputs, res: _Outputs, perturbed: set[str]) -> list[str]:
    """The look-ahead checks' report lines; ``perturbed``: the methods whose whole causal
    path the exact checks cover (were one to fail, the run stops before these are used)."""
    from mamba_denoiser.evaluation import leakage

    names, raw = inp.names, inp.raw
    checks = []
    # the anchor's nonlinear features are the robust filter's: the same per-column causal
    # function as the denoiser's robust candidate, whose path the exact tests covered
    robust_exact = any("robust" in res.den[n].alone for n in perturbed)
    # the look-ahead statistic per class of the estimator serving each feature (linear:
    # the AR innovations; nonlinear: a train-fitted nonlinear predictor's, computed once)
    train = inp.panel.bounds["train"]

    @functools.cache
    def linear_innovations() -> np.ndarray:  # once per run, not once per output
        return leakage.linear_innovations(raw, leakage.cross_section(raw, train))

    @functools.cache
    def nonlinear_innovations() -> np.ndarray:
        t1 = time.perf_counter()
        cross = leakage.cross_section(raw, train, k=leakage.CROSS_K_NONLINEAR)
        out = leakage.nonlinear_innovations(raw, train, cross=cross)
        log.info(
            "  nonlinear innovations for the look-ahead statistic (%.1fs)",
            time.perf_counter() - t1,
        )
        return out

    for key, arr in res.causal_out.items():
        if key == "raw" or key.endswith("(causal)"):
            continue
        served = _served_by(res, key, names)
        exact = robust_exact if key == ANCHOR else res.method_of.get(key) in perturbed
        checks += leakage.lookahead_check(
            raw,
            arr,
            names,
            key,
            [leakage.serves_linearly(c) for c in served],
            nonlinear_innovations,
            exact=exact,
            linear_innov=linear_innovations,
            group=[leakage.serves_group(c) for c in served],
        )
    # the baselines against each raw column's own AR innovations, as check_lookahead_panel
    # computes them by default: the same for every baseline, so computed once
    own = leakage.linear_innovations(raw) if res.bl else None
    for b, out in res.bl.items():
        tab, pooled = leakage.check_lookahead_panel(
            raw, out.causal, names=names, raise_on_fail=False, innovations=own
        )
        if tab["flagged"].any() or pooled["flagged"]:
            log.warning("baseline %s trips the look-ahead check", b)
    return checks


def _served_by(res: _Outputs, key: str, names: list[str]) -> list[str | None]:
    """Per feature, the estimator output ``key`` serves it with: a method's chosen mix by
    the candidate each feature chose, "<method>: <family> alone" by that family, the
    anchor by its per-feature choice (its robust filter is nonlinear); None: raw."""
    if key == ANCHOR:
        return list(res.anchor.choice)
    if key in res.den:
        chosen = {
            f: v["chosen"]
            for r in res.den[key].clusters.values()
            for f, v in r.info["features"].items()
        }
        return [chosen.get(f) for f in names]
    family = key.rsplit(": ", 1)[1].removesuffix(" alone") if ": " in key else None
    return [family] * len(names)


def _quality_tables(inp: _Inputs, res: _Outputs) -> ReportTables:
    """4. The σ plan and the choices; with known clean values, SNR gain and lag on the
    TEST rows (the gate looked at the validation rows), by family and by type."""
    return run_tables(
        noise=inp.noise,
        names=inp.names,
        ftype=inp.ftype,
        truth=inp.truth,
        true_sd=inp.true_sd,
        raw=inp.raw,
        test_rows=slice(*inp.panel.bounds["test"]),
        den=res.den,
        anchor=res.anchor,
        causal=res.causal,
        causal_out=res.causal_out,
        two_out=res.two_out,
    )


def _forecasting(inp: _Inputs, res: _Outputs) -> tuple[pd.DataFrame | None, dict]:
    """5. With the targets: raw vs denoised vs anchor features forecasting the raw forward
    return: the table (None when skipped) and the strategies' excess returns by name."""
    cfg, targets = inp.cfg, set(inp.panel.targets)
    if not cfg.downstream.enabled:
        return None, {}
    if not {"forward_returns", "risk_free_rate"} <= targets:
        log.info(
            "Downstream forecasting skipped: it needs the targets forward_returns and "
            f"risk_free_rate (data.targets={sorted(targets)})"
        )
        return None, {}
    main = cfg.downstream.denoised_method
    if main not in res.den:
        raise ConfigError(f"downstream.denoised_method={main}: not in methods")
    sets = {
        "raw": inp.raw,
        f"denoised ({main})": res.den[main].stack("mean", inp.names),
        f"anchor ({ANCHOR})": res.anchor.output,
    }
    return _downstream(cfg, inp.panel, inp.names, sets)


def _write_outputs(out: Path, inp: _Inputs, res: _Outputs, checks, tables, curves, t0) -> None:
    """tables/*.csv, plots/, report.md (and the results_md copy), in that order."""
    cfg = inp.cfg
    for key, tab in tables.items():  # ReportTables: the tables made
        atomic_write_csv(out / "tables" / f"{key}.csv", tab.reset_index())
    report = evaluation_report(
        inp.panel,
        checkpoints=inp.ck_dir,
        methods=res.methods,
        changed={n: d.n_changed for n, d in res.den.items()},
        checks=checks,
        tables=tables,
        truth=inp.truth,
        seconds=time.perf_counter() - t0,
        downstream_enabled=bool(cfg.downstream.enabled),
        n_splits=cfg.downstream.n_splits,
        root=cfg.paths.root_dir,
    )
    report += headroom_section(load_truth(inp.panel.source))  # factors panels only
    if cfg.plots:
        from mamba_denoiser.plots import plot_evaluation

        first = res.methods[0]["name"]  # its changed features are the examples
        ids = inp.panel.frame[inp.panel.id_col].to_numpy()
        plot_evaluation(
            out / "plots",
            ids,
            inp.names,
            inp.ftype,
            inp.raw,
            inp.truth,
            first,
            res.den[first],
            tables.snr_causal_by_family,
            curves,
        )
    atomic_write_text(out / "report.md", report)
    if cfg.get("results_md"):  # the generated copy the README / docs link to
        atomic_write_text(Path(cfg.results_md), _generated_header() + report)


def _generated_header() -> str:
    """Says which command wrote the file, so every quoted figure has its command."""
    try:
        from hydra.core.hydra_config import HydraConfig

        over = [o for o in HydraConfig.get().overrides.task if not o.startswith("results_md=")]
    except ValueError:  # not under Hydra (tests): no command line to quote
        over = []
    cmd = " ".join(["python evaluate.py", *over])
    return (
        f"<!-- generated by `{cmd}` (after cluster.py and train.py "
        "experiment=cpu_all_clusters with the same data options); do not edit -->\n\n"
    )


def _truth(cfg, panel, names, meta):
    if cfg.get("truth"):
        return load_truth_file(cfg.truth, panel, names, cfg.get("truth_families"))
    if cfg.get("truth_families"):
        raise ConfigError("truth_families= needs truth=PATH (the clean values) too")
    return builtin_truth(panel, names, meta)


def _models_from(options) -> list:
    """downstream.models: the names ridge / hgb, or Hydra nodes {_target_: CLASS, ...,
    name: optional label} instantiated here (the library gets the estimators, cloned per
    fold). Errors are one line naming the option."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mamba_denoiser.evaluation.downstream import MODELS

    out = []
    for i, item in enumerate(options):
        where = f"downstream.models[{i}]"
        if isinstance(item, str):
            if item not in MODELS:
                raise ConfigError(
                    f"{where}={item}: unknown model; use {' or '.join(MODELS)}, or "
                    "{_target_: a scikit-learn-style regressor class, ...}"
                )
            out.append(item)
            continue
        node = OmegaConf.to_container(item, resolve=True) if OmegaConf.is_config(item) else item
        if not isinstance(node, dict) or "_target_" not in node:
            raise ConfigError(
                f"{where}={item}: give ridge, hgb or {{_target_: CLASS, ...}} "
                "(e.g. {_target_: sklearn.ensemble.RandomForestRegressor, n_estimators: 50})"
            )
        name = node.pop("name", None)
        try:
            est = instantiate(node)
        except Exception as e:  # Hydra wraps import and argument errors
            why = " ".join(str(e).split()).split(", set env var HYDRA_FULL_ERROR")[0]
            raise ConfigError(
                f"{where} (_target_={node['_target_']}): {why or type(e).__name__}"
            ) from None
        if not (callable(getattr(est, "fit", None)) and callable(getattr(est, "predict", None))):
            raise ConfigError(
                f"{where} (_target_={node['_target_']}): {type(est).__name__} has no "
                "fit(X, y) / predict(X); give a scikit-learn-style regressor"
            )
        out.append((str(name), est) if name else est)
    return out


def _downstream(cfg, panel, names, sets) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """evaluation.downstream.forecast_panel with the downstream options; its refusals as
    one-line ConfigErrors."""
    from mamba_denoiser.evaluation.downstream import forecast_panel

    models = _models_from(cfg.downstream.models)  # its ConfigErrors name the option
    try:
        return forecast_panel(
            panel,
            names,
            sets,
            n_splits=int(cfg.downstream.n_splits),
            models=models,
            k=float(cfg.downstream.k),
            seed=int(cfg.seed),
        )
    except ValueError as e:
        raise ConfigError(f"downstream: {e}") from None


def _print_key(tables: ReportTables, den: dict, names: list[str], con=None) -> None:
    """The key tables on the console, every number in full at the console's width (80
    columns included): wide tables are transposed or split (tables.console_tables)."""
    con = con or console()
    for n, d in den.items():
        print(f"{n}: {d.n_changed} of {len(names)} features changed")
    for title, cells in key_tables(tables):
        for t in console_tables(cells, width=con.width, title=title):
            con.print(t)


__all__ = ["run_evaluate", "ConfigError"]
