"""Splits by id or by date (data.split.train_end / val_end), the deploy preset, and what
the panel records of its split."""

from __future__ import annotations

import pandas as pd
import pytest

from mamba_denoiser.data.panel import PanelError, SplitSpec, load_panel, panel_from_frame
from mamba_denoiser.data.source import panel_from_config
from tests.helpers import ROOT, make_small_frame

W = 16


def _dated(n=600) -> pd.DataFrame:
    frame = make_small_frame(n_rows=n)
    frame["date_id"] = pd.bdate_range("2001-01-01", periods=n).strftime("%Y-%m-%d")
    return frame


def test_split_by_id_bounds_and_record():
    frame = make_small_frame(n_rows=600)
    p = panel_from_frame(
        frame, window_size=W, split=SplitSpec(embargo=W, train_end=399, val_end=499)
    )
    assert p.bounds == {"train": (0, 400), "val": (416, 500), "test": (516, 600)}
    split = p.summary()["split"]
    assert (split["train_end"], split["val_end"]) == (399, 499)
    assert split["ids"] == {"train": [0, 399], "val": [416, 499], "test": [516, 599]}
    # an id between two rows' ids: the last row at or before it; val_end None: to the end
    frame2 = frame.assign(date_id=frame["date_id"] * 10)
    p2 = panel_from_frame(frame2, window_size=W, split=SplitSpec(embargo=W, train_end=3995))
    assert p2.bounds == {"train": (0, 400), "val": (416, 600), "test": (600, 600)}
    assert "test" not in p2.summary()["split"]["ids"]
    # the fractional split records no id bounds, only the ids at its parts
    f = panel_from_frame(frame, window_size=W).summary()["split"]
    assert "train_end" not in f and f["ids"]["train"] == [0, 419]


def test_split_by_date_for_text_dates_and_date_columns(tmp_path):
    frame = _dated()
    spec = SplitSpec(embargo=W, train_end="2002-07-15", val_end="2002-12-31")
    p = panel_from_frame(frame, window_size=W, split=spec)
    dates = pd.to_datetime(frame["date_id"])
    n_tr = int((dates <= "2002-07-15").sum())
    n_va = int((dates <= "2002-12-31").sum())
    assert p.bounds == {"train": (0, n_tr), "val": (n_tr + W, n_va), "test": (n_va + W, 600)}
    # a Parquet file whose id column holds real dates: the same rows
    pq = tmp_path / "d.parquet"
    frame.assign(date_id=dates).to_parquet(pq, index=False)
    q = load_panel(pq, window_size=W, split=spec)
    assert q.bounds == p.bounds
    assert q.summary()["split"]["ids"]["train"] == ["2001-01-01T00:00:00", "2002-07-15T00:00:00"]
    # through the data options every stage reads (Hydra passes the date as text)
    r = panel_from_config(
        {
            "kind": "csv",
            "path": str(pq),
            "window_size": W,
            "targets": [],
            "split": {"embargo": W, "train_end": "2002-07-15", "val_end": "2002-12-31"},
        }
    )
    assert r.bounds == p.bounds


@pytest.mark.parametrize(
    "frame, spec, message",
    [
        (make_small_frame(600), SplitSpec(train_end="2002-01-01"), "the ids are numbers"),
        (_dated(), SplitSpec(train_end=300), "the ids are dates"),
        (make_small_frame(600), SplitSpec(train_end=400, val_end=300), "comes before"),
        (make_small_frame(600), SplitSpec(train_end=5), r"train split gets 6 rows.*Move"),
        (make_small_frame(600), SplitSpec(train_end=400, val_end=410), r"val -?\d+ rows"),
    ],
)
def test_a_bad_split_by_id_is_one_clear_error(frame, spec, message):
    with pytest.raises(PanelError, match=message):
        panel_from_frame(frame, window_size=W, split=SplitSpec(**{**spec.__dict__, "embargo": W}))


def test_val_end_needs_train_end():
    with pytest.raises(PanelError, match="val_end=9 without data.split.train_end"):
        SplitSpec(val_end=9)


def test_the_deploy_preset_validates_on_the_latest_rows_without_a_test_split(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("cluster", overrides=["experiment=deploy"])
    split = dict(cfg.data.split)
    assert (split["train"], split["val"], split["test"]) == (0.85, 0.15, 0.0)
    csv = tmp_path / "p.csv"
    make_small_frame(600).to_csv(csv, index=False)
    p = panel_from_config(
        {"kind": "csv", "path": str(csv), "window_size": W, "split": {**split, "embargo": W}}
    )
    assert p.bounds == {"train": (0, 510), "val": (526, 600), "test": (600, 600)}


def test_evaluate_refuses_a_split_without_test_rows_saying_why(tmp_path):
    from types import SimpleNamespace

    from mamba_denoiser.errors import ConfigError
    from mamba_denoiser.evaluate_job import _check_test_rows

    frame = make_small_frame(600)
    models = {0: SimpleNamespace(window=W)}
    deploy = panel_from_frame(frame, window_size=W, split=SplitSpec(0.85, 0.15, 0.0, embargo=W))
    with pytest.raises(ConfigError, match="has 0 test rows.*experiment=deploy.*appended"):
        _check_test_rows(deploy, models)
    _check_test_rows(panel_from_frame(frame, window_size=W), models)  # a test split: fine
