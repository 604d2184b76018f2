"""denoise.py's work: every cluster's checkpoint over the panel -> a denoised CSV.

Contract (docs/design.md, "Denoised CSV"): same columns, order and rows as the input;
only the cluster features change; NaN stays NaN; the id, targets and passthrough columns
are byte-identical (cells are copied as text, never re-formatted); written atomically,
and only after every cluster has been computed, so a failure leaves no output.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mamba_denoiser.cli import ConfigError, fail_cleanly, output_dir, to_dict

log = logging.getLogger("mamba_denoiser")


# ---- finding the checkpoints ----------------------------------------------------------


def find_latest_sweep(log_dir: str | Path) -> Path:
    """The newest training sweep (outputs/train_multirun/<time>) holding a summary.json."""
    root = Path(log_dir) / "train_multirun"
    sweeps = sorted(p for p in root.glob("*") if any(p.glob("*/summary.json")))
    if not sweeps:
        raise ConfigError(
            f"no training sweep under {root}/. Train first (python train.py "
            "experiment=all_clusters), or pass checkpoints=DIR"
        )
    return sweeps[-1]


def load_models(folder: str | Path) -> dict[int, Any]:
    """cluster id -> ClusterModel, each checkpoint read once: each job's best checkpoint
    (by validation) from its summary.json; folders without summaries: every best*.ckpt
    (else last.ckpt) below. Two checkpoints of one cluster: the newer file wins."""
    from mamba_denoiser.inference import load_cluster_model

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"checkpoints={folder}: not a folder")
    candidates: list[Path] = []
    for s in sorted(folder.rglob("summary.json")):
        doc = json.loads(s.read_text())
        ck = doc.get("best_checkpoint") or doc.get("last_checkpoint")
        if doc.get("status", "ok") == "ok" and ck and Path(ck).is_file():
            candidates.append(Path(ck))
    if not candidates:
        candidates = sorted(folder.rglob("best*.ckpt")) or sorted(folder.rglob("last.ckpt"))
    if not candidates:
        raise ConfigError(f"checkpoints={folder}: no checkpoint (*.ckpt) found below it")
    found: dict[int, Any] = {}
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime):  # newest last, wins
        m = load_cluster_model(path)
        cid = int(m.cluster["id"])
        if cid in found:
            log.warning("two checkpoints for c%d; using the newer: %s", cid, path)
        found[cid] = m
    return dict(sorted(found.items()))


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


def _load_models(cfg: DictConfig, panel) -> tuple[dict[int, Any], Any, Path]:
    from mamba_denoiser.clustering.artifact import load_clusters
    from mamba_denoiser.clustering.validate import check_clusters_against_panel

    ck_dir = Path(cfg.checkpoints) if cfg.checkpoints else find_latest_sweep(cfg.paths.log_dir)
    models = load_models(ck_dir)
    first = next(iter(models.values()))
    clusters_path = cfg.clusters or first.source.get("clusters")
    if not clusters_path:
        raise ConfigError("which clusters.json? pass clusters=PATH")
    clusters = load_clusters(clusters_path)
    check_clusters_against_panel(clusters, panel)
    missing = [c.name for c in clusters.clusters if c.id not in models]
    if missing and not cfg.allow_partial:
        raise ConfigError(
            f"no checkpoint under {ck_dir} for clusters {missing}; train them, or pass "
            "allow_partial=true to leave them raw"
        )
    for c in clusters.clusters:
        m = models.get(c.id)
        if m is None:
            continue
        if list(c.features) != m.features:
            raise ConfigError(
                f"{m.path} was trained on {m.features[:5]}… but {clusters.path} lists "
                f"{list(c.features)[:5]}… for {c.name}; pass the clusters.json it was trained "
                "with (clusters=...)"
            )
        if m.window > panel.n_rows:
            raise ConfigError(f"{m.path}: window {m.window} is longer than the data")
        bounds = (m.source.get("split") or {}).get("bounds")
        if bounds and bounds != {k: list(v) for k, v in panel.bounds.items()}:
            raise ConfigError(
                f"{m.path} was trained with split bounds {bounds}, the data now gives "
                f"{ {k: list(v) for k, v in panel.bounds.items()} }; use the same data.split "
                "and data.window_size as in training"
            )
        sha = m.source.get("sha256")
        if sha and panel.sha256 and sha != panel.sha256:
            warnings.warn(
                f"{m.path} was trained on data with sha256 {sha[:12]}…, this data "
                f"({panel.source}) has {panel.sha256[:12]}…: denoising other data",
                stacklevel=1,
            )
    extra = sorted(set(models) - {c.id for c in clusters.clusters})
    if extra:
        raise ConfigError(f"checkpoints for clusters {extra} are not in {clusters.path}")
    return models, clusters, ck_dir


def _sigma_overrides(given: dict, models: dict) -> dict[str, float]:
    """sigma={feature: std}: every key a denoised feature, every value finite and >= 0."""
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
            raise ConfigError(f"sigma.{f}={v!r}: give the noise std as a number >= 0")
    return out


def run_denoise(cfg: DictConfig) -> dict[str, Any]:
    from mamba_denoiser.data.source import load_truth, panel_from_config
    from mamba_denoiser.inference import MODES
    from mamba_denoiser.inference.panel import denoise_panel
    from mamba_denoiser.io import atomic_write_json, atomic_write_text, console

    out = output_dir(cfg)
    with fail_cleanly(out):
        if cfg.mode not in MODES:
            raise ConfigError(f"mode={cfg.mode}: choose one of {list(MODES)}")
        panel = panel_from_config(to_dict(cfg.data))
        models, clusters, ck_dir = _load_models(cfg, panel)
        if cfg.mode == "offline":
            log.warning("mode=offline: two-sided windows, values use FUTURE rows (analysis only)")
        sampler = to_dict(cfg.sampler)
        name = sampler.pop("name")
        sigma_cfg = _sigma_overrides(to_dict(cfg.sigma) or {}, models)
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

        target = Path(cfg.output) if cfg.output else out / "denoised.csv"
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


def _table_md(info: dict) -> str:
    n, m = info["n_changed"], info["n_features"]
    lines = [
        f"**{n} of {m} features changed** ({info['mode']}"
        + (", uses FUTURE rows" if info["uses_future_rows"] else "")
        + ").",
        "",
    ]
    if n == 0:
        lines += [
            "Nothing was changed: every feature was white, had no usable σ, or no "
            "candidate's SURE gain on the validation rows beat the margin (reasons "
            "below).",
            "",
        ]
    lines += ["| " + " | ".join(_COLS) + " |", "|" + "---|" * len(_COLS)]
    lines += ["| " + " | ".join(_cells(c)) + " |" for c in info["clusters"]]
    lines += [
        "",
        "Per feature (σ in native units and its source; Ljung-Box p of y on the train "
        "split; the estimator chosen and its SURE gain on the validation rows, dB):",
        "",
        "| feature | cluster | σ | σ source | Ljung-Box p | chosen | SURE gain (val) | "
        "why not changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in info["clusters"]:
        for f, v in c["features"].items():
            lines.append(
                f"| {f} | {c['cluster']} | {_num(v['sigma'])} | {v['sigma_source']} | "
                f"{_num(v['ljung_box_p'], 2)} | {v['chosen']} | {_num(v['gain_db_val'])} | "
                f"{v['reason']} |"
            )
    if info["left_raw"]:
        lines += ["", f"Clusters left raw (no checkpoint): {', '.join(info['left_raw'])}"]
    return "\n".join(lines) + "\n"


def _table_rich(info: dict):
    from rich.table import Table

    mode = "offline, uses FUTURE rows" if info["uses_future_rows"] else "causal"
    table = Table(title=f"Denoised {len(info['clusters'])} cluster(s) ({mode})")
    for c in _COLS:
        table.add_column(c)
    for c in info["clusters"]:
        table.add_row(*_cells(c))
    return table


def _plots(out: Path, panel, results, truth, bands: bool) -> None:
    from mamba_denoiser.plots import plot_denoised_examples

    clean = None
    if truth is not None:
        import pandas as pd

        from mamba_denoiser.data.source import truth_paths

        clean_frame = pd.read_csv(truth_paths(panel.source)[0])
        clean = {c: clean_frame[c].to_numpy() for c in clean_frame.columns}
    ids = panel.frame[panel.id_col].to_numpy()
    for m, raw, res in results.values():
        # only features that were changed: an unchanged one would be three identical lines
        names = [f for f in m.features if res.info["features"][f]["denoised"]][:3]
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
            title=f"{m.name} ({m.cluster['type']}): observed vs denoised, last 400 rows",
        )
