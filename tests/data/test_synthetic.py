"""The built-in synthetic panel: schema, determinism, missing-data pattern, ground truth."""

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.data.synthetic import (
    EXPECTED_TYPE,
    FEATURE_FAMILIES,
    SyntheticPanel,
    feature_names,
    make_synthetic_panel,
    write_default_csv,
)
from mamba_denoiser.vocabulary import TARGETS

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


# --- the noise knob ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy():
    """(noise_scale, noise_dist) -> panel, all from seed 0."""
    settings = [(1.0, "mixed"), (3.0, "mixed"), (1.0, "gaussian"), (1.0, "student_t")]
    return {s: make_synthetic_panel(N, seed=0, noise_scale=s[0], noise_dist=s[1]) for s in settings}


def test_default_knobs_are_the_default_panel(panel, noisy):
    same = noisy[(1.0, "mixed")]
    pd.testing.assert_frame_equal(same.frame, panel.frame, check_exact=True)
    assert same.noise_std == panel.noise_std
    assert (panel.noise_scale, panel.noise_dist) == (1.0, "mixed")
    # About a third of the continuous features get Student-t noise, never vol_positive.
    heavy = [c for c, df in panel.noise_df.items() if df is not None]
    assert 15 <= len(heavy) <= 45
    assert all(panel.process[c] != "vol_positive" and panel.noise_df[c] in (4, 5, 6) for c in heavy)


def test_noise_knobs_change_only_the_noise(panel, noisy):
    for p in noisy.values():
        pd.testing.assert_frame_equal(p.clean, panel.clean, check_exact=True)
        pd.testing.assert_frame_equal(
            p.frame[list(TARGETS)], panel.frame[list(TARGETS)], check_exact=True
        )


def test_noise_scale_multiplies_the_noise(panel, noisy):
    triple = noisy[(3.0, "mixed")]
    for c in panel.continuous_columns:
        assert triple.noise_std[c] == pytest.approx(3.0 * panel.noise_std[c], rel=1e-12), c
        base = (panel.frame[c] - panel.clean[c]).dropna()
        noise = (triple.frame[c] - triple.clean[c]).dropna()
        # Same draws, three times the size.
        np.testing.assert_allclose(noise, 3.0 * base, rtol=1e-6, atol=1e-9 * panel.noise_std[c])
        assert noise.std() == pytest.approx(triple.noise_std[c], rel=0.15), c
    silent = make_synthetic_panel(N, seed=0, noise_scale=0.0)
    cols = panel.feature_columns
    pd.testing.assert_frame_equal(silent.frame[cols], silent.clean[cols], check_exact=True)


def test_noise_dist_sets_the_tails(noisy):
    gauss, student = noisy[(1.0, "gaussian")], noisy[(1.0, "student_t")]
    assert all(df is None for df in gauss.noise_df.values())
    assert all(df in (4, 5, 6) for df in student.noise_df.values())

    def excess_kurtosis(p):
        k = []
        for c in p.continuous_columns:
            z = ((p.frame[c] - p.clean[c]).dropna() / p.noise_std[c]).to_numpy()
            assert z.std() == pytest.approx(1.0, rel=0.15), c  # same std, other shape
            k.append(np.mean(z**4) / np.mean(z**2) ** 2 - 3.0)
        return np.array(k)

    kg, ks = excess_kurtosis(gauss), excess_kurtosis(student)
    assert abs(np.median(kg)) < 0.3
    assert np.median(ks) > 1.0 and (ks > kg).mean() > 0.9


def test_outliers_scenario_puts_large_outliers_in_five_percent_of_cells(panel):
    out = make_synthetic_panel(N, seed=0, noise_dist="outliers")
    gauss = make_synthetic_panel(N, seed=0, noise_dist="gaussian")
    pd.testing.assert_frame_equal(out.clean, panel.clean, check_exact=True)  # signal untouched
    shares = []
    for c in out.continuous_columns:
        z = ((out.frame[c] - out.clean[c]).dropna() / out.noise_std[c]).to_numpy()
        assert z.std() == pytest.approx(1.0, rel=0.2), c  # noise_std is still the std
        core = 1.0 / np.sqrt(6.0)  # the Gaussian core's sd in noise_std units
        shares.append(np.mean(np.abs(z) > 5.0 * core))
        assert out.noise_std[c] == gauss.noise_std[c]
    # 5 % outliers at 10 core sds, plus a Gaussian core that almost never passes 5 sds
    assert np.median(shares) == pytest.approx(0.05, abs=0.01)


def test_jumps_scenario_adds_large_signal_jumps_only_to_the_jump_families():
    jumps = make_synthetic_panel(N, seed=0, noise_dist="jumps")
    gauss = make_synthetic_panel(N, seed=0, noise_dist="gaussian")
    for c in jumps.continuous_columns:
        proc = jumps.process[c]
        # the noise draws are those of "gaussian"
        np.testing.assert_allclose(
            (jumps.frame[c] - jumps.clean[c]).dropna(),
            (gauss.frame[c] - gauss.clean[c]).dropna(),
            rtol=1e-6,
            atol=1e-9 * jumps.noise_std[c],
        )
        extra = (jumps.clean[c] - gauss.clean[c]).dropna().to_numpy() / jumps.noise_std[c]
        if proc not in ("ou_fast", "ou_slow", "random_walk", "trend"):
            assert np.all(extra == 0.0), c
            continue
        if proc in ("random_walk", "trend"):
            step = np.diff(extra)  # a persistent jump: a step in the level
            hits = np.abs(step) > 1e-9
            assert 0.01 < hits.mean() < 0.03, c  # rate 2 %
            assert np.all((np.abs(step[hits]) >= 5.0 - 1e-9) & (np.abs(step[hits]) <= 10.0)), c
        else:
            assert np.abs(extra).max() >= 5.0, c  # an OU jump decays from at least 5 sds


def test_factors_scenario_gives_each_family_one_shared_factor():
    """noise_dist="factors": within ou_fast, ou_slow, random_walk and trend, features
    co-move (levels, or moves for the integrated families) as planted, |corr| ~ √(c_i c_j)
    with c in [0.6, 0.9]; across families and in the other families they do not; the
    noise is "gaussian"'s."""
    fac = make_synthetic_panel(N, seed=0, noise_dist="factors")
    gauss = make_synthetic_panel(N, seed=0, noise_dist="gaussian")
    first = {}
    for fam in ("ou_fast", "ou_slow", "random_walk", "trend", "sv_returns"):
        cols = [c for c in fac.continuous_columns if fac.process[c] == fam]
        x = fac.clean[cols].to_numpy()
        if fam in ("random_walk", "trend"):
            x = np.diff(x, axis=0)
        ok = np.isfinite(x).all(1)
        r = np.abs(np.corrcoef(x[ok].T)[np.triu_indices(len(cols), 1)])
        if fam == "sv_returns":
            assert r.max() < 0.15
            np.testing.assert_array_equal(fac.clean[cols], gauss.clean[cols])
        else:
            assert 0.5 < np.median(r) < 0.9 and r.min() > 0.35, fam
        first[fam] = x[ok][:, 0]
    n = min(len(v) for v in first.values())
    across = np.corrcoef(np.array([v[-n:] for v in first.values()]))
    # persistent series (phi ~ 0.94) correlate by chance with sd ~0.07 over these rows
    assert np.abs(across[np.triu_indices(len(first), 1)]).max() < 0.3
    for c in fac.continuous_columns:  # the noise draws are those of "gaussian"
        np.testing.assert_allclose(
            (fac.frame[c] - fac.clean[c]).dropna(),
            (gauss.frame[c] - gauss.clean[c]).dropna(),
            rtol=1e-6,
            atol=1e-9 * fac.noise_std[c],
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [({"noise_scale": -1.0}, "noise_scale"), ({"noise_dist": "cauchy"}, "noise_dist")],
)
def test_bad_noise_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_panel(300, **kwargs)


def test_cached_csv_name_and_truth_record_the_knobs(tmp_path):
    from mamba_denoiser.data.source import ensure_synthetic_csv, load_truth, panel_from_config

    base = tmp_path / "synthetic_n300_seed1.csv"
    default = ensure_synthetic_csv(base, n_rows=300, seed=1)
    assert default == base
    noisy = ensure_synthetic_csv(base, n_rows=300, seed=1, noise_scale=3, noise_dist="gaussian")
    assert noisy.name == "synthetic_n300_seed1_noise3_gaussian.csv"
    half = ensure_synthetic_csv(base, n_rows=300, seed=1, noise_scale=0.5)
    assert half.name == "synthetic_n300_seed1_noise0.5_mixed.csv"
    truth = load_truth(noisy)
    assert (truth["noise_scale"], truth["noise_dist"]) == (3.0, "gaussian")
    assert (
        load_truth(default)["noise_scale"] == 1.0 and load_truth(default)["noise_dist"] == "mixed"
    )
    ref = make_synthetic_panel(300, seed=1, noise_scale=3, noise_dist="gaussian")
    assert truth["noise_std"] == pytest.approx(ref.noise_std, rel=1e-12)
    back = pd.read_csv(noisy)
    np.testing.assert_allclose(back["E1"], ref.frame["E1"], rtol=1e-12)

    stamp = noisy.stat().st_mtime_ns
    assert (
        ensure_synthetic_csv(base, n_rows=300, seed=1, noise_scale=3.0, noise_dist="gaussian")
        == noisy
    )
    assert noisy.stat().st_mtime_ns == stamp  # cached, not remade

    panel = panel_from_config(
        {
            "kind": "synthetic",
            "n_rows": 300,
            "seed": 1,
            "path": str(base),
            "noise_scale": 3,
            "noise_dist": "gaussian",
            "window_size": 20,
        }
    )
    assert panel.source.endswith("synthetic_n300_seed1_noise3_gaussian.csv")


def test_config_rejects_bad_knobs_with_a_clear_error(tmp_path):
    from mamba_denoiser.data.panel import PanelError
    from mamba_denoiser.data.source import ensure_synthetic_csv

    with pytest.raises(PanelError, match="data.noise_dist"):
        ensure_synthetic_csv(tmp_path / "x.csv", n_rows=300, noise_dist="laplace")
    with pytest.raises(PanelError, match="data.noise_scale"):
        ensure_synthetic_csv(tmp_path / "x.csv", n_rows=300, noise_scale=-2)
    assert not list(tmp_path.iterdir())
