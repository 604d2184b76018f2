"""Progress bars (progress.py) on the long loops: state-space fits, denoising per cluster
and its windows, baselines, leakage cuts. Drawn only on a terminal (or when forced with
MAMBA_DENOISER_PROGRESS=1): piped output stays free of them, and the stages' log lines
are unchanged."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser import progress
from mamba_denoiser.evaluation.baselines import apply_baselines
from mamba_denoiser.evaluation.checks import Served, run_checks

BAR = "\u2501"  # rich's bar glyph


def _panel(T=300, F=3, seed=0):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal((T, F)), axis=0) + rng.standard_normal((T, F))


def _fake_cluster(monkeypatch):
    """inference.denoise_cluster replaced by one that reports its windows as the real one
    does (progress(done, total)) and returns raw values."""
    from mamba_denoiser import inference

    def fake(model, raw, *, progress=None, **kw):
        for done in (32, 64):
            progress(done, 64)
        info = {"features": {f: {"denoised": False, "chosen": "raw"} for f in model.features}}
        info["seconds"] = 0.0
        return SimpleNamespace(mean=raw, lower=None, upper=None, alone=None, info=info)

    monkeypatch.setattr(inference, "denoise_cluster", fake)
    model = SimpleNamespace(
        features=["a", "b"], name="c0", cluster={"type": "random_walk"}, direction="causal"
    )
    frame = pd.DataFrame(_panel(F=2), columns=["a", "b"])
    return {0: model}, frame, {"train": (0, 200), "val": (210, 250), "test": (260, 300)}


def _leakage_checks():
    """run_checks over a serve that always returns the same outputs (passes every cut)."""
    frame = pd.DataFrame(_panel(), columns=["x", "y", "z"])
    base = Served(frame.to_numpy(), "{}")
    bounds = {"train": (0, 200), "val": (210, 250), "test": (260, 300)}
    return run_checks(lambda *a, **k: base, frame, ["x", "y", "z"], bounds, 16, base, {})


def test_piped_output_gets_no_bar_and_the_log_lines_stay(monkeypatch, capsys, caplog):
    from mamba_denoiser.inference.panel import denoise_panel

    monkeypatch.delenv(progress.ENV, raising=False)
    assert not sys.stderr.isatty() and not progress.enabled()
    models, frame, bounds = _fake_cluster(monkeypatch)
    with caplog.at_level(logging.INFO, logger="mamba_denoiser"):
        denoise_panel(models, frame, bounds)
    apply_baselines(_panel(), (0, 200), names=["ema"])
    _leakage_checks()
    err = capsys.readouterr().err
    assert BAR not in err and "Denoising clusters" not in err
    assert "Denoising c0 (random_walk, 2 features" in caplog.text  # one line per cluster


def test_forced_bars_draw_every_loop_and_nest(monkeypatch, capsys, tmp_path):
    from mamba_denoiser.classical import prefit_state_space, set_fit_cache
    from mamba_denoiser.inference.panel import denoise_panel

    monkeypatch.setenv(progress.ENV, "1")
    models, frame, bounds = _fake_cluster(monkeypatch)
    denoise_panel(models, frame, bounds)
    apply_baselines(_panel(), (0, 200), names=["ema"])
    _leakage_checks()
    set_fit_cache(tmp_path / "fits")
    try:
        prefit_state_space(_panel(T=200, F=2), (0, 150), n_jobs=2)
    finally:
        set_fit_cache(None)
    err = capsys.readouterr().err
    for what in ("Denoising clusters", "c0: windows", "Baselines", "Leakage checks", "State-"):
        assert what in err, what
    assert BAR in err
    # quiet runs (the API, the leakage checks' own re-runs) draw nothing
    denoise_panel(models, frame, bounds, quiet=True)
    assert "Denoising clusters" not in capsys.readouterr().err
    monkeypatch.setenv(progress.ENV, "0")
    with progress.bar("off", 2) as b:
        assert not b.shown
        b.advance()
        b(1, 2)


def test_nested_bars_share_one_display(monkeypatch):
    monkeypatch.setenv(progress.ENV, "1")
    with progress.bar("outer", 2) as a:
        for _ in range(2):
            with progress.bar("inner", 3) as b:  # a second live display would raise
                assert b.shown
                b(3, 3)
            a.advance()
    assert progress._live is None and progress._depth == 0


@pytest.mark.parametrize(
    "flag, tty, on", [("", False, False), ("", True, True), ("0", True, False)]
)
def test_bars_follow_the_terminal_unless_told(monkeypatch, flag, tty, on):
    monkeypatch.setenv(progress.ENV, flag)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    assert progress.enabled() is on
