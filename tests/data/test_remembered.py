"""Data options a stage takes from the upstream record unless given (data/remembered.py)."""

from __future__ import annotations

import pytest

from mamba_denoiser.data.remembered import (
    DataOptionsError,
    given_data_keys,
    merge_data_options,
    path_means_csv,
)

RECORDED = {
    "kind": "csv",
    "path": "/data/train.csv",
    "id_col": "date_id",
    "targets": ["forward_returns"],
    "window_size": 60,
    "split": {"train": 0.7, "val": 0.15, "test": 0.15, "embargo": 60},
}
BUILTIN = {
    "kind": "synthetic",
    "path": "/o/data/synthetic.csv",
    "n_rows": 9000,
    "seed": 0,
    "noise_scale": 1.0,
    "id_col": "date_id",
    "targets": ["forward_returns", "risk_free_rate"],
    "window_size": 60,
    "split": {"train": 0.7, "val": 0.15, "test": 0.15, "embargo": 60},
}


def test_given_keys_from_overrides():
    ov = ["data=csv", "data.path=x.csv", "+data.split.train=0.6", "seed=1", "~data.exclude"]
    assert given_data_keys(ov) == {"kind", "path", "split.train"}
    assert given_data_keys(["checkpoints=d", "database=1"]) == set()


def test_nothing_given_takes_the_record_verbatim():
    out, used = merge_data_options(BUILTIN, RECORDED, set(), recorded_by="c.json")
    assert used and out == RECORDED and out is not RECORDED


def test_no_record_keeps_the_composed_options():
    out, used = merge_data_options(BUILTIN, None, set(), recorded_by="c.json")
    assert not used and out == BUILTIN


def test_agreeing_options_pass_and_other_data_is_allowed():
    composed = {**RECORDED, "path": "/data/new.csv", "window_size": 60.0}
    out, _ = merge_data_options(composed, RECORDED, {"path", "window_size"}, recorded_by="c")
    assert out["path"] == "/data/new.csv" and out["window_size"] == 60


def test_csv_over_a_recorded_builtin_panel_drops_the_generator_knobs():
    composed = {**RECORDED, "path": "/o/data/synthetic.csv"}
    out, _ = merge_data_options(composed, BUILTIN, {"kind", "path"}, recorded_by="c")
    assert out["kind"] == "csv" and "n_rows" not in out and "noise_scale" not in out
    # how the data are read still comes from the record, not the csv group's defaults
    assert out["targets"] == BUILTIN["targets"]


def test_conflicts_name_both_values_and_the_record():
    composed = {**RECORDED, "window_size": 30, "split": {**RECORDED["split"], "train": 0.6}}
    with pytest.raises(DataOptionsError) as e:
        merge_data_options(composed, RECORDED, {"window_size", "split.train"}, recorded_by="c.json")
    msg = str(e.value)
    assert "data.window_size=30 (recorded: 60)" in msg
    assert "data.split.train=0.6 (recorded: 0.7)" in msg and "c.json" in msg


def test_a_path_without_a_data_choice_means_a_csv():
    """`denoise.py data.path=new.csv` (no data=csv): the built-in group's default must not
    turn a user's file into the synthetic panel's cache (it ended in KeyError 'n_rows')."""
    composed, given = path_means_csv({**BUILTIN, "path": "/data/new.csv"}, {"path"})
    assert composed["kind"] == "csv" and "n_rows" not in composed and given == {"path", "kind"}
    out, _ = merge_data_options(composed, RECORDED, given, recorded_by="c.json")
    assert out == {**RECORDED, "path": "/data/new.csv"}
    # with no record (cluster.py) it is read as a CSV too
    assert path_means_csv(BUILTIN, {"path"})[0]["kind"] == "csv"
    # data=synthetic data.path=... is an explicit choice: kept
    assert path_means_csv(BUILTIN, {"kind", "path"})[0] == BUILTIN


def test_the_composed_default_kind_never_replaces_a_recorded_csv():
    # data.noise_scale=5 alone over a recorded CSV: still the CSV, not a half built-in panel
    out, _ = merge_data_options(BUILTIN, RECORDED, {"noise_scale"}, recorded_by="c")
    assert out["kind"] == "csv" and out["path"] == RECORDED["path"]
    # data=synthetic over a recorded CSV: the built-in panel, with its generator knobs
    out, _ = merge_data_options(BUILTIN, RECORDED, {"kind"}, recorded_by="c")
    assert out["kind"] == "synthetic" and out["n_rows"] == 9000 and out["seed"] == 0
