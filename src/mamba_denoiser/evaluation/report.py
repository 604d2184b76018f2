"""Tables of evaluate.py and its report.

- The tables: quality against known clean values, lags, the σ plan, the choices, the
  gate's predictions against the test rows (``quality_table`` ... ``choices_table``),
  carried together as a ``ReportTables``.
- ``key_tables``: the ones evaluate.py prints on the console.
- ``evaluation_report``: report.md from the tables and the run's facts.

Rendering (markdown and console tables, cell text) is the package's one table module,
mamba_denoiser/tables.py, shared by every stage.

Pure functions of arrays, frames and plain values (no models, no Hydra), so they are
unit-testable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mamba_denoiser.evaluation.metrics import gain_difference, lag, snr_gain_db
from mamba_denoiser.tables import cell_text, to_markdown

ANCHOR = "best classical (val SURE)"  # the anchor: per feature raw or the best classical filter


def quality_table(
    raw: np.ndarray,  # (T, F) observed
    clean: np.ndarray,  # (T, F) known clean values
    outputs: Mapping[str, np.ndarray],  # method -> (T, F)
    names: Sequence[str],
    rows: slice,
) -> pd.DataFrame:
    """SNR gain (dB) per feature (rows) and method (columns) over `rows`; raw = 0 dB."""
    data = {m: snr_gain_db(raw, out, clean, rows=rows) for m, out in outputs.items()}
    return pd.DataFrame(data, index=list(names))


def lag_table(
    clean: np.ndarray, outputs: Mapping[str, np.ndarray], names: Sequence[str], rows: slice
) -> pd.DataFrame:
    """Lag (rows) of each output behind the clean series: cross-correlation peak of levels."""
    data = {}
    for m, out in outputs.items():
        lags = []
        for j in range(len(names)):
            try:
                lags.append(lag(out[rows, j], clean[rows, j], max_lag=20, on="levels"))
            except ValueError:
                lags.append(np.nan)
        data[m] = lags
    return pd.DataFrame(data, index=list(names))


def grouped(table: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """Mean over the features of each group (e.g. cluster type), plus a feature count."""
    key = pd.Series({f: groups.get(f, "?") for f in table.index})
    out = table.groupby(key).mean()
    out.insert(0, "features", key.value_counts().reindex(out.index).astype(int))
    return out


# ---- evaluate.py's tables of the run ----------------------------------------------------


@dataclass
class ReportTables:
    """evaluate.py's tables, each written to ``tables/<field>.csv``; None where not made
    (the quality tables need clean values, ``downstream`` the targets, the two-sided ones a
    two-sided method). ``gate_by_feature.attrs["method"]`` names the method it describes,
    ``downstream.attrs["scored_rows"]`` the rows its folds score."""

    noise: pd.DataFrame  # σ plan per feature
    choices: pd.DataFrame  # per feature, what each causal method and the anchor chose
    snr_causal_by_feature: pd.DataFrame | None = None
    snr_causal_by_family: pd.DataFrame | None = None
    snr_causal_by_type: pd.DataFrame | None = None
    lag_causal_by_type: pd.DataFrame | None = None
    gate_by_feature: pd.DataFrame | None = None
    mix_vs_best_single: pd.DataFrame | None = None
    snr_two_sided_by_family: pd.DataFrame | None = None
    snr_two_sided_by_type: pd.DataFrame | None = None
    downstream: pd.DataFrame | None = None

    def items(self) -> Iterator[tuple[str, pd.DataFrame]]:
        """(name, table) of the tables made, in field order."""
        for f in fields(self):
            tab = getattr(self, f.name)
            if tab is not None:
                yield f.name, tab


def noise_table(
    noise: Mapping[str, tuple],  # feature -> (σ, source, white, Ljung-Box p)
    names: Sequence[str],
    ftype: Mapping[str, str],
    family: Mapping[str, str] | None,  # planted family per feature; None: no clean values
    true_sd: Mapping[str, float],  # the true noise std where known
) -> pd.DataFrame:
    """Per feature: the σ every method uses, its source, whiteness, and σ / the true std."""
    rows = []
    for f in names:
        s, src, w, p = noise[f]
        rows.append(
            {
                "feature": f,
                "type": ftype[f],
                "family": family.get(f, "") if family is not None else "",
                "sigma": s,
                "source": src,
                "white": w,
                "ljung_box_p": p,
                "sigma / true": s / true_sd[f] if f in true_sd else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index("feature")


def choices_table(den: Mapping[str, Any], anchor, names: Sequence[str], causal) -> pd.DataFrame:
    """Per feature, what each causal method (a PanelResult in `den`) and the anchor chose."""
    data = {}
    for n in causal:
        ch = {
            f: v["chosen"] for r in den[n].clusters.values() for f, v in r.info["features"].items()
        }
        data[f"{n}: chosen"] = [ch[f] for f in names]
    data[f"{ANCHOR}: chosen"] = list(anchor.choice)
    return pd.DataFrame(data, index=names)


def gate_table(res, test_gain: pd.Series, family: Mapping, noise: pd.DataFrame) -> pd.DataFrame:
    """Per feature: what the gate predicted on the validation rows (its gain and lower
    bound; SURE or the paired score, inference/gate.py) next to what happened (SNR gain on
    the test rows against the clean values), so a feature the gate accepted that then lost
    is visible."""
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
                    "score": v.get("score") or "",
                    "predicted gain (val, dB)": _num(v["gain_db_val"], v["denoised"]),
                    "lower bound (val, dB)": _num(v.get("gain_db_val_lower"), v["denoised"]),
                    "test gain (dB)": float(test_gain.get(f, np.nan)),
                }
            )
    return pd.DataFrame(rows).set_index("feature")


# The mix should lose little to the best single candidate of each family: at most
# max(MIX_TOLERANCE_DB, 2 SE) per family and MIX_MEAN_TOLERANCE_DB averaged over families.
MIX_TOLERANCE_DB, MIX_MEAN_TOLERANCE_DB = 0.3, 0.1


def mix_table(
    raw: np.ndarray,  # (T, F) observed, the known features
    clean: np.ndarray,  # (T, F)
    outputs: Mapping[str, np.ndarray],  # causal output name -> (T, F)
    by_family: pd.DataFrame,  # snr_causal_by_family
    family: Mapping[str, str],
    names: Sequence[str],
    mix: str,  # the denoiser's method: its "<mix>: <candidate> alone" outputs are the singles
    rows: slice,
) -> pd.DataFrame | None:
    """Per planted family: the mix against the best single candidate alone (by the test
    rows' family mean), the difference and twice its paired block-bootstrap standard error
    (metrics.gain_difference), and whether it is within max(0.3 dB, 2 SE); a last row
    averages the differences over families (within 0.1 dB). None without single
    candidates."""
    singles = [k for k in outputs if k.startswith(f"{mix}: ") and k.endswith(" alone")]
    if not singles:
        return None
    fam = np.array([family.get(f, "?") for f in names])
    diffs = {
        k: gain_difference(raw, outputs[mix], outputs[k], clean, fam, rows=rows) for k in singles
    }
    out = []
    for g in by_family.index:
        best = max(singles, key=lambda k: by_family.loc[g, k])
        d, se = diffs[best].loc[g, "diff"], diffs[best].loc[g, "se"]
        allowed = -max(MIX_TOLERANCE_DB, 2 * se)
        out.append(
            {
                "family": g,
                "mix (dB)": by_family.loc[g, mix],
                "best single": best.removeprefix(f"{mix}: ").removesuffix(" alone"),
                "best single (dB)": by_family.loc[g, best],
                "mix − best (dB)": d,
                "2 SE (dB)": 2 * se,
                "allowed (dB)": allowed,
                "holds": bool(d >= allowed),
            }
        )
    tab = pd.DataFrame(out).set_index("family")
    tab.attrs["method"] = mix
    mean = tab["mix − best (dB)"].mean()
    tab.loc["mean over families"] = {
        "mix − best (dB)": mean,
        "allowed (dB)": -MIX_MEAN_TOLERANCE_DB,
        "holds": bool(mean >= -MIX_MEAN_TOLERANCE_DB),
    }
    return tab


def run_tables(
    *,
    noise: Mapping[str, tuple],  # feature -> (σ, source, white, Ljung-Box p)
    names: Sequence[str],  # the cluster features, in cluster order
    ftype: Mapping[str, str],  # feature -> cluster type
    truth,  # evaluation.truth.Truth, or None without clean values
    true_sd: Mapping[str, float],  # the true noise std where known
    raw: np.ndarray,  # (T, F) observed
    test_rows: slice,
    den: Mapping[str, Any],  # method -> PanelResult
    anchor,  # evaluation.anchor's best classical per feature
    causal: Sequence[str],  # the causal methods, in order
    causal_out: Mapping[str, np.ndarray],  # causal output name -> (T, F)
    two_out: Mapping[str, np.ndarray],  # two-sided output name -> (T, F)
) -> ReportTables:
    """evaluate.py's tables but the forecasting one: the σ plan and the choices; with known
    clean values, SNR gain and lag on the TEST rows (the gate looked at the validation
    rows), by family and by type, and the gate's predictions against the test rows."""
    family = truth.family if truth is not None else None
    noise_tab = noise_table(noise, names, ftype, family, true_sd)
    tables = ReportTables(noise_tab, choices_table(den, anchor, names, causal))
    if truth is None:
        return tables
    known = truth.known
    idx = [names.index(f) for f in known]
    clean, raw = truth.clean[:, idx], raw[:, idx]

    def sub(d):
        return {k: v[:, idx] for k, v in d.items()}

    q_causal = quality_table(raw, clean, sub(causal_out), known, test_rows)
    tables.snr_causal_by_feature = q_causal
    tables.snr_causal_by_family = grouped(q_causal, truth.family)
    tables.snr_causal_by_type = grouped(q_causal, ftype)
    lags = lag_table(clean, sub(causal_out), known, test_rows)
    tables.lag_causal_by_type = grouped(lags, ftype)
    if causal:
        gate = gate_table(den[causal[0]], q_causal[causal[0]], truth.family, noise_tab)
        gate.attrs["method"] = causal[0]
        tables.gate_by_feature = gate
        tables.mix_vs_best_single = mix_table(
            raw,
            clean,
            sub(causal_out),
            tables.snr_causal_by_family,
            truth.family,
            known,
            causal[0],
            test_rows,
        )
    if two_out:
        q_two = quality_table(raw, clean, sub(two_out), known, test_rows)
        tables.snr_two_sided_by_family = grouped(q_two, truth.family)
        tables.snr_two_sided_by_type = grouped(q_two, ftype)
    return tables


# ---- evaluate.py's key tables on the console ----------------------------------------------


def key_tables(tables: ReportTables) -> list[tuple[str, pd.DataFrame]]:
    """(title, text cells) of the key tables for the console (console_tables): causal SNR
    gain by family, methods as rows; one forecasting table per model, a row per metric and
    a column per feature set (+ market)."""
    shown = []
    if tables.snr_causal_by_family is not None:
        tab = _transpose(tables.snr_causal_by_family)  # methods as rows
        cells = pd.DataFrame(
            {
                col: [cell_text(v, count=idx == "features") for idx, v in tab[col].items()]
                for col in tab.columns
            }
        )
        cells.insert(0, "method", [str(i) for i in tab.index])
        shown.append(("Causal SNR gain (dB) on test rows, by family", cells))
    if tables.downstream is not None:
        d = tables.downstream
        market = d[d["model"] == "market"]
        metrics = [c for c in d.columns if c not in ("features", "model")]
        for model in dict.fromkeys(d.loc[d["model"] != "market", "model"]):
            rows = pd.concat([d[d["model"] == model], market])
            cells = pd.DataFrame(
                {
                    ("market" if r["model"] == "market" else r["features"]): [
                        cell_text(r[c], count=c == "n_rows", digits=4) for c in metrics
                    ]
                    for _, r in rows.iterrows()
                }
            )
            cells.insert(0, "metric", metrics)
            shown.append((f"Out-of-sample forecasting: {model}", cells))
    return shown


# ---- report.md ----------------------------------------------------------------------------

DOWNSTREAM_COLUMNS = (
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


def shown(path, root: str | Path) -> str:
    """A path as the report shows it: relative to the project `root` when under it, so a
    report copied into docs/results/ names no machine's directories."""
    p = Path(str(path))
    try:
        return str(p.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(p)


def evaluation_report(
    panel,
    *,
    checkpoints: str | Path,
    methods: Sequence[Mapping[str, Any]],  # name, sampler, mode
    changed: Mapping[str, int],  # method -> features changed
    checks: Sequence[str],  # the leakage checks passed
    tables: ReportTables,
    truth,  # evaluation.truth.Truth, or None without clean values
    seconds: float,
    downstream_enabled: bool,
    n_splits: int,
    root: str | Path,  # paths under it are shown relative to it
) -> str:
    """report.md: data and split, variants and features changed, passed checks, quality,
    σ plan, forecasting."""
    lines = _report_head(panel, checkpoints, methods, changed, len(tables.noise), seconds, root)
    lines += [
        "## Leakage checks (run every time; a failure stops the run; the look-ahead "
        "statistic goes by the class of the estimator serving each feature, and where its "
        "null is approximate (the nonlinear classes) an excess is reported, not stopped, "
        "for outputs the exact perturbation tests covered)",
        "",
    ]
    lines += [*[f"- passed: {c}" for c in checks], ""]
    if truth is None:
        lines += [
            "No clean values are known for this data (pass truth=PATH to score against "
            "your own): quality tables are skipped.",
            "",
        ]
    else:
        lines += _quality_section(tables, truth, root)
    lines += [
        "## Noise level σ per feature (train rows) and the estimators chosen",
        "",
        "Tables `tables/noise.csv` (σ, its source, Ljung-Box p of y, ratio to the true noise "
        "std where known) and `tables/choices.csv` (per feature, what each causal method and "
        "the anchor chose).",
        "",
        to_markdown(_source_counts(tables.noise), digits=2, index_name="σ source"),
        "",
    ]
    lines += _downstream_section(panel, tables, downstream_enabled, n_splits)
    return "\n".join(lines)


def _report_head(panel, checkpoints, methods, changed, n_feat, seconds, root) -> list[str]:
    b = panel.bounds
    return [
        "# Evaluation report",
        "",
        f"Data: `{shown(panel.source, root)}` (sha256 {str(panel.sha256)[:12]}…, "
        f"{panel.n_rows} rows; train rows {list(b['train'])}, validation {list(b['val'])}, "
        f"test {list(b['test'])}; quality scored on the test rows).",
        f"Checkpoints: `{shown(checkpoints, root)}`. Wall time {seconds:.0f}s.",
        "",
        *[
            f"**{changed[m['name']]} of {n_feat} features changed** by `{m['name']}` "
            f"({m['sampler']}, {m['mode']}"
            + (", uses FUTURE rows" if m["mode"] != "causal" else "")
            + ")."
            for m in methods
        ],
        "",
    ]


def _quality_section(tables, truth, root) -> list[str]:
    lines = [
        "## Quality against the known clean signal",
        "",
        f"Clean values: `{shown(truth.source, root)}` ({len(truth.known)} features). SNR gain "
        "in dB on the test rows, 10·log10(MSE(raw)/MSE(output)) against the clean values, "
        "mean over the features of each group; 0 = leaving the data alone, higher is "
        "better. Every method uses the same σ per feature (table `noise`). "
        f"`{ANCHOR}` is chosen per feature like the denoiser's mix: raw or a classical "
        "causal filter, by SURE on the validation rows, white series left raw. "
        "`<method>: <candidate> alone` applies one candidate to every feature it can serve.",
        "",
        "### Causal (row t uses rows <= t), by planted family",
        "",
        to_markdown(_transpose(tables.snr_causal_by_family), index_name="method"),
        "",
        "### Causal, by cluster type",
        "",
        to_markdown(_transpose(tables.snr_causal_by_type), index_name="method"),
        "",
    ]
    if tables.snr_two_sided_by_family is not None:
        lines += [
            "### Two-sided (uses future rows; analysis only), by planted family",
            "",
            to_markdown(_transpose(tables.snr_two_sided_by_family), index_name="method"),
            "",
        ]
    if tables.gate_by_feature is not None:
        gate = tables.gate_by_feature
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
    if tables.mix_vs_best_single is not None:
        lines += [
            "### The mix against the best single candidate, by planted family "
            f"(`{tables.mix_vs_best_single.attrs.get('method', '')}`)",
            "",
            "Per family the candidate alone with the highest mean test gain; the difference "
            "in mean gain and twice its paired block-bootstrap standard error (50-row "
            "blocks of the test rows, every feature resampled alike). The mix should be "
            f"within max({MIX_TOLERANCE_DB} dB, 2 SE) of it per family, and within "
            f"{MIX_MEAN_TOLERANCE_DB} dB averaged over families.",
            "",
            to_markdown(tables.mix_vs_best_single, digits=2, index_name="family"),
            "",
        ]
    return lines + [
        "### Lag of causal outputs behind the clean signal (rows; mean by type)",
        "",
        to_markdown(_transpose(tables.lag_causal_by_type), digits=1, index_name="method"),
        "",
    ]


def _downstream_section(panel, tables, enabled: bool, n_splits: int) -> list[str]:
    b = panel.bounds
    if tables.downstream is not None:
        d = tables.downstream.set_index("features")
        keep = [c for c in DOWNSTREAM_COLUMNS if c in d.columns]
        lo, hi = tables.downstream.attrs.get("scored_rows", (b["test"][0], panel.n_rows))
        return [
            "## Forecasting the raw forward return (purged walk-forward, out of sample)",
            "",
            f"{n_splits} expanding folds whose scored blocks cover rows "
            f"[{lo}, {hi}), inside the test split (from row {b['test'][0]}): no scored row was "
            "seen by checkpoint selection, the SURE gate or any fit. Embargo "
            f"{panel.split.embargo} rows; positions in [0, 2] from past predictions only; "
            "targets never denoised, never features.",
            "",
            to_markdown(d[keep], digits=4, index_name="features"),
            "",
        ]
    if enabled:
        return [
            "## Forecasting",
            "",
            "Skipped: it needs the targets forward_returns and risk_free_rate (data.targets="
            f"{list(panel.targets)}).",
            "",
        ]
    return []


def _transpose(tab: pd.DataFrame) -> pd.DataFrame:
    """Groups as columns, methods as rows (many methods, few groups: readable)."""
    return tab.T


def _source_counts(noise: pd.DataFrame) -> pd.DataFrame:
    src = noise["source"].str.split(":").str[0]
    return noise.groupby(src).agg(
        features=("sigma", "size"), median_ratio_to_true=("sigma / true", "median")
    )


def _num(v, denoised: bool) -> float:
    return float(v) if denoised and v is not None else np.nan


def _gate_summary(gate: pd.DataFrame) -> str:
    """One paragraph: did the validation-SURE predictions hold on the test rows?"""
    from scipy.stats import spearmanr

    changed = gate[gate["chosen"] != "raw"]
    ch = changed.dropna(subset=["predicted gain (val, dB)", "test gain (dB)"])
    if ch.empty:
        return "No feature was changed, so no prediction to check."
    pred, real = ch["predicted gain (val, dB)"], ch["test gain (dB)"]
    lost = ch[real < -0.1].sort_values("test gain (dB)")
    text = (
        f"On the {len(ch)} changed features with a gain estimate the gate predicted a median "
        f"gain of {pred.median():+.2f} dB (validation rows); the test rows gave a median of "
        f"{real.median():+.2f} dB"
    )
    if len(ch) >= 3:
        rho = spearmanr(pred, real).statistic
        text += f" (Spearman ρ between the two: {rho:.2f})"
    bounded = ch.dropna(subset=["lower bound (val, dB)"])
    if len(bounded):
        held = (bounded["test gain (dB)"] >= bounded["lower bound (val, dB)"]).mean()
        text += f"; {held:.0%} of {len(bounded)} realised at least their lower bound"
    big = int((ch["test gain (dB)"] < -0.3).sum())
    text += f"; {big} of {len(ch)} ({big / len(ch):.0%}) lost more than 0.3 dB against raw"
    n_blind = int(changed["predicted gain (val, dB)"].isna().sum())
    if n_blind:
        text += f"; {n_blind} changed without a gain shown (risk estimate not positive)"
    if lost.empty:
        return text + "; none lost more than 0.1 dB on the test rows."
    worst = ", ".join(
        f"{f} {r['test gain (dB)']:+.2f} dB (predicted {r['predicted gain (val, dB)']:+.2f})"
        for f, r in lost.head(5).iterrows()
    )
    return text + f"; {len(lost)} lost more than 0.1 dB on the test rows: {worst}."
