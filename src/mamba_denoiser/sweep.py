"""After a multirun: one table of every job's summary.json (a Hydra callback).

Statuses: run_record's ("ok", "worse_than_reference", "failed" with "error",
"interrupted", "preempted"). A job directory without a summary.json (a job killed from outside) is
listed as "no summary.json". After writing
summary.md the callback exits with code 2 (1 for an unexpected error) if any job failed,
naming the failed clusters, so the multirun does not look like a success.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from mamba_denoiser import run_record as rr
from mamba_denoiser.run_record import SUMMARY_FILE

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
    "notes",
)
FAILED = (rr.FAILED, rr.NO_SUMMARY)
BEST_IS_LAST_NOTE = "best at the last epoch: more epochs would likely help"


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
        _name(r),
        str(r.get("type", "?")),
        str(r.get("n_features", "?")),
        str(r.get("epochs", "-")),
        _mse(r),
        _vs_baseline(r),
        _gap(r),
        str(r.get("status", "ok")) + (f": {_one_line(r['error'])[:60]}" if r.get("error") else ""),
        _ckpt(r, sweep_dir) if r.get("best_checkpoint") else "-",
        _notes(r),
    ]


def _notes(r: dict[str, Any]) -> str:
    notes = []
    if r.get("best_is_last_epoch"):
        notes.append(BEST_IS_LAST_NOTE)
    if r.get("status") == rr.WORSE_THAN_REFERENCE:
        notes.append("best val noise MSE above the i.i.d. reference")
    return "; ".join(notes) or "-"


def _cluster_id(job: str) -> int | None:
    m = re.search(r"_c(\d+)$", job)
    return int(m.group(1)) if m else None


def collect_summaries(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job's summary.json, by cluster; a job directory (one with Hydra's .hydra/)
    without one is a row with status "no summary.json"."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        path = job / SUMMARY_FILE
        if path.is_file():
            try:
                rows.append(json.loads(path.read_text()))
                continue
            except (OSError, ValueError):
                pass
        elif not (job / ".hydra").is_dir():
            continue
        rows.append({"job": job.name, "cluster_id": _cluster_id(job.name), "status": rr.NO_SUMMARY})
    return sorted(rows, key=lambda r: (r.get("cluster_id") or 0, r.get("job", "")))


def failed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") in FAILED]


def _name(r: dict[str, Any]) -> str:
    cid = r.get("cluster_id")
    return f"c{'?' if cid is None else cid}"


def _one_line(text: str) -> str:
    """Safe inside a markdown table cell: one line, no pipes."""
    return " ".join(str(text).split()).replace("|", "/")


def failure_line(rows: list[dict[str, Any]]) -> str:
    """One line naming the failed clusters (empty if none failed)."""
    failed = failed_rows(rows)
    if not failed:
        return ""
    what = ", ".join(
        f"{_name(r)} ({_one_line(r.get('error') or r.get('status', ''))[:80]})" for r in failed
    )
    return f"{len(failed)} of {len(rows)} training job(s) failed: {what}"


def write_summary_table(rows: list[dict[str, Any]], sweep_dir: str | Path) -> Path:
    from mamba_denoiser.io import atomic_write_text
    from mamba_denoiser.tables import markdown_table  # pulls in pandas

    lines = [markdown_table(COLUMNS, [_row(r, Path(sweep_dir)) for r in rows]), ""]
    if failure_line(rows):
        lines.append(f"Failed: {failure_line(rows)}")
    for status, text in (
        (rr.INTERRUPTED, "Interrupted (Ctrl-C)"),
        (rr.PREEMPTED, "Preempted and requeued, not finished (resumes from last.ckpt)"),
        (rr.WORSE_THAN_REFERENCE, "Best val noise MSE above the i.i.d. reference"),
    ):
        names = [_name(r) for r in rows if r.get("status") == status]
        if names:
            lines.append(f"{text}: {', '.join(names)}")
    last = [_name(r) for r in rows if r.get("best_is_last_epoch")]
    if last:
        lines.append(f"Best at the last epoch (more epochs would likely help): {', '.join(last)}")
    return atomic_write_text(Path(sweep_dir) / "summary.md", "\n".join(lines).rstrip() + "\n")


def summary_rich_table(
    rows: list[dict[str, Any]], sweep_dir: str | Path | None = None, width: int | None = None
):
    """The sweep table for the console: split into several tables when too wide for it, so
    no number is cut (tables.console_tables)."""
    import pandas as pd
    from rich.console import Group

    from mamba_denoiser.io import console
    from mamba_denoiser.tables import console_tables

    cells = pd.DataFrame(
        [_row(r, Path(sweep_dir) if sweep_dir else None) for r in rows], columns=list(COLUMNS)
    )
    title = f"Training sweep: {len(rows)} cluster(s)"
    return Group(*console_tables(cells, width=width or console().width, title=title))


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if config.get("task_name") != "train":  # e.g. cluster.py -m: no training summaries
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_summaries(sweep_dir)
        if not rows:
            return
        from mamba_denoiser.io import console

        path = write_summary_table(rows, sweep_dir)
        console().print(summary_rich_table(rows, sweep_dir))
        print(f"summary: {path}")
        line = failure_line(rows)
        if line:
            # Hydra's callback runner catches Exception, not SystemExit: this sets the exit
            # status of the multirun (2, or 1 if any job failed unexpectedly).
            codes = [r.get("exit_code") for r in failed_rows(rows)]
            print(f"error: {line}. See {path}", file=sys.stderr)
            raise SystemExit(1 if 1 in codes or None in codes else 2)
