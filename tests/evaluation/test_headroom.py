"""Exact joint-vs-per-feature headroom from the planted parameters (evaluation/headroom.py)."""

import copy

import numpy as np
import pytest

from mamba_denoiser.data.synthetic import make_synthetic_panel
from mamba_denoiser.evaluation.headroom import (
    COLUMNS,
    HEADROOM_FAMILIES,
    StateSpace,
    family_headroom,
    feature_headroom,
    headroom_markdown,
    simulated_mse,
    state_space,
    steady_state_mse,
)

N = 2500


@pytest.fixture(scope="module")
def factors():
    return make_synthetic_panel(N, seed=3, noise_scale=5, noise_dist="factors")


def test_local_level_matches_closed_form():
    # Random walk (innovation var q) + noise (var r): predicted P = (q + sqrt(q^2 + 4qr)) / 2.
    q, r = 0.7, 2.3
    one = np.ones((1, 1))
    model = StateSpace(["x"], one, q * one, one, r * one, np.zeros(1), np.zeros(1), one)
    p = (q + np.sqrt(q * q + 4 * q * r)) / 2
    np.testing.assert_allclose(steady_state_mse(model), [p * r / (p + r)], rtol=1e-10)


def test_headroom_positive_with_factors(factors):
    table = family_headroom(factors)
    assert list(table.columns) == list(COLUMNS)
    assert list(table.index) == list(HEADROOM_FAMILIES)
    assert (table["n_features"] >= 12).all()
    assert (table["headroom_db"] > 0.3).all()
    np.testing.assert_allclose(table["headroom_db"], table["joint_db"] - table["per_feature_db"])
    per = feature_headroom(factors)
    assert (per["joint_mse"] < per["per_feature_mse"]).all()
    assert (per["per_feature_mse"] < per["noise_var"]).all()  # filtering beats raw


def test_no_headroom_without_loadings(factors):
    # The same panel with every loading set to 0, and a panel without factors at all.
    unloaded = copy.copy(factors)
    unloaded.params = copy.deepcopy(factors.params)
    for p in unloaded.params.values():
        if "loading" in p:
            p["loading"] = 0.0
    plain = make_synthetic_panel(N, seed=3, noise_scale=5, noise_dist="gaussian")
    for panel in (unloaded, plain):
        per = feature_headroom(panel)
        assert (per["joint_mse"] >= per["per_feature_mse"] * (1 - 1e-9)).all()
        np.testing.assert_allclose(per["headroom_db"], 0.0, atol=1e-6)


@pytest.mark.parametrize("family", HEADROOM_FAMILIES)
def test_steady_state_agrees_with_the_filter_run_on_the_panel(factors, family):
    burn = max(p["start"] for p in factors.params.values()) + 100
    rows = slice(burn, N)
    per = feature_headroom(factors)
    for joint, col in ((False, "per_feature_mse"), (True, "joint_mse")):
        sim = simulated_mse(factors, family, joint=joint, rows=rows)
        ratio = (sim / per.loc[sim.index, col]).mean()
        assert 0.9 < ratio < 1.1, (family, joint, ratio)


def test_model_shapes_and_markdown(factors):
    names = [f for f, p in factors.params.items() if p["process"] == "trend"]
    m = state_space(factors.params, names)
    assert m.F.shape == (1 + 2 * len(names),) * 2 and m.H.shape == (len(names), m.F.shape[0])
    text = headroom_markdown(family_headroom(factors))
    assert text.count("\n") == 1 + len(HEADROOM_FAMILIES) and "| trend |" in text


def test_errors():
    panel = make_synthetic_panel(300, noise_dist="factors")
    with pytest.raises(ValueError, match="zero observation noise"):
        family_headroom(make_synthetic_panel(300, noise_scale=0, noise_dist="factors"))
    panel.params = {}
    with pytest.raises(ValueError, match="planted parameters"):
        family_headroom(panel)


def test_report_section_only_for_factor_panels():
    from mamba_denoiser.evaluation.headroom import report_section

    assert report_section(None) == ""
    assert report_section({"noise_dist": "mixed", "n_rows": 2500, "seed": 0}) == ""
    text = report_section({"noise_dist": "factors", "n_rows": 2500, "seed": 0, "noise_scale": 5})
    assert "## Exact joint headroom" in text
    for fam in ("ou_fast", "ou_slow", "random_walk", "trend"):
        assert f"| {fam} |" in text
