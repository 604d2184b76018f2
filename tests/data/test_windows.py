"""Direct tests of the window algebra (data/windows.py) and the Scaler (data/scaler.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_denoiser.data.scaler import Scaler, fit_zscore
from mamba_denoiser.data.windows import (
    WindowDataset,
    fit_window_scale,
    gather_windows,
    normalise_windows,
    window_anchor,
    window_starts,
)
from mamba_denoiser.errors import PanelError


def test_window_starts_keep_mostly_observed_windows_inside_the_range():
    observed = np.ones((30, 2), bool)
    observed[:10, :] = False  # the first 10 rows missing
    starts = window_starts(observed, window=8, stride=2, start=0, stop=30, min_observed_frac=0.5)
    # a window needs >= 50 % observed cells: starts >= 6; and must end inside [0, 30)
    assert starts.tolist() == [6, 8, 10, 12, 14, 16, 18, 20, 22]
    assert window_starts(observed, window=8, start=25, stop=30).size == 0  # shorter than L


def test_anchor_is_the_head_mean_or_the_first_observation():
    z = torch.tensor([[[1.0, np.nan], [3.0, np.nan], [5.0, 7.0], [9.0, 11.0]]])  # (1, 4, 2)
    mask = ~torch.isnan(z)
    a = window_anchor(z, mask, anchor_len=2)
    # feature 0: mean of rows 0-1; feature 1 has nothing there: its first value (row 2)
    assert a.tolist() == [[[2.0, 7.0]]]
    w, a2 = normalise_windows(z, mask, torch.tensor([2.0, 4.0]), anchor_len=2)
    assert torch.equal(a, a2)
    torch.testing.assert_close(w[0, 3], torch.tensor([3.5, 1.0]))
    assert torch.isnan(w[0, 0, 1])  # NaN stays NaN


def test_a_windows_value_after_the_anchor_depends_on_earlier_rows_only():
    """The causal reading of the module docstring: changing rows > j moves nothing <= j."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 12, 2, generator=g)
    mask = torch.ones_like(z, dtype=torch.bool)
    w, _ = normalise_windows(z, mask, torch.ones(2), anchor_len=4)
    z2 = z.clone()
    z2[:, 8:] += 5.0
    w2, _ = normalise_windows(z2, mask, torch.ones(2), anchor_len=4)
    assert torch.equal(w[:, :8], w2[:, :8])


def test_window_scale_makes_train_windows_unit_rms_and_dataset_gathers_them():
    rng = np.random.default_rng(0)
    z = np.cumsum(rng.standard_normal((400, 3)), axis=0) * np.array([1.0, 10.0, 0.1])
    starts = np.arange(0, 400 - 20, 5)
    scale = fit_window_scale(z, starts, 20, anchor_len=5)
    ds = WindowDataset(z, starts, 20, scale=scale, anchor_len=5)
    batch = ds.__getitems__(list(range(len(ds))))
    x = batch["x"].double()
    rms = x.square().mean((0, 1)).sqrt()
    torch.testing.assert_close(rms, torch.ones(3, dtype=torch.float64), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(
        batch["x"][0] * torch.as_tensor(scale, dtype=torch.float32) + batch["anchor"][0],
        gather_windows(torch.as_tensor(z, dtype=torch.float32), torch.tensor([0]), 20)[0],
    )


def _raw(n=300, seed=1):
    rng = np.random.default_rng(seed)
    raw = np.cumsum(rng.standard_normal((n, 2)), axis=0) * np.array([100.0, 0.01]) + 7.0
    raw[:40, 1] = np.nan  # a late start
    return raw


def test_scaler_fits_train_rows_only_and_inverts_exactly():
    raw = _raw()
    train = (0, 200)
    sc = Scaler.zscore(raw, train, anchor_len=5)
    later = raw.copy()
    later[200:] *= 50.0  # anything after the train split
    assert np.array_equal(Scaler.zscore(later, train, anchor_len=5).mean, sc.mean)
    z = sc.to_z(raw)
    np.testing.assert_allclose(np.nanmean(z[:200], 0), 0.0, atol=1e-6)
    starts = np.arange(40, 200 - 20, 3)
    sc = sc.with_window_scale(z, starts, 20)
    zt = torch.as_tensor(z)
    zw = gather_windows(zt, torch.tensor([50, 120, 250]), 20)
    mask = ~torch.isnan(zw)
    w, a = sc.to_windows(zw, mask)
    back = sc.to_native(sc.from_windows(w, a).double().numpy())
    want = raw[np.array([50, 120, 250])[:, None] + np.arange(20)]
    np.testing.assert_allclose(back, want, rtol=1e-5)
    np.testing.assert_allclose(sc.unit, sc.std * sc.window_scale)


def test_scaler_round_trips_its_checkpoint_record_and_names_a_difference():
    raw = _raw()
    sc = Scaler.zscore(raw, (0, 200), anchor_len=5)
    sc = sc.with_window_scale(sc.to_z(raw), np.arange(40, 180, 3), 20)
    back = Scaler.from_dict(sc.to_dict(), n_features=2)
    assert back.anchor_len == 5 and all(
        np.array_equal(getattr(back, k), getattr(sc, k)) for k in ("mean", "std", "window_scale")
    )
    assert sc.differs_from(sc.to_dict()) is None
    other = Scaler.zscore(raw, (0, 150), anchor_len=5).to_dict()
    assert sc.differs_from(other) == "mean"
    with pytest.raises(ValueError, match="its 3 features"):
        Scaler.from_dict(sc.to_dict(), n_features=3)
    with pytest.raises(KeyError):
        Scaler.from_dict({"mean": [0.0]})


def test_a_feature_without_two_train_rows_cannot_be_scaled():
    raw = _raw()
    raw[:250, 0] = np.nan
    with pytest.raises(PanelError, match="positions \\[0\\]"):
        fit_zscore(raw, (0, 200))


def test_anchor_len_zero_is_a_constant_anchor_at_the_train_mean():
    z = torch.tensor([[[1.0, np.nan], [3.0, 2.0]]])
    mask = ~torch.isnan(z)
    assert torch.equal(window_anchor(z, mask, anchor_len=0), torch.zeros(1, 1, 2))
    w, _ = normalise_windows(z, mask, torch.tensor([2.0, 1.0]), anchor_len=0)
    torch.testing.assert_close(w[0, 1], torch.tensor([1.5, 2.0]))  # plain z / c
