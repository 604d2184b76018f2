"""denoise.py's work: every cluster's checkpoint over the panel -> a denoised CSV.

Contract (docs/design.md, "Denoised CSV"): same columns, order and rows as the input;
only the cluster features change; NaN stays NaN; the id, targets and passthrough columns
are byte-identical (cells are copied as text, never re-formatted); written atomically,
and only after every cluster has been computed, so a failure leaves no output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mamba_denoiser.cli import fail_cleanly
from mamba_denoiser.config_schema import check
from mamba_denoiser.errors import ConfigError
from mamba_denoiser.stage import load_trained, output_dir, prefit, to_dict

log = logging.getLogger("mamba_denoiser")


# ---- writing the panel as text ----------------------------------------------------------


def write_like_input(
    csv_path: str | Path,
    out_path: str | Path,
    id_col: str,
    panel_ids: np.ndarray,
    replacements: dict[str, tuple[np.ndarray, np.ndarray]],  # col -> (values, changed)
) -> None:
    """Copy the input CSV cell by cell as text, replacing only `changed` cells of the
    given columns (values in panel row order, i.e. sorted by id)."""
    import pandas as pd

    from mamba_denoiser.io import atomic_write_csv

    text = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    header = {str(c).strip(): c for c in text.columns}  # panel.py strips header names
    id_text = text[header[id_col]].str.strip()
    try:
        order = pd.Index(panel_ids).get_indexer(pd.to_numeric(id_text).to_numpy())
    except (ValueError, TypeError):  # text ids (e.g. dates): match them as text
        order = pd.Index(pd.Series(panel_ids).astype(str).str.strip()).get_indexer(id_text)
    if (order < 0).any():
        raise ConfigError(f"{csv_path}: could not match its rows to the panel's ids")
    for col, (values, changed) in replacements.items():
        v, c = values[order], changed[order]
        cells = text[header[col]].to_numpy(dtype=object).copy()
        cells[c] = np.char.mod("%.10g", v[c])
        text[header[col]] = cells
    atomic_write_csv(out_path, text)


# ---- the run ----------------------------------------------------------------------------


def _sigma_overrides(given: Any, models: dict) -> dict[str, float]:
    """sigma={feature: std}: every key a denoised feature, every value finite and >= 0;
    None (sigma=null) is {}; anything else that is not a mapping is a ConfigError."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ConfigError(
            f"sigma={given!r}: give a mapping feature -> noise std in native units, quoted "
            "for the shell, e.g. 'sigma={E1: 0.5}'; or sigma=null to estimate every σ"
        )
    known = {f for m in models.values() for f in m.features}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(
            f"sigma= names {unknown}, which no cluster denoises; use feature names from "
            "clusters.json"
        )
    out = {}
    for f, v in given.items():
        try:
            out[f] = float(v)
        except (TypeError, ValueError):
            out[f] = float("nan")
        if not np.isfinite(out[f]) or out[f] < 0:
            raise ConfigError(
                f"sigma.{f}={v!r}: give the noise std as a finite number >= 0 (native units), "
                f"e.g. 'sigma={{{f}: 0.5}}'"
            )
    return out


def run_denoise(cfg: DictConfig) -> dict[str, Any]:
    from mamba_denoiser.data.source import load_truth
    from mamba_denoiser.inference import MODES
    from mamba_denoiser.inference.panel import denoise_panel
    from mamba_denoiser.io import atomic_write_json, atomic_write_text, console

    out = output_dir(cfg)
    with fail_cleanly(out):
        check(cfg, "denoise")  # typed configs: a wrong value fails before any data are read
        if cfg.mode not in MODES:
            raise ConfigError(f"mode={cfg.mode}: choose one of {list(MODES)}")
        panel, models, clusters, ck_dir = load_trained(cfg)
        prefit(cfg, panel, models)
        if cfg.mode == "offline":
            log.warning("mode=offline: two-sided windows, values use FUTURE rows (analysis only)")
        sampler = to_dict(cfg.sampler)
        name = sampler.pop("name")
        sigma_cfg = _sigma_overrides(to_dict(cfg.sigma), models)
        try:
            res = denoise_panel(
                models,
                panel.frame,
                panel.bounds,
                sigma=sigma_cfg,
                gate=bool(cfg.gate),
                mode=cfg.mode,
                sampler=name,
                sampler_kw=sampler,
                candidates=to_dict(cfg.candidates),
                seed=cfg.seed,
                batch_windows=cfg.batch_windows,
                bands=cfg.bands,
                gate_margin_db=float(cfg.gate_margin_db),
            )
        except ValueError as e:  # option values the library refuses (candidates, guidance)
            raise ConfigError(str(e)) from None
        results = {
            cid: (models[cid], panel.frame[models[cid].features].to_numpy(float), r)
            for cid, r in res.clusters.items()
        }
        _add_diagnostics(results, panel.bounds)

        default_name = "denoised.csv" if cfg.mode == "causal" else "denoised_offline.csv"
        target = Path(cfg.output) if cfg.output else out / default_name
        outputs = {"denoised": target}
        if cfg.bands:
            outputs["lower"] = target.with_name(target.stem + "_lower.csv")
            outputs["upper"] = target.with_name(target.stem + "_upper.csv")
        ids = panel.frame[panel.id_col].to_numpy()
        raw_left = [c.name for c in clusters.clusters if c.id not in models]
        for kind, path in outputs.items():
            repl = {}
            for m, raw, r in results.values():
                arr = {"denoised": r.mean, "lower": r.lower, "upper": r.upper}[kind]
                for i, f in enumerate(m.features):
                    changed = ~np.isnan(raw[:, i]) & (arr[:, i] != raw[:, i])
                    repl[f] = (arr[:, i], changed)
            write_like_input(panel.source, path, panel.id_col, ids, repl)
        info = {
            "mode": cfg.mode,
            "uses_future_rows": cfg.mode == "offline",
            "sampler": {"name": name, **sampler},
            "data": {"path": panel.source, "sha256": panel.sha256},
            "checkpoints": str(ck_dir),
            "clusters_file": str(clusters.path),
            "outputs": {k: str(v) for k, v in outputs.items()},
            "left_raw": raw_left,
            "n_features": len(res.features),
            "n_changed": res.n_changed,
            "clusters": [r.info for _, _, r in results.values()],
        }
        atomic_write_json(out / "denoise_summary.json", info)
        atomic_write_text(out / "denoise_summary.md", _table_md(info))
        if cfg.plots:
            _plots(out, panel, results, load_truth(panel.source), cfg.bands)
    console().print(_table_rich(info))
    print(f"{info['n_changed']} of {info['n_features']} features changed")
    print(
        f"denoised panel: {target}"
        + ("  (offline: uses future rows)" if info["uses_future_rows"] else "")
    )
    return info


def _add_diagnostics(results: dict, bounds: dict) -> None:
    """Per changed feature, what was removed (evaluation/diagnostics.py), on the rows after
    the train split: the ones no estimator was fitted on."""
    from mamba_denoiser.evaluation.diagnostics import removed_part

    rows, train = slice(bounds["val"][0], None), slice(*bounds["train"])
    for m, raw, r in results.values():
        for i, f in enumerate(m.features):
            v = r.info["features"][f]
            v.update(removed_part(raw[:, i], r.mean[:, i], rows, sigma=v["sigma"], train=train))


_COLS = ("cluster", "type", "model", "mode", "sampler", "t", "changed / features", "seconds")


def _cells(c: dict) -> list[str]:
    feats = c["features"]
    ts = ",".join(map(str, c["t"])) or "-"
    return [
        c["cluster"],
        c["type"],
        c["direction"],
        c["mode"],
        c["sampler"],
        ts,
        f"{sum(v['denoised'] for v in feats.values())}/{len(feats)}",
        f"{c['seconds']:.1f}",
    ]


def _num(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


_REASON_KINDS = (
    ("y is white", "white y on the train split (noise cannot be told from signal)"),
    ("σ not usable", "no usable σ"),
    (
        "validation rows",
        "no candidate's estimated gain on the validation rows beat raw by the margin",
    ),
)


def _reason_counts(info: dict) -> str:
    """'13 white y ..., 8 no candidate ...': why the unchanged features stayed raw."""
    counts: dict[str, int] = {}
    for c in info["clusters"]:
        for v in c["features"].values():
            if v["denoised"]:
                continue
            kind = next((k for p, k in _REASON_KINDS if v["reason"].startswith(p)), "other")
            counts[kind] = counts.get(kind, 0) + 1
    return "; ".join(f"{n} feature{'s' * (n != 1)}: {k}" for k, n in counts.items())


_FEATURE_COLS = (
    "feature",
    "cluster",
    "σ",
    "σ source",
    "noise share",
    "Ljung-Box p (y)",
    "chosen",
    "gain (val)",
    "lower bound",
    "score",
    "removed share",
    "removed Ljung-Box p",
    "lag",
    "why not changed",
)


def _feature_cells(c: dict, f: str, v: dict) -> list[str]:
    return [
        f,
        c["cluster"],
        _num(v["sigma"]),
        v["sigma_source"],
        _num(v.get("noise_share"), 2),
        _num(v["ljung_box_p"], 2),
        v["chosen"],
        _num(v["gain_db_val"]),
        _num(v.get("gain_db_val_lower")),
        v.get("score") or "-",
        _num(v.get("removed_share"), 2),
        _num(v.get("removed_ljung_box_p"), 2),
        "-" if v.get("lag_vs_raw") is None else str(v["lag_vs_raw"]),
        v["reason"] or "-",
    ]


def _table_md(info: dict) -> str:
    """denoise_summary.md: what changed, why the rest stayed raw, a row per cluster and
    per feature (tables.markdown_table; that module pulls in pandas: imported here)."""
    from mamba_denoiser.tables import markdown_table

    n, m = info["n_changed"], info["n_features"]
    lines = [
        f"**{n} of {m} features changed** ({info['mode']}"
        + (", uses FUTURE rows" if info["uses_future_rows"] else "")
        + ").",
        "",
    ]
    why = _reason_counts(info)
    if n == 0:
        lines += [f"Nothing was changed: {why or 'no cluster was denoised'}.", ""]
    elif why:
        lines += [f"Left raw: {why}.", ""]
    lines.append(markdown_table(_COLS, [_cells(c) for c in info["clusters"]]))
    lines += [
        "",
        "Per feature: σ in native units and its source; the noise share σ²/Var(y) and the "
        "Ljung-Box p of y on the train split; the estimator chosen, its estimated gain on the "
        "validation rows (dB; '-' where the risk estimate is not positive: never a gain) with "
        "a lower bound (2 block-bootstrap SE), and how it was scored (sure: SURE, exact for "
        "linear candidates; paired: a future-target risk difference against the best linear "
        "candidate, for nonlinear ones). Without clean values, what was removed (y − output, rows "
        "after the train split): its share of Var(y) (close to the noise share if only "
        "noise went), its Ljung-Box p (large if it is white, as noise is) and the output's "
        "lag behind y in rows.",
        "",
        markdown_table(
            _FEATURE_COLS,
            [_feature_cells(c, f, v) for c in info["clusters"] for f, v in c["features"].items()],
        ),
    ]
    if info["left_raw"]:
        lines += ["", f"Clusters left raw (no checkpoint): {', '.join(info['left_raw'])}"]
    return "\n".join(lines) + "\n"


def _table_rich(info: dict, width: int | None = None):
    """The per-cluster table for the console, every cell in full at `width` columns (the
    console's by default): split into several tables when too wide (tables.console_tables)."""
    import pandas as pd
    from rich.console import Group

    from mamba_denoiser.io import console
    from mamba_denoiser.tables import console_tables

    mode = "offline, uses FUTURE rows" if info["uses_future_rows"] else "causal"
    rows = [_cells(c) for c in info["clusters"]]
    t = _COLS.index("t")
    for r in rows:  # "0.1, 0.3": wraps between the t values, never inside one
        r[t] = r[t].replace(",", ", ")
    cells = pd.DataFrame(rows, columns=list(_COLS))
    title = f"Denoised {len(info['clusters'])} cluster(s) ({mode})"
    return Group(*console_tables(cells, width=width or console().width, title=title))


def _plots(out: Path, panel, results, truth, bands: bool) -> None:
    """Per cluster, up to three changed features: observed / denoised / clean (when the
    built-in truth is known), the last 100 rows beside the last 400, and the residual."""
    from mamba_denoiser.plots import plot_denoised_examples

    picked = {
        m.name: [f for f in m.features if res.info["features"][f]["denoised"]][:3]
        for m, _, res in results.values()
    }
    clean = None
    if truth is not None:  # aligned to the panel's rows by id (evaluation/truth.py)
        from mamba_denoiser.evaluation.truth import builtin_truth

        names = [f for fs in picked.values() for f in fs]
        try:
            t = builtin_truth(panel, names) if names else None
        except ValueError as e:  # a clean file that does not match: plot without it
            log.warning("plots without clean values: %s", e)
            t = None
        if t is not None:
            clean = {f: t.clean[:, names.index(f)] for f in t.known}
    ids = panel.frame[panel.id_col].to_numpy()
    for m, raw, res in results.values():
        # only features that were changed: an unchanged one would be three identical lines
        names = picked[m.name]
        if not names:
            continue
        idx = [m.features.index(f) for f in names]
        plot_denoised_examples(
            ids,
            {f: raw[:, i] for f, i in zip(names, idx)},
            {f: res.mean[:, i] for f, i in zip(names, idx)},
            out / "plots" / f"{m.name}.png",
            lower={f: res.lower[:, i] for f, i in zip(names, idx)} if bands else None,
            upper={f: res.upper[:, i] for f, i in zip(names, idx)} if bands else None,
            clean=clean,
            title=f"{m.name} ({m.cluster['type']}): observed vs denoised, last 400 rows "
            "(right: last 100); below: residual",
        )
