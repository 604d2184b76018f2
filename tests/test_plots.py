"""plot_denoised_examples on a tiny synthetic input: layout, residual, time axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mamba_denoiser import plots  # noqa: E402

T = 500


def _series(seed=0):
    rng = np.random.default_rng(seed)
    clean = np.cumsum(rng.standard_normal(T)) * 0.1
    raw = clean + 0.5 * rng.standard_normal(T)
    den = clean + 0.1 * rng.standard_normal(T)
    return raw, den, clean


@pytest.fixture
def captured(monkeypatch):
    """The figure plot_denoised_examples builds, kept open (``_save`` closes it)."""
    figs = []

    def keep(fig, path):
        figs.append(fig)
        fig.canvas.draw()
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield figs
    for f in figs:
        plt.close(f)


def _plot(ids, captured, tmp_path, clean=True, **kw):
    raw_a, den_a, clean_a = _series(0)
    raw_b, den_b, _ = _series(1)
    plots.plot_denoised_examples(
        ids,
        {"a": raw_a, "b": raw_b},
        {"a": den_a, "b": den_b},
        tmp_path / "x.png",
        clean={"a": clean_a} if clean else None,
        **kw,
    )
    return captured[-1], (raw_a, den_a, clean_a, raw_b, den_b)


def _line(ax, n=0):
    return ax.get_lines()[n]


def test_layout_residuals_and_zoom(captured, tmp_path):
    fig, (raw_a, den_a, clean_a, raw_b, den_b) = _plot(np.arange(T), captured, tmp_path)
    axes = np.array(fig.axes).reshape(4, 2)  # 2 features x (view, residual) x (400, zoom)
    assert len(fig.axes) == 8
    # long view: the last 400 rows; zoom: the last 100
    x_long = _line(axes[0, 0]).get_xdata()
    x_zoom = _line(axes[0, 1]).get_xdata()
    np.testing.assert_array_equal(x_long, np.arange(T - 400, T))
    np.testing.assert_array_equal(x_zoom, np.arange(T - 100, T))
    # residuals: against the clean values where known (a), else against the raw (b)
    res_a = [ln for ln in axes[1, 0].get_lines() if len(ln.get_xdata()) == 400][0]
    np.testing.assert_allclose(res_a.get_ydata(), (den_a - clean_a)[-400:])
    res_b = [ln for ln in axes[3, 1].get_lines() if len(ln.get_xdata()) == 100][0]
    np.testing.assert_allclose(res_b.get_ydata(), (den_b - raw_b)[-100:])
    assert "clean" in axes[1, 0].get_ylabel() and "observed" in axes[3, 0].get_ylabel()


def test_text_dates_become_a_date_axis(captured, tmp_path):
    ids = np.array([d.strftime("%Y-%m-%d") for d in pd.bdate_range("2020-01-03", periods=T)])
    fig, _ = _plot(ids.astype(object), captured, tmp_path)
    for ax in fig.axes:
        assert isinstance(ax.xaxis.get_major_locator(), mdates.DateLocator)
        assert len(ax.get_xticks()) <= 8
    x = _line(fig.axes[0]).get_xdata()
    assert pd.Timestamp(x[-1]) == pd.Timestamp(ids[-1])


def test_text_ids_that_are_not_dates_get_a_few_labelled_ticks(captured, tmp_path):
    ids = np.array([f"day-{i:04d}x" for i in range(T)], dtype=object)
    fig, _ = _plot(ids, captured, tmp_path, clean=False)
    for ax in fig.axes:
        ticks = ax.get_xticks()
        assert 2 <= len(ticks) <= 8  # not one categorical tick per row
        lo, hi = ax.get_xlim()
        labels = [t.get_text() for t, v in zip(ax.get_xticklabels(), ticks) if lo <= v <= hi]
        assert all(lab == "" or lab in set(ids) for lab in labels)
    bottom = fig.axes[2]  # a residual axis shows its labels
    assert any(t.get_text().startswith("day-") for t in bottom.get_xticklabels())


def test_time_axis_keeps_numbers_and_parses_dates():
    x, labels = plots.time_axis(np.arange(5))
    assert labels is None and x.dtype.kind in "iu"
    x, labels = plots.time_axis(np.array(["1", "2", "3"], dtype=object))
    assert labels is None and list(x) == [1, 2, 3]
    x, labels = plots.time_axis(np.array(["2021-02-01", "2021-02-02"], dtype=object))
    assert labels is None and x.dtype.kind == "M"
    x, labels = plots.time_axis(np.array(["a", "b"], dtype=object))
    assert list(x) == [0, 1] and labels == ["a", "b"]


def test_writes_a_png(tmp_path):
    raw, den, clean = _series()
    path = plots.plot_denoised_examples(
        np.arange(T), {"a": raw}, {"a": den}, tmp_path / "p.png", clean={"a": clean}
    )
    assert path.stat().st_size > 0
