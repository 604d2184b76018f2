"""Console tables show every number in full at 80 and 120 columns (no '…', no cut)."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from mamba_denoiser.evaluate_job import _print_key
from mamba_denoiser.evaluation.report import ReportTables
from mamba_denoiser.tables import cell_text as _cell
from mamba_denoiser.tables import console_tables

FAMILIES = ["jump_regime", "ou_fast", "ou_slow", "random_walk", "sv_returns", "trend", "vol_pos"]
METHODS = [
    "raw",
    "causal_posterior_mean",
    "causal_posterior_mean: diffusion alone",
    "causal_posterior_mean: kalman alone",
    "causal_posterior_mean: predictive alone",
    "best classical (val SURE)",
    *[f"{b} (causal)" for b in ("ema", "kalman_level", "kalman_ar1", "kalman_ari1", "savgol")],
]
METRICS = [
    "n_rows",
    "ic_mean",
    "ic_t",
    "rank_ic_mean",
    "rank_ic_t",
    "r2",
    "r2_zero",
    "hit_rate",
    "mean_position",
    "sharpe",
    "adjusted_sharpe",
    "vol_penalty",
    "return_penalty",
]
SETS = ["raw", "denoised (causal_posterior_mean)", "anchor (best classical (val SURE))"]


def _tables(seed=0):
    rng = np.random.default_rng(seed)
    snr = pd.DataFrame(
        rng.normal(0, 4, (len(FAMILIES), len(METHODS))) * rng.choice([1, 10], len(METHODS)),
        index=FAMILIES,
        columns=METHODS,
    )
    snr.iloc[0, 0] = -1.2e-15  # prints as 0.000, not -0.000
    snr.insert(0, "features", rng.integers(1, 14, len(FAMILIES)).astype(float))
    rows = []
    for s in SETS:
        for m in ("ridge", "hgb", "RandomForestRegressor"):
            r = {"model": m, "features": s, "n_rows": 1290}
            r.update({k: rng.normal(0, 2) for k in METRICS[1:]})
            rows.append(r)
    rows.append(
        {"model": "market", "features": "-", "n_rows": 1290, "mean_position": 1.0, "sharpe": 0.15}
    )
    down = pd.DataFrame(rows)[["model", "features", *METRICS]]
    return ReportTables(
        noise=pd.DataFrame(), choices=pd.DataFrame(), snr_causal_by_family=snr, downstream=down
    )


def _render(tables, width):
    con = Console(width=width, record=True, file=io.StringIO())
    _print_key(tables, {}, [], con)
    return con.export_text()


def _tokens(text):
    return set(re.split(r"[\s│┃┏┓┗┛┡┩┣┫━─┳┻╇╈┼┠┨]+", text))


@pytest.mark.parametrize("width", [80, 120])
def test_evaluate_key_tables_show_every_number_in_full(width):
    tables = _tables()
    text = _render(tables, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    tokens = _tokens(text)
    snr, down = tables.snr_causal_by_family, tables.downstream
    want = {_cell(v) for v in snr.drop(columns="features").to_numpy().ravel()}
    want |= {_cell(v, count=True) for v in snr["features"]}
    numeric = down[METRICS[1:]].to_numpy().ravel()
    want |= {_cell(v, digits=4) for v in numeric} | {"1290"}
    missing = sorted(w for w in want if w not in tokens)
    assert not missing, f"{len(missing)} numbers not shown whole at {width} columns: {missing[:5]}"
    assert "0.000" in tokens and "-0.000" not in tokens
    for model in ("ridge", "hgb", "RandomForestRegressor"):
        assert f"Out-of-sample forecasting: {model}" in text


def test_narrow_tables_are_split_and_wide_ones_are_not():
    cells = pd.DataFrame(
        {"label": ["a", "b"], **{f"col{i}": ["-12.345", "6.000"] for i in range(9)}}
    )
    assert len(console_tables(cells, width=200, title="t")) == 1
    parts = console_tables(cells, width=60, title="t")
    assert len(parts) > 1
    con = Console(width=60, record=True, file=io.StringIO())
    for t in parts:
        con.print(t)
    text = con.export_text()
    assert text.count("-12.345") == 9 and "…" not in text
    assert "t (1/" in text  # the parts are numbered


def test_cells_print_counts_as_integers():
    assert _cell(np.int64(12)) == "12"
    assert _cell(13.0, count=True) == "13" and _cell(1.0, count=True) == "1"
    assert _cell(2.0) == "2.000"  # a gain that happens to be whole is still a gain
    assert _cell(float("nan")) == "-" and _cell(None) == "-"
    assert _cell(-1e-9) == "0.000" and _cell(0.00492, digits=4) == "0.0049"


@pytest.mark.parametrize("width", [80, 120])
def test_denoise_table_shows_every_cell_in_full(width):
    from mamba_denoiser.denoise_job import _table_rich

    clusters = [
        {
            "cluster": f"c{i}",
            "type": "mean_reverting",
            "direction": "bidirectional",
            "mode": "causal",
            "sampler": "posterior_mean",
            "t": [28, 44, 67, 101, 1234],
            "features": {f"f{j}": {"denoised": j % 2 == 0} for j in range(13)},
            "seconds": 123.456,
        }
        for i in range(3)
    ]
    info = {"uses_future_rows": False, "clusters": clusters}
    con = Console(width=width, record=True, file=io.StringIO())
    con.print(_table_rich(info, width=width))
    text = con.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    tokens = _tokens(text)
    assert {"7/13", "123.5", "1234", "101,", "mean_reverting", "posterior_mean"} <= tokens


def test_console_width_when_piped(monkeypatch):
    from mamba_denoiser.io import console

    monkeypatch.setattr("sys.stdout", io.StringIO())  # not a terminal
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console().width == 120
    monkeypatch.setenv("COLUMNS", "80")
    assert console().width == 80
