"""evaluate.py's work: does denoising help? Quality, leakage checks, forecasting; one report.

1. The denoiser variants (`methods`: sampler x mode) over every cluster, with one σ per
   feature estimated on the train split and shared by all variants.
2. Leakage checks that run every time and stop the run (LeakageError) when they fail:
   future perturbation of the inputs leaves the causal default unchanged on earlier rows;
   causal outputs do not predict future innovations of the raw series.
3. Classical baselines, fitted/tuned on the train split (evaluation/baselines.py).
4. With known clean values (the built-in data): SNR gain per feature, per cluster type
   and per planted family on the TEST rows (the per-feature gate looked at validation
   rows), causal and two-sided tables apart, and the lag of each causal output.
5. With targets: purged walk-forward forecasts of the RAW forward return from raw vs
   denoised vs best-causal-baseline features (ridge, gradient-boosted trees), with every
   test block after the train split, so no scored feature row was seen by a fitted
   denoiser or baseline.
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


def _denoise_all(models, panel, method: dict, sigmas: dict, seed: int, gate, margin) -> dict:
    from mamba_denoiser.inference import denoise_cluster

    kw = dict(method.get("sampler_kw") or {})
    out, lower, upper, seconds, decided = {}, {}, {}, 0.0, {}
    for cid, m in models.items():
        raw = panel.frame[m.features].to_numpy(dtype=np.float64)
        res = denoise_cluster(
            m, raw, train=panel.bounds["train"], mode=method["mode"],
            sampler=method["sampler"], sampler_kw=kw, sigma=sigmas[cid], seed=seed,
            bands=bool(method.get("bands", False)), gate_rows=gate, gate_margin_db=margin,
        )  # fmt: skip
        seconds += res.info["seconds"]
        decided[cid] = {"t_list": res.info["t_list"], "choice": np.array(res.info["choice"])}
        for i, f in enumerate(m.features):
            out[f] = res.mean[:, i]
            if res.lower is not None:
                lower[f], upper[f] = res.lower[:, i], res.upper[:, i]
    n_on = int(sum((d["choice"] >= 0).sum() for d in decided.values()))
    return {"mean": out, "lower": lower, "upper": upper, "seconds": seconds,
            "fitted": decided, "n_denoised": n_on}  # fmt: skip


def _stack(d: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.column_stack([d[f] for f in names])


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    from mamba_denoiser.data.source import load_truth, panel_from_config, truth_paths
    from mamba_denoiser.denoise_job import _load_models
    from mamba_denoiser.evaluation import leakage
    from mamba_denoiser.evaluation.baselines import apply_baselines
    from mamba_denoiser.evaluation.report import (
        best_column,
        grouped,
        lag_table,
        quality_table,
    )
    from mamba_denoiser.inference import denoise_cluster, noise_in_window_units
    from mamba_denoiser.io import atomic_write_csv, atomic_write_text

    out = output_dir(cfg)
    t_start = time.perf_counter()
    with fail_cleanly(out):
        panel = panel_from_config(to_dict(cfg.data))
        models, clusters, ck_dir = _load_models(cfg, panel)
        names = [f for m in models.values() for f in m.features]
        ftype = {f: m.cluster["type"] for m in models.values() for f in m.features}
        raw = panel.frame[names].to_numpy(dtype=np.float64)
        T = len(raw)
        train = panel.bounds["train"]
        # quality is scored on the TEST rows: the feature gate looked at validation rows
        eval_rows = slice(*panel.bounds["test"])
        sigmas = {cid: noise_in_window_units(m, panel.frame[m.features].to_numpy(float),
                                             train)[0] for cid, m in models.items()}  # fmt: skip

        # 1. denoiser variants
        methods = [dict(m) for m in to_dict(cfg.methods)]
        den = {}
        for method in methods:
            log.info("Denoiser %s (%s, %s)", method["name"], method["sampler"], method["mode"])
            gate = panel.bounds["val"] if cfg.gate else None
            den[method["name"]] = _denoise_all(
                models, panel, method, sigmas, cfg.seed, gate, float(cfg.gate_margin_db)
            )
            d = den[method["name"]]
            log.info("  %.1fs, %d/%d features denoised", d["seconds"], d["n_denoised"], len(names))
        causal = [m["name"] for m in methods if m["mode"] == "causal"]
        two_sided = [m["name"] for m in methods if m["mode"] != "causal"]

        # 2. leakage checks (fail loudly)
        checks = []
        for name in causal:
            method = next(m for m in methods if m["name"] == name)
            if name in (cfg.leakage.perturbation_methods or []):
                for cid, m in models.items():
                    block = panel.frame[m.features].to_numpy(dtype=np.float64)

                    # what was fitted (σ, t, which features) stays fixed, as in deployment
                    fitted = den[name]["fitted"][cid]

                    def fn(x, m=m, cid=cid, method=method, fitted=fitted):
                        return denoise_cluster(
                            m, x, train=train, mode="causal", sampler=method["sampler"],
                            sampler_kw={**(method.get("sampler_kw") or {}),
                                        "t": fitted["t_list"]},
                            sigma=sigmas[cid], seed=cfg.seed,
                            denoise_features=fitted["choice"],
                        ).mean  # fmt: skip

                    leakage.check_future_perturbation(fn, block, cuts=[T // 2, (3 * T) // 4])
                cuts = f"{T // 2}, {(3 * T) // 4}"
                checks.append(
                    f"future perturbation ({name}, cuts at rows {cuts}): outputs on earlier "
                    "rows bit-identical"
                )
            tab = leakage.check_lookahead(
                raw, _stack(den[name]["mean"], names), names=names,
                threshold=float(cfg.leakage.threshold),
            )  # fmt: skip
            checks.append(
                f"look-ahead ({name}): max |t| {np.nanmax(tab['max_abs_t']):.2f} over "
                f"{len(names)} features (threshold {cfg.leakage.threshold})"
            )
        log.info("Leakage checks passed: %d", len(checks))

        # 3. baselines
        t0 = time.perf_counter()
        bl = apply_baselines(raw, train, names=list(cfg.baselines))
        log.info("Baselines (%s): %.1fs", ", ".join(cfg.baselines), time.perf_counter() - t0)
        causal_out = {"raw": raw, **{n: _stack(den[n]["mean"], names) for n in causal}}
        causal_out.update({f"{b} (causal)": bl[b].causal for b in bl})
        two_out = {n: _stack(den[n]["mean"], names) for n in two_sided}
        two_out.update({f"{b} (two-sided)": bl[b].two_sided for b in bl if bl[b].two_sided
                        is not None})  # fmt: skip
        for b in bl:
            tab = leakage.check_lookahead(raw, bl[b].causal, names=names, raise_on_fail=False)
            if tab["flagged"].any():
                log.warning("baseline %s trips the look-ahead check (max |t| %.1f)", b,
                            np.nanmax(tab["max_abs_t"]))  # fmt: skip

        # 4. quality against known clean values
        truth = load_truth(panel.source)
        tables: dict[str, pd.DataFrame] = {}
        best_baseline = cfg.downstream.baseline_without_truth
        if truth is not None:
            clean_frame = pd.read_csv(truth_paths(panel.source)[0])
            clean = clean_frame[names].to_numpy(dtype=np.float64)
            q_causal = quality_table(raw, clean, causal_out, names, eval_rows)
            q_two = quality_table(raw, clean, two_out, names, eval_rows) if two_out else None
            lags = lag_table(clean, causal_out, names, eval_rows)
            family = {f: truth["process"].get(f, "?") for f in names}
            tables.update(snr_causal_by_feature=q_causal, lag_causal=lags)
            tables["snr_causal_by_type"] = grouped(q_causal, ftype)
            tables["snr_causal_by_family"] = grouped(q_causal, family)
            if q_two is not None:
                tables["snr_two_sided_by_type"] = grouped(q_two, ftype)
                tables["snr_two_sided_by_family"] = grouped(q_two, family)
            tables["lag_causal_by_type"] = grouped(lags, ftype)
            # the best causal baseline, chosen on TRAIN rows (no test information)
            q_train = quality_table(raw, clean, {f"{b} (causal)": bl[b].causal for b in bl},
                                    names, slice(*train))  # fmt: skip
            best_baseline = str(q_train.mean().idxmax()).replace(" (causal)", "")
            bl_cols = [c for c in q_causal.columns if c.endswith("(causal)")]
            by_type = tables["snr_causal_by_type"]
            by_type["best causal baseline"] = best_column(by_type, bl_cols)
        # 5. downstream forecasting
        ds_table = None
        curves: dict[str, np.ndarray] = {}
        targets = set(panel.targets)
        if cfg.downstream.enabled and {"forward_returns", "risk_free_rate"} <= targets:
            from mamba_denoiser.evaluation.downstream import (
                position_from_prediction,
                run_downstream,
            )

            base_cols = [c for c in panel.frame.columns if c != panel.id_col and c not in targets]
            fwd = panel.frame["forward_returns"].to_numpy(dtype=np.float64)
            rf = panel.frame["risk_free_rate"].to_numpy(dtype=np.float64)
            sets = {
                "raw": raw,
                f"denoised ({cfg.downstream.denoised_method})": _stack(
                    den[cfg.downstream.denoised_method]["mean"], names
                ),
                f"baseline ({best_baseline}, causal)": bl[best_baseline].causal,
            }
            frames = []
            # every test block after the train split (+ embargo): features out of sample
            test_size = (T - panel.bounds["val"][0]) // int(cfg.downstream.n_splits)
            for set_name, arr in sets.items():
                feats = panel.frame[base_cols].copy()
                feats[names] = arr
                res = run_downstream(
                    feats, fwd, rf, n_splits=int(cfg.downstream.n_splits),
                    embargo=int(panel.split.embargo), models=list(cfg.downstream.models),
                    k=float(cfg.downstream.k), seed=int(cfg.seed),
                    target_columns=list(panel.targets), test_size=test_size,
                )  # fmt: skip
                t = res.metrics.copy()
                t.insert(0, "features", set_name)
                frames.append(t.reset_index())
                pred = res.predictions.predictions[cfg.downstream.models[0]].to_numpy()
                pos = position_from_prediction(pred, k=float(cfg.downstream.k))
                curves[f"{set_name} ({cfg.downstream.models[0]})"] = rf * (1 - pos) + pos * fwd - rf
            curves["market"] = np.where(np.isfinite(pos), fwd - rf, np.nan)
            # the market row is the same for every feature set: keep it once, last
            market = frames[0][frames[0]["model"] == "market"].assign(features="-")
            ds_table = pd.concat(
                [f[f["model"] != "market"] for f in frames] + [market], ignore_index=True
            )
            tables["downstream"] = ds_table

        # report
        for key, tab in tables.items():
            atomic_write_csv(out / "tables" / f"{key}.csv", tab.reset_index())
        report = _report(cfg, panel, ck_dir, methods, checks, tables, best_baseline, truth,
                         time.perf_counter() - t_start)  # fmt: skip
        if cfg.plots:
            _plots(out, panel, names, ftype, raw, den, tables, curves, truth, methods)
        atomic_write_text(out / "report.md", report)
    _print_key(tables)
    print(f"report: {out / 'report.md'}")
    return {"tables": tables, "checks": checks}


def _report(cfg, panel, ck_dir, methods, checks, tables, best_baseline, truth, seconds) -> str:
    from mamba_denoiser.evaluation.report import to_markdown

    lines = [
        "# Evaluation report",
        "",
        f"Data: `{panel.source}` (sha256 {str(panel.sha256)[:12]}…, {panel.n_rows} rows; "
        f"train rows {list(panel.bounds['train'])}, validation {list(panel.bounds['val'])}; "
        f"quality scored on the test rows {list(panel.bounds['test'])}).",
        f"Checkpoints: `{ck_dir}`. Wall time {seconds:.0f}s.",
        "",
        "Denoiser variants: "
        + "; ".join(
            f"`{m['name']}` = {m['sampler']}, {m['mode']}"
            + (" (uses FUTURE rows)" if m["mode"] != "causal" else "")
            for m in methods
        ),  # fmt: skip
        "",
        "## Leakage checks (run every time; a failure stops the run)",
        "",
        *[f"- passed: {c}" for c in checks],
        "",
    ]
    if truth is None:
        lines += ["No clean values are known for this data: quality tables are skipped.", ""]
    else:
        lines += [
            "## Quality against the known clean signal",
            "",
            "SNR gain in dB, 10·log10(MSE(raw)/MSE(output)) against the clean values, mean "
            "over the features of each group; 0 = leaving the data alone, higher is better. "
            f"The best causal baseline overall, chosen on train rows: `{best_baseline}`.",
            "",
            "### Causal (row t uses rows <= t), by cluster type",
            "",
            to_markdown(tables["snr_causal_by_type"], index_name="cluster type"),
            "",
            "### Causal, by planted family",
            "",
            to_markdown(tables["snr_causal_by_family"], index_name="family"),
            "",
        ]
        if "snr_two_sided_by_type" in tables:
            lines += [
                "### Two-sided (uses future rows; analysis only), by cluster type",
                "",
                to_markdown(tables["snr_two_sided_by_type"], index_name="cluster type"),
                "",
                "### Two-sided, by planted family",
                "",
                to_markdown(tables["snr_two_sided_by_family"], index_name="family"),
                "",
            ]
        lines += [
            "### Lag of causal outputs behind the clean signal (rows; mean by type)",
            "",
            to_markdown(tables["lag_causal_by_type"], digits=1, index_name="cluster type"),
            "",
            "![SNR gain by type](plots/snr_causal_by_type.png)",
            "",
        ]
    if "downstream" in tables:
        d = tables["downstream"].set_index("features")
        keep = [c for c in ("model", "ic_mean", "ic_t", "rank_ic_mean", "rank_ic_t", "r2",
                            "hit_rate", "sharpe", "adjusted_sharpe") if c in d.columns]  # fmt: skip
        lines += [
            "## Forecasting the raw forward return (purged walk-forward, out of sample)",
            "",
            f"{cfg.downstream.n_splits} expanding folds, all test blocks after the train split, "
            f"embargo {panel.split.embargo} rows; "
            "positions in [0, 2] from past predictions only; targets never denoised, never "
            "features.",
            "",
            to_markdown(d[keep], digits=4, index_name="features"),
            "",
            "![cumulative returns](plots/cumulative_returns.png)",
            "",
        ]
    lines += ["Example features: `plots/examples.png`.", ""]
    return "\n".join(lines)


def _print_key(tables: dict) -> None:
    from rich.table import Table

    from mamba_denoiser.io import console

    for key, title in (("snr_causal_by_type", "Causal SNR gain (dB) by cluster type"),
                       ("downstream", "Out-of-sample forecasting")):  # fmt: skip
        if key not in tables:
            continue
        tab = tables[key]
        t = Table(title=title)
        frame = tab.reset_index() if key != "downstream" else tab
        for c in frame.columns:
            t.add_column(str(c))
        for _, row in frame.iterrows():
            t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
        console().print(t)


def _plots(out: Path, panel, names, ftype, raw, den, tables, curves, truth, methods) -> None:
    from mamba_denoiser.data.source import truth_paths
    from mamba_denoiser.plots import (
        plot_cumulative_returns,
        plot_denoised_examples,
        plot_grouped_bars,
    )

    ids = panel.frame[panel.id_col].to_numpy()
    if "snr_causal_by_type" in tables:
        t = tables["snr_causal_by_type"].drop(columns=["features", "best causal baseline"],
                                              errors="ignore")  # fmt: skip
        plot_grouped_bars(
            t,
            out / "plots" / "snr_causal_by_type.png",
            title="Causal SNR gain by cluster type (rows after the train split)",
        )
    if curves:
        plot_cumulative_returns(ids, curves, out / "plots" / "cumulative_returns.png",
                                title="Strategy excess return, out of sample")  # fmt: skip
    first = methods[0]["name"]
    picks = list(dict.fromkeys(next(f for f in names if ftype[f] == t)
                               for t in dict.fromkeys(ftype.values())))  # fmt: skip
    clean = None
    if truth is not None:
        cf = pd.read_csv(truth_paths(panel.source)[0])
        clean = {f: cf[f].to_numpy() for f in picks}
    d = den[first]
    plot_denoised_examples(
        ids, {f: raw[:, names.index(f)] for f in picks}, {f: d["mean"][f] for f in picks},
        out / "plots" / "examples.png",
        lower={f: d["lower"][f] for f in picks} if d["lower"] else None,
        upper={f: d["upper"][f] for f in picks} if d["upper"] else None,
        clean=clean, title=f"{first}: one feature per cluster type, last 400 rows",
    )  # fmt: skip


__all__ = ["run_evaluate", "ConfigError"]
