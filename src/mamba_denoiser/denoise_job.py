"""denoise.py's work: every cluster's checkpoint over the panel -> a denoised CSV.

Contract (docs/design.md, "Denoised CSV"): same columns, order and rows as the input;
only the cluster features change; NaN stays NaN; the id, targets and passthrough columns
are byte-identical (cells are copied as text, never re-formatted); written atomically,
and only after every cluster has been computed, so a failure leaves no output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
    data_path: str | Path,
    out_path: str | Path,
    id_col: str,
    panel_ids: np.ndarray,
    replacements: dict[str, tuple[np.ndarray, np.ndarray]],  # col -> (values, changed)
) -> None:
    """The input file with only the ``changed`` cells of the given columns replaced (values
    in panel row order, i.e. sorted by id), as CSV or Parquet by ``out_path``'s suffix.
    CSV to CSV copies the input cell by cell as text (untouched cells keep their exact
    text); from or to Parquet the input is read as a table, untouched cells keep their
    values (a replaced column becomes float64)."""
    from mamba_denoiser.data.panel import is_parquet

    if not is_parquet(data_path) and not is_parquet(out_path):
        _write_text_like_input(data_path, out_path, id_col, panel_ids, replacements)
    else:
        _write_table_like_input(data_path, out_path, id_col, panel_ids, replacements)


def _row_order(ids, panel_ids: np.ndarray, data_path) -> np.ndarray:
    """The panel row of each input row (the panel is sorted by id)."""
    import pandas as pd

    order = pd.Index(panel_ids).get_indexer(ids)
    if (order < 0).any():  # text ids (e.g. dates) or another dtype: match them as text
        text = pd.Series(np.asarray(ids)).astype(str).str.strip()
        order = pd.Index(pd.Series(panel_ids).astype(str).str.strip()).get_indexer(text)
    if (order < 0).any():
        raise ConfigError(f"{data_path}: could not match its rows to the panel's ids")
    return order


def _write_text_like_input(data_path, out_path, id_col, panel_ids, replacements) -> None:
    import pandas as pd

    from mamba_denoiser.io import atomic_write_csv

    text = pd.read_csv(data_path, dtype=str, keep_default_na=False)
    header = {str(c).strip(): c for c in text.columns}  # panel.py strips header names
    id_text = text[header[id_col]].str.strip()
    try:
        ids = pd.to_numeric(id_text).to_numpy()
    except (ValueError, TypeError):  # text ids (e.g. dates): matched as text
        ids = id_text.to_numpy()
    order = _row_order(ids, panel_ids, data_path)
    for col, (values, changed) in replacements.items():
        v, c = values[order], changed[order]
        cells = text[header[col]].to_numpy(dtype=object).copy()
        cells[c] = np.char.mod("%.10g", v[c])
        text[header[col]] = cells
    atomic_write_csv(out_path, text)


def _write_table_like_input(data_path, out_path, id_col, panel_ids, replacements) -> None:
    from mamba_denoiser.data.panel import is_parquet, read_table
    from mamba_denoiser.io import atomic_write, atomic_write_csv

    frame = read_table(data_path)
    header = {str(c).strip(): c for c in frame.columns}
    order = _row_order(frame[header[id_col]].to_numpy(), panel_ids, data_path)
    for col, (values, changed) in replacements.items():
        v, c = values[order], changed[order]
        if c.any():
            cells = frame[header[col]].to_numpy(dtype=np.float64).copy()
            cells[c] = v[c]
            frame[header[col]] = cells
    if is_parquet(out_path):
        atomic_write(out_path, lambda p: frame.to_parquet(p, index=False))
    else:
        atomic_write_csv(out_path, frame)


def output_paths(cfg_output, out_dir: Path, mode: str, fmt, bands: bool) -> dict[str, Path]:
    """denoised (and lower / upper with ``bands``) paths. ``output_format``: csv, parquet,
    or null: the suffix of ``output`` (.parquet / .pq: Parquet), else CSV."""
    fmt = None if fmt is None else str(fmt).lower()
    if fmt not in (None, "csv", "parquet"):
        raise ConfigError(f"output_format={fmt}: choose csv or parquet (or null: by suffix)")
    suffix = {"csv": ".csv", "parquet": ".parquet"}.get(fmt)
    if cfg_output:
        target = Path(cfg_output)
        if suffix and target.suffix.lower() not in (
            (".csv",) if fmt == "csv" else (".parquet", ".pq")
        ):
            raise ConfigError(
                f"output={target} with output_format={fmt}: give the file a {suffix} suffix, "
                "or leave output_format=null to follow the suffix"
            )
    else:
        stem = "denoised" if mode == "causal" else "denoised_offline"
        target = out_dir / f"{stem}{suffix or '.csv'}"
    outputs = {"denoised": target}
    if bands:
        outputs["lower"] = target.with_name(target.stem + "_lower" + target.suffix)
        outputs["upper"] = target.with_name(target.stem + "_upper" + target.suffix)
    return outputs


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


@dataclass
class _Served:
    """What the run served: the panel, its models and the bounds the decisions read, the
    result, and where the models came from (a sweep's checkpoints, or a bundle)."""

    panel: Any
    models: dict[int, Any]
    bounds: dict[str, tuple[int, int]]
    res: Any  # inference.panel.PanelResult
    checkpoints: str
    clusters_file: str
    left_raw: list[str]
    sampler: dict[str, Any]
    bundle: str | None = None


def run_denoise(cfg: DictConfig) -> dict[str, Any]:
    from mamba_denoiser.data.source import load_truth
    from mamba_denoiser.inference import MODES
    from mamba_denoiser.io import atomic_write_json, atomic_write_text, console

    out = output_dir(cfg)
    with fail_cleanly(out):
        check(cfg, "denoise")  # typed configs: a wrong value fails before any data are read
        if cfg.mode not in MODES:
            raise ConfigError(f"mode={cfg.mode}: choose one of {list(MODES)}")
        outputs = output_paths(cfg.output, out, cfg.mode, cfg.get("output_format"), bool(cfg.bands))
        target = outputs["denoised"]
        job = _from_bundle(cfg) if cfg.get("bundle") else _from_sweep(cfg)
        panel, models, res = job.panel, job.models, job.res
        results = {
            cid: (models[cid], panel.frame[models[cid].features].to_numpy(float), r)
            for cid, r in res.clusters.items()
        }
        _add_diagnostics(results, job.bounds)

        ids = panel.frame[panel.id_col].to_numpy()
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
            "sampler": job.sampler,
            "data": {"path": panel.source, "sha256": panel.sha256},
            "checkpoints": job.checkpoints,
            **({"bundle": job.bundle} if job.bundle else {}),
            "clusters_file": job.clusters_file,
            "outputs": {k: str(v) for k, v in outputs.items()},
            "left_raw": job.left_raw,
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


def _from_sweep(cfg: DictConfig) -> _Served:
    """A training sweep's checkpoints: every decision fitted here, on the train and
    validation rows (stage.load_trained finds and checks them)."""
    from mamba_denoiser.inference.panel import denoise_panel

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
    return _Served(
        panel,
        models,
        panel.bounds,
        res,
        str(ck_dir),
        str(clusters.path),
        [c.name for c in clusters.clusters if c.id not in models],
        {"name": name, **sampler},
    )


# options a bundle holds: given with bundle=FOLDER they would be silently ignored
HELD_BY_BUNDLE = (
    "checkpoints",
    "clusters",
    "allow_partial",
    "sigma",
    "gate",
    "gate_margin_db",
    "candidates",
    "sampler",
    "seed",
)


def _from_bundle(cfg: DictConfig) -> _Served:
    """bundle=FOLDER (a ``Denoiser.save`` folder; not ``model=``, the network presets'
    config group of train.py): its checkpoints and held decisions (σ,
    whiteness, t grid, the fits, the gate's choices) replayed over the data, nothing
    refitted: the values ``Denoiser.load(BUNDLE).transform`` gives. The rows up to the end
    of validation must be the ones the decisions were fitted on (the bundle's digest); rows
    after them are served like any new rows."""
    from mamba_denoiser.artifacts import pinned_split
    from mamba_denoiser.bundle import load_bundle
    from mamba_denoiser.classical import digest
    from mamba_denoiser.data.source import panel_from_config
    from mamba_denoiser.inference.panel import denoise_panel
    from mamba_denoiser.stage import command_line_overrides, remembered_data

    folder = Path(cfg.bundle)
    given = sorted(
        {o.lstrip("+~").split("=")[0].split(".")[0] for o in command_line_overrides()}
        & set(HELD_BY_BUNDLE)
    )
    if given:
        raise ConfigError(
            f"bundle={folder} holds its models and decisions; drop {', '.join(given)} (or "
            "denoise with checkpoints=SWEEP to fit the decisions anew)"
        )
    if cfg.mode != "causal":
        raise ConfigError(f"bundle={folder}: a bundle serves causally; drop mode={cfg.mode}")
    manifest, models, decisions = load_bundle(folder)
    spec, data = manifest["denoiser"], manifest["data"]
    first = next(iter(models.values()))
    options = remembered_data(cfg, first.source.get("data_config"), str(folder))
    panel = panel_from_config(options)
    pinned = pinned_split(options, first.source.get("split") or {}, panel)
    if pinned is not None:
        panel = panel_from_config(pinned)
    bounds = {k: (int(v[0]), int(v[1])) for k, v in data["split"].items()}
    features = list(spec["features"])
    missing = [f for f in features if f not in panel.frame.columns]
    if missing:
        raise ConfigError(f"{panel.source}: no columns {missing[:5]}, which {folder} denoises")
    stop = bounds["val"][1]
    x = panel.frame[features].to_numpy(dtype=np.float64)
    if len(x) < stop or digest(x[:stop]) != data["fitted_rows_digest"]:
        raise ConfigError(
            f"{panel.source}: its first {stop} rows (train and validation) are not the rows "
            f"the decisions of {folder} were fitted on; give that history (new rows may "
            "follow it), or fit a new Denoiser"
        )
    res = denoise_panel(
        models,
        panel.frame,
        bounds,
        gate=False,
        replay=decisions,
        candidates=spec.get("candidates"),
        gate_margin_db=spec.get("gate_margin_db", 0.1),
        batch_windows=cfg.batch_windows,
        bands=cfg.bands,
    )
    return _Served(
        panel,
        models,
        bounds,
        res,
        str(folder / "checkpoints"),
        str(folder / "clusters.json"),
        [],
        {"name": "posterior_mean", "held": "bundle decisions"},
        bundle=str(folder),
    )


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
