"""truth=PATH: the user's own clean values, checked against the panel with clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mamba_denoiser.data.panel import PanelError, load_panel
from mamba_denoiser.evaluation.truth import NO_FAMILY, load_truth_file
from tests.helpers import make_small_panel

NAMES = ["E1", "E2", "M1", "M2"]


@pytest.fixture
def setup(tmp_path):
    frame, clean = make_small_panel(n_rows=400, seed=1)
    csv = tmp_path / "train.csv"
    frame.to_csv(csv, index=False)
    return load_panel(csv, window_size=16), clean, tmp_path


def test_clean_values_are_aligned_to_the_panel_rows(setup):
    panel, clean, tmp = setup
    shuffled = clean[["date_id", "E1", "M2"]].sample(frac=1.0, random_state=0)  # any row order
    shuffled.to_csv(tmp / "clean.csv", index=False)
    fams = tmp / "fam.json"
    fams.write_text(json.dumps({"E1": "ou"}))
    t = load_truth_file(tmp / "clean.csv", panel, NAMES, str(fams))
    assert t.known == ["E1", "M2"]
    np.testing.assert_array_equal(t.clean[:, 0], clean["E1"].to_numpy())
    np.testing.assert_array_equal(t.clean[:, 3], clean["M2"].to_numpy())
    assert np.isnan(t.clean[:, 1]).all()  # not given: unknown
    assert t.family == {"E1": "ou", "M2": NO_FAMILY}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.drop(columns=["date_id"]), "no id column"),
        (lambda c: c.iloc[:-1], "are missing"),
        (lambda c: c.assign(NOPE=1.0), "not in the panel"),
        (lambda c: c.assign(E1=c["E1"].astype(object).where(c.index != 5, "x")), "not numeric"),
        (lambda c: c.assign(E1=c["E1"].where(c.index != 7)), "NaN layout"),
        (lambda c: c.assign(M2=c["M2"].fillna(0.0)), "NaN layout"),
    ],
)
def test_bad_truth_files_are_refused_with_the_reason(setup, mutate, message):
    panel, clean, tmp = setup
    mutate(clean).to_csv(tmp / "bad.csv", index=False)
    with pytest.raises(PanelError, match=message):
        load_truth_file(tmp / "bad.csv", panel, NAMES)


def test_bad_family_files_are_refused(setup):
    panel, clean, tmp = setup
    clean.to_csv(tmp / "clean.csv", index=False)
    (tmp / "fam.json").write_text(json.dumps({"ZZ": "ou"}))
    with pytest.raises(PanelError, match="not denoised features"):
        load_truth_file(tmp / "clean.csv", panel, NAMES, str(tmp / "fam.json"))
    (tmp / "fam.json").write_text("[1, 2]")
    with pytest.raises(PanelError, match="expected"):
        load_truth_file(tmp / "clean.csv", panel, NAMES, str(tmp / "fam.json"))
    with pytest.raises(PanelError, match="file not found"):
        load_truth_file(tmp / "missing.csv", panel, NAMES)
