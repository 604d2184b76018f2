"""The built-in synthetic panel: schema, determinism, missing-data pattern, ground truth."""

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.data.synthetic import (
    EXPECTED_TYPE,
    FEATURE_FAMILIES,
    TARGETS,
    SyntheticPanel,
    feature_names,
    make_synthetic_panel,
    write_default_csv,
)

N = 3000


@pytest.fixture(scope="module")
def panel() -> SyntheticPanel:
    return make_synthetic_panel(N, seed=0)


def test_schema_and_column_order(panel):
    features = [f"{k}{i}" for k, n in FEATURE_FAMILIES.items() for i in range(1, n + 1)]
    assert features == feature_names() and len(features) == 94
    assert list(panel.frame.columns) == ["date_id", *features, *TARGETS]
    assert list(panel.clean.columns) == ["date_id", *features]
    assert len(panel.frame) == N and len(panel.clean) == N
    np.testing.assert_array_equal(panel.frame["date_id"].to_numpy(), np.arange(N))
    assert all(pd.api.types.is_float_dtype(panel.frame[c]) for c in [*features, *TARGETS])


def test_same_seed_identical_other_seed_different(panel):
    again = make_synthetic_panel(N, seed=0)
    pd.testing.assert_frame_equal(panel.frame, again.frame, check_exact=True)
    pd.testing.assert_frame_equal(panel.clean, again.clean, check_exact=True)
    assert panel.noise_std == again.noise_std
    other = make_synthetic_panel(N, seed=1)
    assert not np.allclose(
        panel.frame["E1"].fillna(0).to_numpy(), other.frame["E1"].fillna(0).to_numpy()
    )


def test_only_leading_missing_values(panel):
    starts = []
    for c in panel.feature_columns:
        observed = panel.frame[c].notna().to_numpy()
        assert observed.any(), c
        first = int(observed.argmax())
        assert observed[first:].all(), f"{c}: interior NaN gap"
        starts.append(first)
    starts = np.array(starts)
    assert (starts == 0).sum() >= 20  # some features have full history
    assert (starts > 0.2 * N).sum() >= 10  # many start after a missing block
    assert starts.max() <= 0.5 * N  # at most about half the rows missing


def test_clean_nan_pattern_equals_frame(panel):
    cols = panel.feature_columns
    np.testing.assert_array_equal(panel.clean[cols].isna(), panel.frame[cols].isna())


def test_targets_finite_and_consistent(panel):
    t = panel.frame[list(TARGETS)]
    assert np.isfinite(t.to_numpy()).all()
    assert (t["risk_free_rate"] > 0).all()
    np.testing.assert_allclose(
        t["market_forward_excess_returns"], t["forward_returns"] - t["risk_free_rate"]
    )
    # Weak but real dependence: daily-return scale, small R^2.
    assert 0.003 < t["forward_returns"].std() < 0.03


def test_ground_truth_bookkeeping(panel):
    assert list(panel.process) == feature_names()
    dummies = [c for c, p in panel.process.items() if p == "dummy"]
    assert dummies == [f"D{i}" for i in range(1, 10)]
    assert set(panel.noise_std) == set(panel.continuous_columns)
    assert len(panel.continuous_columns) == 85
    assert all(v > 0 for v in panel.noise_std.values())
    assert set(panel.expected_type) == set(panel.process.values()) - {"dummy"}
    assert len(panel.expected_type) == 7
    assert panel.expected_type == {k: EXPECTED_TYPE[k] for k in panel.expected_type}
    assert set(panel.expected_type.values()) == {"mean_reverting", "trending", "random_walk"}


def test_dummies_are_discrete_and_complete(panel):
    for c in (c for c, p in panel.process.items() if p == "dummy"):
        v = panel.frame[c]
        assert v.notna().all() and v.nunique() <= 3, c
        np.testing.assert_array_equal(v, panel.clean[c])


def test_noise_matches_its_documented_std(panel):
    for c in panel.continuous_columns:
        noise = (panel.frame[c] - panel.clean[c]).dropna()
        assert noise.std() == pytest.approx(panel.noise_std[c], rel=0.15), c


def test_positive_series_stay_positive(panel):
    for c in (c for c, p in panel.process.items() if p == "vol_positive"):
        assert (panel.frame[c].dropna() > 0).all(), c


def test_units_differ_by_orders_of_magnitude(panel):
    scales = [panel.frame[c].abs().median() for c in panel.continuous_columns]
    assert max(scales) / min(scales) > 1e3


def test_write_default_csv_round_trip(tmp_path):
    path = write_default_csv(tmp_path / "sub" / "train.csv", n_rows=400, seed=3)
    back = pd.read_csv(path)
    ref = make_synthetic_panel(400, seed=3).frame
    assert list(back.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(back, ref, check_exact=False, rtol=1e-12, check_dtype=False)


def test_too_few_rows_is_an_error():
    with pytest.raises(ValueError, match="n_rows"):
        make_synthetic_panel(100)
