import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.data.panel import PanelError, SplitSpec, load_panel, panel_from_frame


def test_roles(small_csv):
    panel = load_panel(small_csv, window_size=20)
    assert panel.id_col == "date_id"
    assert panel.targets == ["forward_returns", "risk_free_rate", "market_forward_excess_returns"]
    assert panel.continuous == ["E1", "E2", "M1", "M2"]
    assert panel.passthrough["D1"].startswith("discrete")
    assert panel.sha256 and len(panel.sha256) == 64
    for t in panel.targets:
        assert t not in panel.continuous and t not in panel.passthrough


def test_passthrough_reasons(small_frame):
    f = small_frame.copy()
    f["C"] = 3.0
    f["N"] = np.nan
    f["LATE"] = np.where(np.arange(len(f)) > 500, 1.0 * np.arange(len(f)), np.nan)
    f["FEW"] = np.where(np.arange(len(f)) > 390, np.sin(np.arange(len(f))), np.nan)
    f["X"] = np.random.default_rng(0).standard_normal(len(f))
    p = panel_from_frame(f, window_size=20, exclude=["X"])
    assert p.passthrough["C"] == "constant on the train split"
    assert p.passthrough["N"] == "all values missing"
    assert "no observed values in the train split" in p.passthrough["LATE"]
    assert "observed train rows" in p.passthrough["FEW"]
    assert p.passthrough["X"] == "excluded by data.exclude"


def test_roles_use_train_split_only(small_frame):
    # Constant in train, varying afterwards: the role must not peek at later rows.
    f = small_frame.copy()
    f["K"] = np.where(np.arange(len(f)) < 450, 1.0, np.arange(len(f), dtype=float))
    p = panel_from_frame(f, window_size=20)
    assert p.passthrough["K"] == "constant on the train split"


def test_split_and_embargo():
    s = SplitSpec(train=0.7, val=0.15, test=0.15, embargo=60)
    b = s.bounds(9000)
    assert b == {"train": (0, 6300), "val": (6360, 7650), "test": (7710, 9000)}
    # Chronological, disjoint, and at least `embargo` rows between parts.
    assert b["val"][0] - b["train"][1] >= 60 and b["test"][0] - b["val"][1] >= 60
    b2 = SplitSpec(train=0.6, val=0.2, test=0.0, embargo=5).bounds(100)
    assert b2["train"] == (0, 60) and b2["val"] == (65, 80) and b2["test"][0] == b2["test"][1]
    with pytest.raises(PanelError, match="add up"):
        SplitSpec(train=0.8, val=0.3, test=0.1)


def test_panel_parts(small_csv):
    p = load_panel(small_csv, window_size=20, split=SplitSpec(0.5, 0.25, 0.25, embargo=20))
    assert len(p.part("train")) == 300
    assert p.part("val")["date_id"].iloc[0] == 320
    obs = p.observed("M2", "train")
    assert not np.isnan(obs).any() and len(obs) == 300 - 121


def write(tmp_path, frame, name="bad.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(PanelError, match="file not found"):
        load_panel(tmp_path / "nope.csv")


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(PanelError, match="empty"):
        load_panel(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("date_id,A\n")
    with pytest.raises(PanelError, match="no data rows"):
        load_panel(tmp_path / "h.csv")


def test_no_id_column(tmp_path, small_frame):
    path = write(tmp_path, small_frame.rename(columns={"date_id": "t"}))
    with pytest.raises(PanelError, match=r"no id column 'date_id'.*data.id_col"):
        load_panel(path)
    assert load_panel(path, id_col="t", window_size=20).id_col == "t"


def test_duplicate_ids(tmp_path, small_frame):
    f = small_frame.copy()
    f.loc[10, "date_id"] = 9
    with pytest.raises(PanelError, match=r"duplicate date_id values, e.g. \[9\]"):
        load_panel(write(tmp_path, f))


def test_unsorted_ids_sorted_with_warning(tmp_path, small_frame):
    shuffled = small_frame.sample(frac=1.0, random_state=0)
    with pytest.warns(UserWarning, match="not sorted"):
        p = load_panel(write(tmp_path, shuffled), window_size=20)
    assert p.frame["date_id"].is_monotonic_increasing
    pd.testing.assert_frame_equal(p.frame, small_frame, check_dtype=False)


def test_non_numeric_feature(tmp_path, small_frame):
    f = small_frame.astype({"E1": object})
    f.loc[42, "E1"] = "n/a?"
    with pytest.raises(PanelError, match=r"'E1' is not numeric: date_id=42 holds 'n/a\?'"):
        load_panel(write(tmp_path, f))


def test_infinite_values(tmp_path, small_frame):
    f = small_frame.copy()
    f.loc[7, "M1"] = np.inf
    with pytest.raises(PanelError, match=r"'M1' holds inf at date_id=7"):
        load_panel(write(tmp_path, f))


def test_missing_target(tmp_path, small_frame):
    path = write(tmp_path, small_frame.drop(columns=["risk_free_rate"]))
    with pytest.raises(PanelError, match=r"\['risk_free_rate'\] not found.*data.targets"):
        load_panel(path)


def test_too_few_rows(tmp_path, small_frame):
    with pytest.raises(PanelError, match="fewer than one window"):
        load_panel(write(tmp_path, small_frame.iloc[:50]), window_size=60)


def test_interior_gaps(tmp_path, small_frame):
    f = small_frame.copy()
    f.loc[300:304, "E2"] = np.nan
    path = write(tmp_path, f)
    with pytest.warns(UserWarning, match=r"'E2' has 5 missing values after its first"):
        p = load_panel(path, window_size=20)
    assert "E2" in p.continuous and p.frame["E2"].isna().sum() == 5  # kept missing, not filled
    with pytest.raises(PanelError, match="interior_gaps=mask"):
        load_panel(path, window_size=20, interior_gaps="error")


def test_warnings_point_at_the_caller(small_frame):
    # The warnings are raised in helpers; their stacklevel must still name the caller.
    f = small_frame.copy()
    f.loc[300:304, "E2"] = np.nan
    with pytest.warns(UserWarning) as record:
        panel_from_frame(f.iloc[::-1], window_size=20)
    assert [w.filename for w in record] == [__file__, __file__]
    assert "not sorted" in str(record[0].message) and "'E2'" in str(record[1].message)
