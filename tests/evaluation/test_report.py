"""The quality tables against a hand computation on a tiny panel."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_denoiser.evaluation.report import grouped, quality_table


def test_per_family_table_matches_a_hand_computation():
    clean = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [9.0, 9.0, 9.0]])
    raw = clean + np.array([[1.0, 2.0, 1.0], [-1.0, -2.0, -1.0], [1.0, 2.0, np.nan], [5, 5, 5]])
    out = clean + np.array([[0.5, 1.0, 2.0], [-0.5, -1.0, -2.0], [0.5, 1.0, 0.0], [0, 0, 0]])
    rows = slice(0, 3)  # the last row is outside the scored rows
    q = quality_table(raw, clean, {"raw": raw, "m": out}, ["a", "b", "c"], rows)
    # a: MSE raw 1, out 0.25 -> 10·log10(4); b: 4 vs 1 -> the same; c: rows 0-1 only (row 2
    # raw is NaN): MSE raw 1, out 4 -> 10·log10(1/4)
    assert q.loc["a", "m"] == pytest.approx(10 * np.log10(4))
    assert q.loc["b", "m"] == pytest.approx(10 * np.log10(4))
    assert q.loc["c", "m"] == pytest.approx(10 * np.log10(0.25))
    assert (q["raw"] == 0).all()
    fam = grouped(q, {"a": "ou", "b": "ou", "c": "trend"})
    assert fam.loc["ou", "features"] == 2 and fam.loc["trend", "features"] == 1
    assert fam.loc["ou", "m"] == pytest.approx(10 * np.log10(4))
    assert fam.loc["trend", "m"] == pytest.approx(-10 * np.log10(4))


def test_the_mix_table_names_the_best_single_and_flags_a_mix_that_loses_to_it():
    """Family ou: the mix equals candidate p, the best single there, so it holds at 0 dB.
    Family tr: the mix's error sd is twice the best single's (p again), 6 dB, far beyond
    2 SE, so it fails; the mean row averages the two differences."""
    from mamba_denoiser.evaluation.report import grouped, mix_table, quality_table

    rng = np.random.default_rng(0)
    n, names = 1500, ["a", "b", "c", "d"]
    fam = {"a": "ou", "b": "ou", "c": "tr", "d": "tr"}
    clean = rng.standard_normal((n, 4))
    raw = clean + 2 * rng.standard_normal((n, 4))
    p = clean + 0.5 * rng.standard_normal((n, 4))
    q = clean + 0.7 * rng.standard_normal((n, 4))
    mix = np.column_stack([p[:, :2], clean[:, 2:] + rng.standard_normal((n, 2))])
    outs = {"raw": raw, "m": mix, "m: p alone": p, "m: q alone": q}
    rows = slice(0, n)
    q_tab = quality_table(raw, clean, outs, names, rows)
    tab = mix_table(raw, clean, outs, grouped(q_tab, fam), fam, names, "m", rows)
    assert tab.loc["ou", "best single"] == "p" and tab.loc["ou", "mix − best (dB)"] == 0
    assert tab.loc["ou", "holds"]
    assert tab.loc["tr", "best single"] == "p"
    assert tab.loc["tr", "mix − best (dB)"] < -5 and not tab.loc["tr", "holds"]
    assert 0 < tab.loc["tr", "2 SE (dB)"] < 1
    mean = tab.loc["mean over families", "mix − best (dB)"]
    assert mean == pytest.approx(tab.loc[["ou", "tr"], "mix − best (dB)"].mean())
    assert not tab.loc["mean over families", "holds"]
