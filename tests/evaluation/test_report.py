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
