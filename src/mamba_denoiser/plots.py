"""Figures for run directories. Headless (Agg); every function writes one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TYPE_COLOURS = {"mean_reverting": "tab:blue", "trending": "tab:red", "random_walk": "tab:green"}


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # figures built with layout="constrained" keep it
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_k_selection(curve: Sequence[dict], criterion: str, chosen_k: int, path) -> Path:
    """Selection criterion (and inertia, for the elbow) against K, chosen K marked."""
    ks = [row["k"] for row in curve]
    keys = [k for k in curve[0] if k != "k" and isinstance(curve[0][k], (int, float))]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.2 * max(len(keys), 1), 3.2))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys):
        ax.plot(ks, [row[key] for row in curve], "o-")
        ax.axvline(chosen_k, color="k", ls="--", lw=1)
        ax.set_xlabel("K")
        ax.set_title(key)
    fig.suptitle(f"K selection ({criterion}): K={chosen_k}")
    return _save(fig, path)


def plot_feature_map(z: np.ndarray, labels: np.ndarray, names: Sequence[str], types: dict, path):
    """Features on the first two principal components of their standardised statistics."""
    from sklearn.decomposition import PCA

    xy = PCA(n_components=2, random_state=0).fit_transform(z) if z.shape[1] >= 2 else z
    fig, ax = plt.subplots(figsize=(7, 5.5))
    cmap = plt.get_cmap("tab10")
    for cid in np.unique(labels):
        sel = labels == cid
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            s=28,
            color=cmap(int(cid) % 10),
            label=f"c{cid} {types[int(cid)]} ({sel.sum()})",
        )
    for (x, y), n in zip(xy, names):
        ax.annotate(n, (x, y), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Features by cluster (PCA of standardised statistics)")
    return _save(fig, path)


def plot_cluster_examples(frame, clusters: Sequence[dict], id_col: str, path, per_cluster: int = 3):
    """A few member series per cluster, each standardised, against the time index."""
    fig, axes = plt.subplots(len(clusters), 1, figsize=(10, 1.9 * len(clusters)), squeeze=False)
    t, labels = time_axis(frame[id_col].to_numpy())
    for ax, c in zip(axes[:, 0], clusters):
        _format_time_axis(ax, t, labels)
        for f in c["features"][:per_cluster]:
            v = frame[f].to_numpy(dtype=float)
            ax.plot(t, (v - np.nanmean(v)) / (np.nanstd(v) + 1e-12), lw=0.6, label=f)
        ax.set_title(
            f"c{c['id']}: {c['type']} ({len(c['features'])} features)",
            fontsize=9,
            color=TYPE_COLOURS.get(c["type"], "k"),
        )
        ax.legend(fontsize=6, loc="upper left", ncol=per_cluster)
    return _save(fig, path)


def validation_window_figure(x0, x0_hat, mask, names, *, n_features: int = 3, title: str = ""):
    """Observed window vs denoised estimate for the first few features; returns the figure."""
    F = min(n_features, x0.shape[1])
    fig, axes = plt.subplots(F, 1, figsize=(7, 1.8 * F), squeeze=False)
    t = np.arange(x0.shape[0])
    for f, ax in enumerate(axes[:, 0]):
        obs = np.where(mask[:, f], x0[:, f], np.nan)
        ax.plot(t, obs, color="0.6", lw=0.9, label="observed")
        ax.plot(
            t,
            np.where(mask[:, f], x0_hat[:, f], np.nan),
            color="tab:red",
            lw=1.2,
            label="denoised x̂0",
        )
        ax.set_ylabel(names[f], fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def time_axis(ids) -> tuple[np.ndarray, Sequence[str] | None]:
    """(x values, tick labels or None) for an id column: numbers and datetimes as they
    are; text ids that parse as dates (e.g. '2020-01-03') as datetimes; other text as the
    row position, labelled with the ids by ``label_positions`` (a categorical axis would
    put one tick per row)."""
    import pandas as pd

    values = np.asarray(ids)
    if values.dtype.kind in "iufM":
        return values, None
    text = pd.Series(values).astype(str).str.strip()
    try:
        return pd.to_numeric(text).to_numpy(), None
    except (ValueError, TypeError):
        pass
    import warnings

    for kw in ({"format": "ISO8601"}, {}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "could not infer format": we try, not guess
                dates = pd.to_datetime(text, **kw)
            if not dates.isna().any():
                return dates.to_numpy(), None
        except (ValueError, TypeError, OverflowError):
            continue
    return np.arange(len(values)), list(text)


def label_positions(ax, labels: Sequence[str], max_ticks: int = 6) -> None:
    """A few ticks on a row-position axis, labelled with the ids at those rows."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    def fmt(x, _pos):
        i = int(round(x))
        return labels[i] if 0 <= i < len(labels) and abs(x - i) < 1e-6 else ""

    ax.xaxis.set_major_locator(MaxNLocator(nbins=max_ticks, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(fmt))


def _format_time_axis(ax, x: np.ndarray, labels) -> None:
    import matplotlib.dates as mdates

    if labels is not None:
        label_positions(ax, labels, max_ticks=4)
    elif x.dtype.kind == "M":
        locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))


def plot_denoised_examples(
    ids: np.ndarray,
    raw: dict[str, np.ndarray],
    denoised: dict[str, np.ndarray],
    path,
    *,
    lower: dict[str, np.ndarray] | None = None,
    upper: dict[str, np.ndarray] | None = None,
    clean: dict[str, np.ndarray] | None = None,
    last: int = 400,
    zoom: int = 100,
    title: str = "",
) -> Path:
    """Per feature of `denoised`: observed, denoised (band) and clean (if known) over the
    last `last` rows, the last `zoom` rows beside it, and under both the residual:
    denoised − clean where clean values are known, else denoised − observed (minus what
    was removed). Four axes per feature; a date axis when the ids are dates."""
    names = list(denoised)
    x_all, labels = time_axis(ids)
    fig, axes = plt.subplots(
        2 * len(names),
        2,
        figsize=(12, 3.3 * len(names)),
        squeeze=False,
        layout="constrained",  # a residual sits close under its view, not a row apart
        gridspec_kw={"width_ratios": [3, 1], "height_ratios": [2, 1] * len(names)},
    )
    n = len(x_all)
    for k, f in enumerate(names):
        top, bottom = axes[2 * k], axes[2 * k + 1]
        c = None if clean is None else clean.get(f)
        if c is not None and not np.isfinite(np.asarray(c, dtype=float)[-last:]).any():
            c = None  # no clean value in the shown rows: residual against the observed
        ref = raw[f] if c is None else c
        for col, rows in enumerate((last, zoom)):
            sl = slice(max(n - rows, 0), n)
            x = x_all[sl]
            ax, rax = top[col], bottom[col]
            ax.plot(x, raw[f][sl], color="0.6", lw=0.8, label="observed")
            if c is not None:
                ax.plot(x, c[sl], color="k", lw=1.0, label="clean")
            if lower is not None and upper is not None and f in lower and f in upper:
                ax.fill_between(x, lower[f][sl], upper[f][sl], color="tab:blue", alpha=0.2)
            ax.plot(x, denoised[f][sl], color="tab:blue", lw=1.0, label="denoised")
            rax.axhline(0.0, color="k", lw=0.6)
            rax.plot(x, denoised[f][sl] - ref[sl], color="tab:purple", lw=0.8)
            rax.sharex(ax)
            ax.tick_params(labelbottom=False)
            _format_time_axis(rax, x_all, labels)
            if col == 0:
                ax.set_title(f, fontsize=9, loc="left")
                what = "clean" if c is not None else "observed"
                rax.set_ylabel(f"denoised −\n{what}", fontsize=7)
            else:
                ax.set_title(f"last {min(zoom, n)} rows", fontsize=8, loc="left")
        if zoom < min(last, n):  # the zoomed rows, marked on the long view
            top[0].axvspan(x_all[n - zoom], x_all[n - 1], color="tab:orange", alpha=0.08)
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_grouped_bars(table, path, *, title: str = "", ylabel: str = "SNR gain (dB)") -> Path:
    """table: DataFrame, rows = groups (x axis), columns = methods (bars)."""
    groups, methods = list(table.index), list(table.columns)
    x = np.arange(len(groups))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) * max(len(methods), 1) / 3), 3.6))
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, table[m].to_numpy(), width, label=m)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=3)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_cumulative_returns(ids: np.ndarray, curves: dict[str, np.ndarray], path, title="") -> Path:
    """curves: name -> (T,) strategy returns (NaN outside the test blocks); cumulative sums."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x, labels = time_axis(ids)
    for name, r in curves.items():
        ok = np.isfinite(r)
        ax.plot(x[ok], np.cumsum(r[ok]), lw=1.0, label=name)
    _format_time_axis(ax, x, labels)
    ax.set_ylabel("cumulative return")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def example_features(names: Sequence[str], ftype: dict, changed: set) -> list[str]:
    """One changed feature per cluster type (the first in ``names``), types in the order
    they first appear."""
    picks = dict.fromkeys(
        next((f for f in names if ftype[f] == t and f in changed), None)
        for t in dict.fromkeys(ftype.values())
    )
    return [f for f in picks if f is not None]


def plot_evaluation(
    out: Path,
    ids: np.ndarray,
    names: Sequence[str],
    ftype: dict,
    raw: np.ndarray,  # (T, F) observed
    truth,  # evaluation.truth.Truth, or None without clean values
    label: str,
    res,  # the PanelResult of the method named `label`
    snr_by_family=None,  # the causal SNR gain table by family, or None
    curves: dict[str, np.ndarray] | None = None,
) -> None:
    """evaluate.py's plots in ``out``: SNR gain by family, cumulative strategy returns, one
    changed feature per cluster type (observed, denoised, clean where known)."""
    out = Path(out)
    if snr_by_family is not None:
        t = snr_by_family.drop(columns=["features"], errors="ignore")
        keep = [c for c in t.columns if "alone" not in c]  # a readable number of bars
        plot_grouped_bars(
            t[keep],
            out / "snr_causal_by_family.png",
            title="Causal SNR gain by planted family (test rows)",
        )
    if curves:
        plot_cumulative_returns(
            ids,
            curves,
            out / "cumulative_returns.png",
            title="Strategy excess return, out of sample",
        )
    changed = {
        f for r in res.clusters.values() for f, v in r.info["features"].items() if v["denoised"]
    }
    picks = example_features(names, ftype, changed)
    if not picks:
        return
    clean = None
    if truth is not None:  # only where clean values are known; else the residual is vs raw
        clean = {f: truth.clean[:, names.index(f)] for f in picks if f in truth.known}
    plot_denoised_examples(
        ids,
        {f: raw[:, names.index(f)] for f in picks},
        {f: res.mean[f] for f in picks},
        out / "examples.png",
        lower={f: res.lower[f] for f in picks} if res.lower else None,
        upper={f: res.upper[f] for f in picks} if res.upper else None,
        clean=clean,
        title=f"{label}: one changed feature per cluster type, last 400 rows (right: last "
        "100); below: residual",
    )
