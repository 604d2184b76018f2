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
   with the decisions held; and a look-ahead statistic calibrated on a null, which stops
   the run for every output the exact test did not cover (for the others it is reported:
   a linear statistic, which nonlinear causal filters can trip legitimately).
4. With known clean values (the built-in data, or ``truth=PATH``): SNR gain on the TEST
   rows per planted family (primary) and per cluster type, causal and two-sided apart.
5. With targets: purged walk-forward forecasts of the RAW forward return from raw vs
   denoised vs anchor features, every scored block inside the test split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from mamba_denoiser.cli import fail_cleanly
from mamba_denoiser.data.source import load_truth
from mamba_denoiser.errors import ConfigError
from mamba_denoiser.evaluation.report import (
    ANCHOR,
    choices_table,
    evaluation_report,
    gate_table,
    grouped,
    key_tables,
    lag_table,
    noise_table,
    quality_table,
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
    noise: dict[str, tuple]  # feature -> (σ, source, white, Ljung-Box p), train rows

    @property
    def sigma(self) -> np.ndarray:
        return np.array([self.noise[f][0] for f in self.names])

    @property
    def white(self) -> np.ndarray:
        return np.array([self.noise[f][2] for f in self.names])


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


def _perturbation_checks(models, panel, method, kw, names, den, cfg) -> list[str]:
    """The exact leakage checks of evaluation/checks.py over this method's whole causal
    path (the chosen mix and each candidate family alone); raises LeakageError."""
    from mamba_denoiser.evaluation import checks

    fams = sorted(den.alone)
    raw = panel.frame[names].to_numpy(dtype=np.float64)
    serve = checks.serve_fn(models, names, fams, gate=bool(cfg.gate), **kw)
    base = checks.served_from(den, names, fams, raw)
    replay = {cid: r.info["decisions"] for cid, r in den.clusters.items()}
    window = max(m.window for m in models.values())
    done = checks.run_checks(
        serve,
        panel.frame,
        names,
        panel.bounds,
        window,
        base,
        replay,
        seed=int(cfg.seed),
    )
    for d in done:
        log.info("  leakage, %s: %s passed (%.1fs)", method["name"], d["check"], d["seconds"])
    what = ", ".join(["chosen mix", *[f"{f} alone" for f in fams]])
    lines = {
        "end to end": "every decision re-fitted (σ, whiteness, fits, gate scores and choice "
        "compared too), values after the cut replaced",
        "decisions held": "inside the train and validation rows the decisions are fitted on; "
        "the decisions of the unperturbed run replayed",
        "future missingness": f"{checks.DROP:.0%} of the observed cells after the cut hidden",
        "shorter panel": "the panel cut at the row, the split bounds passed as they were",
    }
    return [
        f"exact, {d['check']} ({method['name']}; {what}; {lines[d['check']]}; cuts at rows "
        f"{d['cuts']}): rows <= cut bit-identical"
        for d in done
    ]


def _alone(res, fam: str, names: list[str], raw: np.ndarray) -> np.ndarray:
    """(T, F) a candidate family alone; raw for features it cannot serve."""
    cols = res.alone.get(fam, {})
    return np.column_stack([cols.get(f, raw[:, j]) for j, f in enumerate(names)])


def _method_kw(method: dict, cfg) -> dict:
    return dict(
        mode=method["mode"],
        sampler=method["sampler"],
        sampler_kw=dict(method.get("sampler_kw") or {}),
        candidates=method.get("candidates"),
        seed=int(cfg.seed),
        gate_margin_db=float(cfg.gate_margin_db),
        bands=bool(method.get("bands")),
    )


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    t_start = time.perf_counter()
    with fail_cleanly(out):
        inp = _load(cfg)
        methods = [dict(m) for m in to_dict(cfg.methods)]
        den = _denoise_variants(inp, methods)
        bl, anchor = _baselines(inp)
        res = _stack_outputs(inp, methods, den, bl, anchor)
        checks = _leakage_checks(inp, res)
        tables = _quality_tables(inp, res)
        curves = _forecasting(inp, res, tables)
        _write_outputs(out, inp, res, checks, tables, curves, t_start)
    _print_key(tables, den, inp.names)
    print(f"report: {out / 'report.md'}")
    return {"tables": tables, "checks": checks, "denoised": den, "anchor": anchor}


def _load(cfg: DictConfig) -> _Inputs:
    """The panel and checkpoints (stage.load_trained), clean values where known, and
    one σ per feature for every method: the denoiser's own plan (train rows only)."""
    from mamba_denoiser.inference import plan_noise

    panel, models, _clusters, ck_dir = load_trained(cfg)
    prefit(cfg, panel, models)
    names = [f for m in models.values() for f in m.features]
    ftype = {f: m.cluster["type"] for m in models.values() for f in m.features}
    raw = panel.frame[names].to_numpy(dtype=np.float64)
    truth = _truth(cfg, panel, names)
    noise = {f: None for f in names}
    for m in models.values():
        p = plan_noise(panel.frame[m.features].to_numpy(float), panel.bounds["train"])
        for i, f in enumerate(m.features):
            noise[f] = (p.sigma[i], p.source[i], bool(p.white[i]), p.ljung_box_p[i])
    return _Inputs(cfg, panel, models, ck_dir, names, ftype, raw, truth, noise)


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
    from mamba_denoiser.robust import apply_robust, fit_robust

    cfg, sigma = inp.cfg, inp.sigma
    t0 = time.perf_counter()
    train, val = inp.panel.bounds["train"], inp.panel.bounds["val"]
    bl = apply_baselines(
        inp.raw, train, names=list(cfg.baselines), noise_var=sigma**2, n_jobs=int(cfg.n_jobs)
    )
    # the robust filter joins the anchor as a nonlinear option (the paired score)
    robust = apply_robust(inp.raw, *fit_robust(inp.raw, train))
    anchor = best_classical(
        inp.raw,
        bl,
        sigma=sigma,
        white=inp.white,
        rows=val,
        margin_db=float(cfg.gate_margin_db),
        nonlinear={"robust": robust},
        target=future_targets(inp.raw[: val[1]], train),  # validation rows only
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
    names, raw = inp.names, inp.raw
    res = _Outputs(methods, den, bl, anchor, {"raw": raw}, {})
    for n in res.causal:
        res.causal_out[n] = den[n].stack("mean", names)
        res.method_of[n] = n
        for fam in sorted(den[n].alone):
            res.causal_out[f"{n}: {fam} alone"] = _alone(den[n], fam, names, raw)
            res.method_of[f"{n}: {fam} alone"] = n
    res.causal_out[ANCHOR] = anchor.output
    res.causal_out.update({f"{b} (causal)": bl[b].causal for b in bl})
    res.two_out.update({n: den[n].stack("mean", names) for n in res.two_sided})
    res.two_out.update(
        {f"{b} (two-sided)": bl[b].two_sided for b in bl if bl[b].two_sided is not None}
    )
    return res


def _leakage_checks(inp: _Inputs, res: _Outputs) -> list[str]:
    """3. The leakage checks (LeakageError stops the run); the passed ones, described."""
    from mamba_denoiser.evaluation import leakage

    cfg, names, raw = inp.cfg, inp.names, inp.raw
    checks = []
    t0 = time.perf_counter()
    perturbed = set()  # methods whose whole causal path passed the exact test
    for name in res.causal:
        method = next(m for m in res.methods if m["name"] == name)
        wanted = cfg.leakage.perturbation_methods
        if wanted is None or name in wanted:  # null: every causal method
            checks += _perturbation_checks(
                inp.models, inp.panel, method, _method_kw(method, cfg), names, res.den[name], cfg
            )
            perturbed.add(name)
    # the anchor's robust-filter features: the same per-column causal function as the
    # denoiser's robust candidate, whose whole path the exact tests just covered
    robust_exact = any("robust" in res.den[n].alone for n in perturbed)
    for key, arr in res.causal_out.items():
        if key == "raw" or key.endswith("(causal)"):
            continue
        if key == ANCHOR and robust_exact:
            checks += _anchor_lookahead(raw, arr, names, res.anchor.choice)
            continue
        checks.append(_lookahead_check(raw, arr, names, key, res.method_of.get(key) in perturbed))
    for b, out in res.bl.items():
        tab, pooled = leakage.check_lookahead_panel(
            raw, out.causal, names=names, raise_on_fail=False
        )
        if tab["flagged"].any() or pooled["flagged"]:
            log.warning("baseline %s trips the look-ahead check", b)
    log.info("Leakage checks passed: %d (%.1fs)", len(checks), time.perf_counter() - t0)
    return checks


def _anchor_lookahead(raw, arr, names, choice) -> list[str]:
    """The anchor's look-ahead check: the linear statistic (it stops the run) on the
    features a linear filter serves; the robust filter's features are covered by the
    exact tests of the robust candidate (the statistic is linear, that filter is not)."""
    lin = [j for j, c in enumerate(choice) if c != "robust"]
    n_rob = len(choice) - len(lin)
    out = []
    if lin:
        sub = [names[j] for j in lin]
        label = f"{ANCHOR}, {len(lin)} features served by linear filters"
        out.append(_lookahead_check(raw[:, lin], arr[:, lin], sub, label, False))
    if n_rob:
        out.append(
            f"look-ahead ({ANCHOR}, {n_rob} features served by the robust filter): the same "
            "causal function as the robust candidate, whose whole path passed the exact "
            "future-perturbation tests (the linear statistic does not apply to it)"
        )
    return out


def _lookahead_check(raw, arr, names, key: str, exact_passed: bool) -> str:
    """The look-ahead statistic of one output (evaluation/leakage.py). It stops the run,
    except for an output whose whole causal path just passed the exact future-perturbation
    test: the statistic is linear, and a nonlinear causal filter on non-Gaussian data (jumps)
    legitimately predicts part of the raw series' *linear* innovations (measured: the
    predictive head on data.noise_dist=jumps, pooled |z| 9.5 at h=1, while its rows <= t
    are bit-identical whatever rows > t hold). Then it is reported, with that reading."""
    from mamba_denoiser.evaluation import leakage

    tab, pooled = leakage.check_lookahead_panel(
        raw, arr, names=names, raise_on_fail=not exact_passed, label=key
    )
    text = f"look-ahead ({key}): {leakage.describe_pooled(pooled)}"
    if not (tab["flagged"].any() or pooled["flagged"]):
        return text
    log.warning(
        "%s: the linear look-ahead statistic is above its threshold, but the exact future-"
        "perturbation test passed: nonlinear prediction of linear innovations, not a look-ahead",
        key,
    )
    return (
        f"{text}; ABOVE the threshold, but the exact future-perturbation test of the same "
        "causal path passed (rows <= cut bit-identical), so this is the linear statistic "
        "seeing nonlinear prediction of the raw series' linear innovations, not a future row"
    )


def _quality_tables(inp: _Inputs, res: _Outputs) -> dict[str, pd.DataFrame]:
    """4. The σ plan and the choices; with known clean values, SNR gain and lag on the
    TEST rows (the gate looked at the validation rows), by family and by type."""
    names, ftype, truth, causal = inp.names, inp.ftype, inp.truth, res.causal
    tables: dict[str, pd.DataFrame] = {}
    family = truth.family if truth is not None else None
    meta = load_truth(inp.panel.source) if truth is not None else None
    true_sd = (meta or {}).get("noise_std", {})
    tables["noise"] = noise_table(inp.noise, names, ftype, family, true_sd)
    tables["choices"] = choices_table(res.den, res.anchor, names, causal)
    if truth is None:
        return tables
    known, rows = truth.known, slice(*inp.panel.bounds["test"])
    idx = [names.index(f) for f in known]
    clean, raw = truth.clean[:, idx], inp.raw[:, idx]

    def sub(d):
        return {k: v[:, idx] for k, v in d.items()}

    q_causal = quality_table(raw, clean, sub(res.causal_out), known, rows)
    tables["snr_causal_by_feature"] = q_causal
    tables["snr_causal_by_family"] = grouped(q_causal, truth.family)
    tables["snr_causal_by_type"] = grouped(q_causal, ftype)
    lags = lag_table(clean, sub(res.causal_out), known, rows)
    tables["lag_causal_by_type"] = grouped(lags, ftype)
    if causal:
        gate = gate_table(res.den[causal[0]], q_causal[causal[0]], truth.family, tables["noise"])
        gate.attrs["method"] = causal[0]
        tables["gate_by_feature"] = gate
    if res.two_out:
        q_two = quality_table(raw, clean, sub(res.two_out), known, rows)
        tables["snr_two_sided_by_family"] = grouped(q_two, truth.family)
        tables["snr_two_sided_by_type"] = grouped(q_two, ftype)
    return tables


def _forecasting(inp: _Inputs, res: _Outputs, tables: dict) -> dict[str, np.ndarray]:
    """5. With the targets: raw vs denoised vs anchor features forecasting the raw forward
    return (tables["downstream"]); the strategies' excess returns by name."""
    cfg, targets = inp.cfg, set(inp.panel.targets)
    if not cfg.downstream.enabled:
        return {}
    if not {"forward_returns", "risk_free_rate"} <= targets:
        log.info(
            "Downstream forecasting skipped: it needs the targets forward_returns and "
            f"risk_free_rate (data.targets={sorted(targets)})"
        )
        return {}
    main = cfg.downstream.denoised_method
    if main not in res.den:
        raise ConfigError(f"downstream.denoised_method={main}: not in methods")
    sets = {
        "raw": inp.raw,
        f"denoised ({main})": res.den[main].stack("mean", inp.names),
        f"anchor ({ANCHOR})": res.anchor.output,
    }
    tables["downstream"], curves = _downstream(cfg, inp.panel, inp.names, sets)
    return curves


def _write_outputs(out: Path, inp: _Inputs, res: _Outputs, checks, tables, curves, t0) -> None:
    """tables/*.csv, plots/, report.md (and the results_md copy), in that order."""
    cfg = inp.cfg
    for key, tab in tables.items():
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
    if cfg.plots:
        _plots(out, inp, res, tables, curves)
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


def _truth(cfg, panel, names):
    if cfg.get("truth"):
        return load_truth_file(cfg.truth, panel, names, cfg.get("truth_families"))
    if cfg.get("truth_families"):
        raise ConfigError("truth_families= needs truth=PATH (the clean values) too")
    return builtin_truth(panel, names)


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


def _downstream(cfg, panel, names, sets):
    """Purged walk-forward forecasts of the raw forward return from each feature set
    (name -> (T, F) cluster features): the metrics table, one row per set and model plus
    the market once, and the strategies' excess returns (the first model's) by name."""
    from mamba_denoiser.evaluation.downstream import (
        position_from_prediction,
        resolve_models,
        run_downstream,
    )

    targets = set(panel.targets)
    T = panel.n_rows
    test0 = panel.bounds["test"][0]
    n_splits = int(cfg.downstream.n_splits)
    base_cols = [c for c in panel.frame.columns if c != panel.id_col and c not in targets]
    fwd = panel.frame["forward_returns"].to_numpy(dtype=np.float64)
    rf = panel.frame["risk_free_rate"].to_numpy(dtype=np.float64)
    # every scored block inside the test split: no scored feature row was seen by the
    # checkpoint selection, the SURE gate or any fit
    test_size = (T - test0) // n_splits
    if test_size < 20:
        raise ConfigError(
            f"the test split has {T - test0} rows: too few for {n_splits} downstream blocks; "
            "lower downstream.n_splits or give more rows"
        )
    frames, curves = [], {}
    models = _models_from(cfg.downstream.models)
    try:
        model0 = next(iter(resolve_models(models, int(cfg.seed))))  # the curves' model
    except ValueError as e:
        raise ConfigError(f"downstream.models: {e}") from None
    for set_name, arr in sets.items():
        feats = panel.frame[base_cols].copy()
        feats[names] = arr
        try:
            res = run_downstream(
                feats,
                fwd,
                rf,
                n_splits=n_splits,
                embargo=int(panel.split.embargo),
                models=models,
                k=float(cfg.downstream.k),
                seed=int(cfg.seed),
                target_columns=list(panel.targets),
                test_size=test_size,
            )
        except ValueError as e:  # folds that do not fit, or a model refusing the data
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"downstream ({set_name} features): {first}") from None
        t = res.metrics.copy()
        t.insert(0, "features", set_name)
        frames.append(t.reset_index())
        pred = res.predictions.predictions[model0].to_numpy()
        pos = position_from_prediction(pred, k=float(cfg.downstream.k))
        curves[f"{set_name} ({model0})"] = rf * (1 - pos) + pos * fwd - rf
    curves["market"] = np.where(np.isfinite(pos), fwd - rf, np.nan)
    # the market row is the same for every feature set: keep it once, last
    market = frames[0][frames[0]["model"] == "market"].assign(features="-")
    table = pd.concat([f[f["model"] != "market"] for f in frames] + [market], ignore_index=True)
    table.attrs["scored_rows"] = (T - n_splits * test_size, T)
    return table, curves


def _print_key(tables: dict, den: dict, names: list[str], con=None) -> None:
    """The key tables on the console, every number in full at the console's width (80
    columns included): wide tables are transposed or split (tables.console_tables)."""
    con = con or console()
    for n, d in den.items():
        print(f"{n}: {d.n_changed} of {len(names)} features changed")
    for title, cells in key_tables(tables):
        for t in console_tables(cells, width=con.width, title=title):
            con.print(t)


def _plots(out: Path, inp: _Inputs, res: _Outputs, tables: dict, curves: dict) -> None:
    """plots/: SNR gain by family, cumulative strategy returns, one changed feature per
    cluster type (observed, denoised, clean where known)."""
    from mamba_denoiser.plots import (
        plot_cumulative_returns,
        plot_denoised_examples,
        plot_grouped_bars,
    )

    names, ftype, raw, truth = inp.names, inp.ftype, inp.raw, inp.truth
    ids = inp.panel.frame[inp.panel.id_col].to_numpy()
    if "snr_causal_by_family" in tables:
        t = tables["snr_causal_by_family"].drop(columns=["features"], errors="ignore")
        keep = [c for c in t.columns if "alone" not in c]  # a readable number of bars
        plot_grouped_bars(
            t[keep],
            out / "plots" / "snr_causal_by_family.png",
            title="Causal SNR gain by planted family (test rows)",
        )
    if curves:
        plot_cumulative_returns(
            ids,
            curves,
            out / "plots" / "cumulative_returns.png",
            title="Strategy excess return, out of sample",
        )
    first = res.methods[0]["name"]
    d = res.den[first]
    changed = {
        f for r in d.clusters.values() for f, v in r.info["features"].items() if v["denoised"]
    }
    picks = list(
        dict.fromkeys(
            next((f for f in names if ftype[f] == t and f in changed), None)
            for t in dict.fromkeys(ftype.values())
        )
    )
    picks = [f for f in picks if f is not None]
    if not picks:
        return
    clean = None
    if truth is not None:  # only where clean values are known; else the residual is vs raw
        clean = {f: truth.clean[:, names.index(f)] for f in picks if f in truth.known}
    plot_denoised_examples(
        ids,
        {f: raw[:, names.index(f)] for f in picks},
        {f: d.mean[f] for f in picks},
        out / "plots" / "examples.png",
        lower={f: d.lower[f] for f in picks} if d.lower else None,
        upper={f: d.upper[f] for f in picks} if d.upper else None,
        clean=clean,
        title=f"{first}: one changed feature per cluster type, last 400 rows (right: last "
        "100); below: residual",
    )


__all__ = ["run_evaluate", "ConfigError"]
