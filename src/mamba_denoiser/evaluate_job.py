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
   with the decisions held; and a look-ahead statistic calibrated on a null.
4. With known clean values (the built-in data, or ``truth=PATH``): SNR gain on the TEST
   rows per planted family (primary) and per cluster type, causal and two-sided apart.
5. With targets: purged walk-forward forecasts of the RAW forward return from raw vs
   denoised vs anchor features, every scored block inside the test split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from mamba_denoiser.cli import ConfigError, fail_cleanly, output_dir, to_dict

log = logging.getLogger("mamba_denoiser")
ANCHOR = "best classical (val SURE)"


def _cuts(bounds: dict) -> tuple[list[int], list[int]]:
    """(cuts inside the rows the decisions are fitted on: mid-train, mid-validation;
    cuts inside the test split: at a third and two thirds of it)."""
    (a, b), (c, d), (e, f) = bounds["train"], bounds["val"], bounds["test"]
    return [(a + b) // 2, (c + d) // 2], [e + (f - e) // 3, e + (2 * (f - e)) // 3]


def _perturbation_checks(models, panel, method, kw, names, den, cfg) -> list[str]:
    """Future perturbation of the whole causal path; raises LeakageError on a failure."""
    from mamba_denoiser.evaluation import leakage
    from mamba_denoiser.inference.panel import denoise_panel

    bounds = panel.bounds
    fit_cuts, test_cuts = _cuts(bounds)
    fams = sorted(den.alone)

    def frame_with(x):
        f = panel.frame.copy()
        f[names] = x
        return f

    def full(x):  # everything re-fitted: σ, whiteness, Kalman fits, gate, choice
        r = denoise_panel(
            models, frame_with(x), bounds, gate=bool(cfg.gate), quiet=True, alone=True, **kw
        )
        return np.column_stack(
            [r.stack("mean", names)] + [_alone(r, fam, names, x) for fam in fams]
        )

    def held(x):  # the decisions of the unperturbed run, the serving path re-run
        replay = {cid: r.info["decisions"] for cid, r in den.clusters.items()}
        r = denoise_panel(
            models, frame_with(x), bounds, gate=bool(cfg.gate), quiet=True, replay=replay, **kw
        )
        return r.stack("mean", names)

    raw = panel.frame[names].to_numpy(dtype=np.float64)
    base_full = np.column_stack(
        [den.stack("mean", names)] + [_alone(den, fam, names, raw) for fam in fams]
    )
    leakage.check_future_perturbation(full, raw, cuts=test_cuts, base=base_full)
    leakage.check_future_perturbation(held, raw, cuts=fit_cuts, base=den.stack("mean", names))
    what = ", ".join(["chosen mix", *[f"{f} alone" for f in fams]])
    return [
        f"future perturbation, end to end ({method['name']}; {what}; σ, whiteness, Kalman "
        f"fits, SURE gate and choice re-fitted; cuts at test rows {test_cuts}): rows <= cut "
        "bit-identical",
        f"future perturbation, decisions held ({method['name']}; cuts at rows {fit_cuts}, "
        "inside the train and validation rows the decisions are fitted on): rows <= cut "
        "bit-identical",
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
    from mamba_denoiser.denoise_job import load_trained, prefit
    from mamba_denoiser.evaluation import leakage
    from mamba_denoiser.evaluation.anchor import best_classical
    from mamba_denoiser.evaluation.baselines import apply_baselines
    from mamba_denoiser.evaluation.report import grouped, lag_table, quality_table
    from mamba_denoiser.inference import plan_noise
    from mamba_denoiser.inference.panel import denoise_panel
    from mamba_denoiser.io import atomic_write_csv, atomic_write_text

    out = output_dir(cfg)
    t_start = time.perf_counter()
    with fail_cleanly(out):
        panel, models, clusters, ck_dir = load_trained(cfg)
        prefit(cfg, panel, models)
        names = [f for m in models.values() for f in m.features]
        ftype = {f: m.cluster["type"] for m in models.values() for f in m.features}
        raw = panel.frame[names].to_numpy(dtype=np.float64)
        bounds = panel.bounds
        train, val, test = bounds["train"], bounds["val"], bounds["test"]
        eval_rows = slice(*test)  # the gate looked at validation rows: score test rows only
        truth = _truth(cfg, panel, names)

        # one σ per feature for every method: the denoiser's own plan (train rows only)
        noise = {f: None for f in names}
        for m in models.values():
            p = plan_noise(panel.frame[m.features].to_numpy(float), train)
            for i, f in enumerate(m.features):
                noise[f] = (p.sigma[i], p.source[i], bool(p.white[i]), p.ljung_box_p[i])
        sigma = np.array([noise[f][0] for f in names])
        white = np.array([noise[f][2] for f in names])

        # 1. denoiser variants
        methods = [dict(m) for m in to_dict(cfg.methods)]
        den = {}
        for method in methods:
            log.info("Denoiser %s (%s, %s)", method["name"], method["sampler"], method["mode"])
            try:
                den[method["name"]] = denoise_panel(
                    models,
                    panel.frame,
                    bounds,
                    gate=bool(cfg.gate),
                    alone=True,
                    **_method_kw(method, cfg),
                )
            except ValueError as e:
                raise ConfigError(f"methods ({method['name']}): {e}") from None
            d = den[method["name"]]
            log.info("  %.1fs, %d of %d features changed", d.seconds, d.n_changed, len(names))
        causal = [m["name"] for m in methods if m["mode"] == "causal"]
        two_sided = [m["name"] for m in methods if m["mode"] != "causal"]

        # 2. baselines (same σ), the anchor
        t0 = time.perf_counter()
        bl = apply_baselines(
            raw, train, names=list(cfg.baselines), noise_var=sigma**2, n_jobs=int(cfg.n_jobs)
        )
        anchor = best_classical(
            raw,
            bl,
            sigma=sigma,
            white=white,
            rows=val,
            margin_db=float(cfg.gate_margin_db),
        )
        log.info(
            "Baselines (%s) and the anchor: %.1fs",
            ", ".join(cfg.baselines),
            time.perf_counter() - t0,
        )

        causal_out: dict[str, np.ndarray] = {"raw": raw}
        for n in causal:
            causal_out[n] = den[n].stack("mean", names)
            for fam in sorted(den[n].alone):
                causal_out[f"{n}: {fam} alone"] = _alone(den[n], fam, names, raw)
        causal_out[ANCHOR] = anchor.output
        causal_out.update({f"{b} (causal)": bl[b].causal for b in bl})
        two_out = {n: den[n].stack("mean", names) for n in two_sided}
        two_out.update(
            {f"{b} (two-sided)": bl[b].two_sided for b in bl if bl[b].two_sided is not None}
        )

        # 3. leakage checks (fail loudly)
        checks = []
        t0 = time.perf_counter()
        for name in causal:
            method = next(m for m in methods if m["name"] == name)
            wanted = cfg.leakage.perturbation_methods
            if wanted is None or name in wanted:  # null: every causal method
                checks += _perturbation_checks(
                    models, panel, method, _method_kw(method, cfg), names, den[name], cfg
                )
        for key, arr in causal_out.items():
            if key == "raw" or key.endswith("(causal)"):
                continue
            _, pooled = leakage.check_lookahead_panel(raw, arr, names=names)
            checks.append(f"look-ahead ({key}): {leakage.describe_pooled(pooled)}")
        for b in bl:
            tab, pooled = leakage.check_lookahead_panel(
                raw, bl[b].causal, names=names, raise_on_fail=False
            )
            if tab["flagged"].any() or pooled["flagged"]:
                log.warning("baseline %s trips the look-ahead check", b)
        log.info("Leakage checks passed: %d (%.1fs)", len(checks), time.perf_counter() - t0)

        # 4. quality against known clean values (test rows)
        tables: dict[str, pd.DataFrame] = {}
        tables["noise"] = _noise_table(noise, names, ftype, truth, panel)
        tables["choices"] = _choices_table(den, anchor, names, causal)
        if truth is not None:
            known = truth.known
            idx = [names.index(f) for f in known]
            clean = truth.clean[:, idx]

            def sub(d):
                return {k: v[:, idx] for k, v in d.items()}

            q_causal = quality_table(raw[:, idx], clean, sub(causal_out), known, eval_rows)
            tables["snr_causal_by_feature"] = q_causal
            tables["snr_causal_by_family"] = grouped(q_causal, truth.family)
            tables["snr_causal_by_type"] = grouped(q_causal, ftype)
            lags = lag_table(clean, sub(causal_out), known, eval_rows)
            tables["lag_causal_by_type"] = grouped(lags, ftype)
            if causal:
                tables["gate_by_feature"] = _gate_table(
                    den[causal[0]], q_causal[causal[0]], truth.family, tables["noise"]
                )
                tables["gate_by_feature"].attrs["method"] = causal[0]
            if two_out:
                q_two = quality_table(raw[:, idx], clean, sub(two_out), known, eval_rows)
                tables["snr_two_sided_by_family"] = grouped(q_two, truth.family)
                tables["snr_two_sided_by_type"] = grouped(q_two, ftype)

        # 5. downstream forecasting
        curves: dict[str, np.ndarray] = {}
        targets = set(panel.targets)
        if cfg.downstream.enabled and {"forward_returns", "risk_free_rate"} <= targets:
            main = cfg.downstream.denoised_method
            if main not in den:
                raise ConfigError(f"downstream.denoised_method={main}: not in methods")
            sets = {
                "raw": raw,
                f"denoised ({main})": den[main].stack("mean", names),
                f"anchor ({ANCHOR})": anchor.output,
            }
            tables["downstream"], curves = _downstream(cfg, panel, names, sets)
        elif cfg.downstream.enabled:
            skipped = (
                "Downstream forecasting skipped: it needs the targets forward_returns and "
                f"risk_free_rate (data.targets={sorted(targets)})"
            )
            log.info(skipped)

        # report
        for key, tab in tables.items():
            atomic_write_csv(out / "tables" / f"{key}.csv", tab.reset_index())
        report = _report(
            cfg, panel, ck_dir, methods, checks, tables, truth, den, time.perf_counter() - t_start
        )
        if cfg.plots:
            _plots(out, panel, names, ftype, raw, den, tables, curves, truth, methods)
        atomic_write_text(out / "report.md", report)
        if cfg.get("results_md"):  # the generated copy the README / docs link to
            atomic_write_text(Path(cfg.results_md), _generated_header() + report)
    _print_key(tables, den, names)
    print(f"report: {out / 'report.md'}")
    return {"tables": tables, "checks": checks, "denoised": den, "anchor": anchor}


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
    from mamba_denoiser.evaluation.truth import builtin_truth, load_truth_file

    if cfg.get("truth"):
        return load_truth_file(cfg.truth, panel, names, cfg.get("truth_families"))
    if cfg.get("truth_families"):
        raise ConfigError("truth_families= needs truth=PATH (the clean values) too")
    return builtin_truth(panel, names)


def _noise_table(noise, names, ftype, truth, panel) -> pd.DataFrame:
    from mamba_denoiser.data.source import load_truth

    meta = load_truth(panel.source) if truth is not None else None
    true_sd = (meta or {}).get("noise_std", {})
    rows = []
    for f in names:
        s, src, w, p = noise[f]
        rows.append(
            {
                "feature": f,
                "type": ftype[f],
                "family": truth.family.get(f, "") if truth else "",
                "sigma": s,
                "source": src,
                "white": w,
                "ljung_box_p": p,
                "sigma / true": s / true_sd[f] if f in true_sd else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index("feature")


def _gate_table(res, test_gain: pd.Series, family: dict, noise: pd.DataFrame) -> pd.DataFrame:
    """Per feature: what the gate predicted (SURE gain on the validation rows) next to what
    happened (SNR gain on the test rows against the clean values), so a feature the gate
    accepted that then lost is visible."""
    rows = []
    for r in res.clusters.values():
        for f, v in r.info["features"].items():
            rows.append(
                {
                    "feature": f,
                    "family": family.get(f, ""),
                    "cluster": r.info["cluster"],
                    "sigma source": noise.loc[f, "source"] if f in noise.index else "",
                    "chosen": v["chosen"],
                    "predicted gain (val SURE, dB)": (
                        v["gain_db_val"]
                        if v["denoised"] and v["gain_db_val"] is not None
                        else np.nan
                    ),
                    "test gain (dB)": float(test_gain.get(f, np.nan)),
                }
            )
    return pd.DataFrame(rows).set_index("feature")


def _gate_summary(gate: pd.DataFrame) -> str:
    """One paragraph: did the validation-SURE predictions hold on the test rows?"""
    from scipy.stats import spearmanr

    ch = gate[gate["chosen"] != "raw"].dropna(
        subset=["predicted gain (val SURE, dB)", "test gain (dB)"]
    )
    if ch.empty:
        return "No feature was changed, so no prediction to check."
    pred, real = ch["predicted gain (val SURE, dB)"], ch["test gain (dB)"]
    lost = ch[real < -0.1].sort_values("test gain (dB)")
    text = (
        f"On the {len(ch)} changed features the gate predicted a median gain of "
        f"{pred.median():+.2f} dB (SURE, validation rows); the test rows gave a median of "
        f"{real.median():+.2f} dB"
    )
    if len(ch) >= 3:
        rho = spearmanr(pred, real).statistic
        text += f" (Spearman ρ between the two: {rho:.2f})"
    if lost.empty:
        return text + "; none lost more than 0.1 dB on the test rows."
    worst = ", ".join(
        f"{f} {r['test gain (dB)']:+.2f} dB (predicted {r['predicted gain (val SURE, dB)']:+.2f})"
        for f, r in lost.head(5).iterrows()
    )
    return text + f"; {len(lost)} lost more than 0.1 dB on the test rows: {worst}."


def _choices_table(den, anchor, names, causal) -> pd.DataFrame:
    data = {}
    for n in causal:
        ch = {
            f: v["chosen"] for r in den[n].clusters.values() for f, v in r.info["features"].items()
        }
        data[f"{n}: chosen"] = [ch[f] for f in names]
    data[f"{ANCHOR}: chosen"] = list(anchor.choice)
    return pd.DataFrame(data, index=names)


def _downstream(cfg, panel, names, sets):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mamba_denoiser.evaluation.downstream import (
        MODELS,
        position_from_prediction,
        resolve_models,
        run_downstream,
    )

    def models_from(options) -> list:
        """downstream.models: the names ridge / hgb, or Hydra nodes {_target_: CLASS, ...,
        name: optional label} instantiated here (the library gets the estimators, cloned per
        fold). Errors are one line naming the option."""
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
            if not (
                callable(getattr(est, "fit", None)) and callable(getattr(est, "predict", None))
            ):
                raise ConfigError(
                    f"{where} (_target_={node['_target_']}): {type(est).__name__} has no "
                    "fit(X, y) / predict(X); give a scikit-learn-style regressor"
                )
            out.append((str(name), est) if name else est)
        return out

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
    models = models_from(cfg.downstream.models)
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


def _shown(path) -> str:
    """A path as the report shows it: relative to the project root when under it, so a
    report copied into docs/results/ names no machine's directories."""
    import os

    from mamba_denoiser.cli import ROOT_ENV

    p = Path(str(path))
    try:
        return str(p.resolve().relative_to(Path(os.environ.get(ROOT_ENV, os.getcwd())).resolve()))
    except ValueError:
        return str(p)


def _report(cfg, panel, ck_dir, methods, checks, tables, truth, den, seconds) -> str:
    from mamba_denoiser.evaluation.report import to_markdown

    b = panel.bounds
    n_feat = len(tables["noise"])
    lines = [
        "# Evaluation report",
        "",
        f"Data: `{_shown(panel.source)}` (sha256 {str(panel.sha256)[:12]}…, {panel.n_rows} rows; "
        f"train rows {list(b['train'])}, validation {list(b['val'])}, test {list(b['test'])}; "
        "quality scored on the test rows).",
        f"Checkpoints: `{_shown(ck_dir)}`. Wall time {seconds:.0f}s.",
        "",
        *[
            f"**{den[m['name']].n_changed} of {n_feat} features changed** by `{m['name']}` "
            f"({m['sampler']}, {m['mode']}"
            + (", uses FUTURE rows" if m["mode"] != "causal" else "")
            + ")."
            for m in methods
        ],
        "",
        "## Leakage checks (run every time; a failure stops the run)",
        "",
        *[f"- passed: {c}" for c in checks],
        "",
    ]
    if truth is None:
        lines += [
            "No clean values are known for this data (pass truth=PATH to score against "
            "your own): quality tables are skipped.",
            "",
        ]
    else:
        lines += [
            "## Quality against the known clean signal",
            "",
            f"Clean values: `{_shown(truth.source)}` ({len(truth.known)} features). SNR gain "
            "in dB on the test rows, 10·log10(MSE(raw)/MSE(output)) against the clean values, "
            "mean over the features of each group; 0 = leaving the data alone, higher is "
            "better. Every method uses the same σ per feature (table `noise`). "
            f"`{ANCHOR}` is chosen per feature like the denoiser's mix: raw or a classical "
            "causal filter, by SURE on the validation rows, white series left raw. "
            "`<method>: <candidate> alone` applies one candidate to every feature it can serve.",
            "",
            "### Causal (row t uses rows <= t), by planted family",
            "",
            to_markdown(_transpose(tables["snr_causal_by_family"]), index_name="method"),
            "",
            "### Causal, by cluster type",
            "",
            to_markdown(_transpose(tables["snr_causal_by_type"]), index_name="method"),
            "",
        ]
        if "snr_two_sided_by_family" in tables:
            lines += [
                "### Two-sided (uses future rows; analysis only), by planted family",
                "",
                to_markdown(_transpose(tables["snr_two_sided_by_family"]), index_name="method"),
                "",
            ]
        if "gate_by_feature" in tables:
            gate = tables["gate_by_feature"]
            lines += [
                f"### Per feature: the gate's prediction against the test rows "
                f"(`{gate.attrs.get('method', '')}`)",
                "",
                _gate_summary(gate),
                "",
                "<details><summary>every feature (table `gate_by_feature`)</summary>",
                "",
                to_markdown(gate, digits=2, index_name="feature"),
                "",
                "</details>",
                "",
            ]
        lines += [
            "### Lag of causal outputs behind the clean signal (rows; mean by type)",
            "",
            to_markdown(_transpose(tables["lag_causal_by_type"]), digits=1, index_name="method"),
            "",
        ]
    lines += [
        "## Noise level σ per feature (train rows) and the estimators chosen",
        "",
        "Tables `tables/noise.csv` (σ, its source, Ljung-Box p of y, ratio to the true noise "
        "std where known) and `tables/choices.csv` (per feature, what each causal method and "
        "the anchor chose).",
        "",
        to_markdown(_source_counts(tables["noise"]), digits=2, index_name="σ source"),
        "",
    ]
    if "downstream" in tables:
        d = tables["downstream"].set_index("features")
        keep = [
            c
            for c in (
                "model",
                "ic_mean",
                "ic_t",
                "rank_ic_mean",
                "rank_ic_t",
                "r2",
                "hit_rate",
                "sharpe",
                "adjusted_sharpe",
            )
            if c in d.columns
        ]
        lo, hi = tables["downstream"].attrs.get("scored_rows", (b["test"][0], panel.n_rows))
        lines += [
            "## Forecasting the raw forward return (purged walk-forward, out of sample)",
            "",
            f"{cfg.downstream.n_splits} expanding folds whose scored blocks cover rows "
            f"[{lo}, {hi}), inside the test split (from row {b['test'][0]}): no scored row was "
            "seen by checkpoint selection, the SURE gate or any fit. Embargo "
            f"{panel.split.embargo} rows; positions in [0, 2] from past predictions only; "
            "targets never denoised, never features.",
            "",
            to_markdown(d[keep], digits=4, index_name="features"),
            "",
        ]
    elif cfg.downstream.enabled:
        lines += [
            "## Forecasting",
            "",
            "Skipped: it needs the targets forward_returns and risk_free_rate (data.targets="
            f"{list(panel.targets)}).",
            "",
        ]
    return "\n".join(lines)


def _transpose(tab: pd.DataFrame) -> pd.DataFrame:
    """Groups as columns, methods as rows (many methods, few groups: readable)."""
    return tab.T


def _source_counts(noise: pd.DataFrame) -> pd.DataFrame:
    src = noise["source"].str.split(":").str[0]
    out = noise.groupby(src).agg(
        features=("sigma", "size"), median_ratio_to_true=("sigma / true", "median")
    )
    return out


def _print_key(tables: dict, den: dict, names: list[str], con=None) -> None:
    """The key tables on the console, every number in full at the console's width (80
    columns included): wide tables are transposed or split (report.console_tables)."""
    from mamba_denoiser.evaluation.report import console_tables
    from mamba_denoiser.io import console

    con = con or console()
    for n, d in den.items():
        print(f"{n}: {d.n_changed} of {len(names)} features changed")
    shown = []
    if "snr_causal_by_family" in tables:
        tab = _transpose(tables["snr_causal_by_family"])  # methods as rows
        cells = pd.DataFrame(
            {
                col: [_cell(v, count=idx == "features") for idx, v in tab[col].items()]
                for col in tab.columns
            }
        )
        cells.insert(0, "method", [str(i) for i in tab.index])
        shown.append(("Causal SNR gain (dB) on test rows, by family", cells))
    if "downstream" in tables:
        d = tables["downstream"]
        market = d[d["model"] == "market"]
        metrics = [c for c in d.columns if c not in ("features", "model")]
        for model in dict.fromkeys(d.loc[d["model"] != "market", "model"]):
            # one table per model: a row per metric, a column per feature set (+ market)
            rows = pd.concat([d[d["model"] == model], market])
            cells = pd.DataFrame(
                {
                    ("market" if r["model"] == "market" else r["features"]): [
                        _cell(r[c], count=c == "n_rows", digits=4) for c in metrics
                    ]
                    for _, r in rows.iterrows()
                }
            )
            cells.insert(0, "metric", metrics)
            shown.append((f"Out-of-sample forecasting: {model}", cells))
    for title, cells in shown:
        for t in console_tables(cells, width=con.width, title=title):
            con.print(t)


def _cell(v, *, count: bool = False, digits: int = 3) -> str:
    """A table cell: integers (and counts) as integers, other numbers with `digits`
    decimals (a value that rounds to zero as 0, never -0), missing as '-'."""
    if v is None or v is pd.NA or v is pd.NaT:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "-"
        if count and float(v).is_integer():
            return str(int(v))
        r = round(float(v), digits)
        return f"{(r if r != 0 else 0.0):.{digits}f}"
    return str(v)


def _plots(out: Path, panel, names, ftype, raw, den, tables, curves, truth, methods) -> None:
    from mamba_denoiser.plots import (
        plot_cumulative_returns,
        plot_denoised_examples,
        plot_grouped_bars,
    )

    ids = panel.frame[panel.id_col].to_numpy()
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
    first = methods[0]["name"]
    d = den[first]
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
