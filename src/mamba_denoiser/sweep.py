"""After a multirun: one table of every job's summary.json (a Hydra callback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

SUMMARY_FILE = "summary.json"
COLUMNS = (
    "cluster",
    "type",
    "features",
    "epochs",
    "val noise MSE init -> best (iid baseline)",
    "vs baseline",
    "train/val gap z -> window",
    "status",
    "best checkpoint",
)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _ckpt(r: dict[str, Any], sweep_dir: Path | None) -> str:
    """Checkpoint path relative to the sweep directory: short enough for a table."""
    path = Path(r.get("best_checkpoint") or "")
    if sweep_dir is not None:
        try:
            return str(path.relative_to(Path(sweep_dir).resolve()))
        except ValueError:
            pass
    return str(path)


def _mse(r: dict[str, Any]) -> str:
    return (
        f"{_num(r.get('init_val_noise_mse'))} -> {_num(r.get('best_val_noise_mse'))} "
        f"({_num(r.get('val_noise_mse_iid_baseline'))})"
    )


def _vs_baseline(r: dict[str, Any]) -> str:
    """Best val noise MSE relative to the i.i.d. reference: -30% = 30 % below it."""
    best, ref = r.get("best_val_noise_mse"), r.get("val_noise_mse_iid_baseline")
    return "-" if best is None or not ref else f"{100 * (best / ref - 1):+.0f}%"


def _gap(r: dict[str, Any]) -> str:
    """Median/max over features of |mean_val - mean_train| / sd_train, z-score -> window."""
    g = r.get("train_val_gap") or {}
    if not g:
        return "-"
    z, w = g.get("zscore", {}), g.get("window", {})
    return (
        f"{z.get('median', 0):.2f}/{z.get('max', 0):.2f} -> "
        f"{w.get('median', 0):.2f}/{w.get('max', 0):.2f}"
    )


def _row(r: dict[str, Any], sweep_dir: Path | None) -> list[str]:
    return [
        f"c{r.get('cluster_id', '?')}",
        str(r.get("type", "?")),
        str(r.get("n_features", "?")),
        str(r.get("epochs", "-")),
        _mse(r),
        _vs_baseline(r),
        _gap(r),
        str(r.get("status", "ok")) + (f": {r['error'][:60]}" if r.get("error") else ""),
        _ckpt(r, sweep_dir),
    ]


def collect_summaries(sweep_dir: str | Path) -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob(f"*/{SUMMARY_FILE}"))]
    return sorted(rows, key=lambda r: (r.get("cluster_id", 0), r.get("job", "")))


def write_summary_table(rows: list[dict[str, Any]], sweep_dir: str | Path) -> Path:
    from mamba_denoiser.io import atomic_write_text

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_row(r, Path(sweep_dir))) + " |")
    return atomic_write_text(Path(sweep_dir) / "summary.md", "\n".join(lines) + "\n")


def summary_rich_table(rows: list[dict[str, Any]], sweep_dir: str | Path | None = None):
    from rich.table import Table

    table = Table(title=f"Training sweep: {len(rows)} cluster(s)")
    for c in COLUMNS:
        table.add_column(c)
    for r in rows:
        table.add_row(*_row(r, Path(sweep_dir) if sweep_dir else None))
    return table


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_summaries(sweep_dir)
        if not rows:
            return
        from mamba_denoiser.io import console

        path = write_summary_table(rows, sweep_dir)
        console().print(summary_rich_table(rows, sweep_dir))
        print(f"summary: {path}")
