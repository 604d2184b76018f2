"""Exact leakage checks of the whole causal serving path, over every served row.

evaluate.py runs them on every evaluation; a failure raises LeakageError and stops it.
Each check changes something after a cut row t and asks that every output on rows <= t
(the chosen mix and each candidate family alone) and every decision (σ, whiteness, the
t grid, the fits, the gate's validation scores and choices) stay bit-identical:

=========================  =======================================================  ======
check                      what changes after the cut                               cuts
=========================  =======================================================  ======
end to end                 values (noise at 10x the column's spread; NaN kept);    test
                           every decision re-fitted                                 split
decisions held             values; the decisions of the unperturbed run replayed   train,
                           (they are fitted on these rows by design)                val
future missingness         a third of the observed cells become NaN                 test
shorter panel              the rows are gone: the panel ends at the cut (two cuts   test
                           mid-chunk), the split bounds passed as they were
=========================  =======================================================  ======

The test-split cuts are spread over the whole split (``N_CUTS`` of them), at every phase
of the causal plan's chunks (cut mod L/2 in {L/2 - 1, 0, 1}) and at the last row but one,
so no served row is far from a cut. Cost: a run at cut t serves only the rows
[t - L + 1, t] and the validation rows the gate reads (``denoise_panel(rows=...)``).
That is exact: a row's value depends on its own window only (rows >= t - L + 1 are the
ones whose windows can reach past t), and a decision that read any other row would see
it missing and differ from the whole run's, which the check compares.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mamba_denoiser.errors import LeakageError

N_CUTS = 12  # evenly spread over the test split, before the phase and last-row extras
SCALE = 10.0  # perturbed values: noise at this many column standard deviations
DROP = 1 / 3  # the share of observed cells after a cut that the missingness check hides

log = logging.getLogger("mamba_denoiser")


@dataclass
class Served:
    """One run's outputs (T, F * (1 + families)): the mix, then each family alone; and
    its record: per cluster the decisions and the gate's validation scores, as JSON."""

    out: np.ndarray
    record: str
    outputs: tuple[str, ...] = ("the chosen mix",)  # what each block of F columns is


def serve_fn(models, names: list[str], families: list[str], **kw) -> Callable[..., Served]:
    """(frame, bounds, rows=None, replay=None) -> Served through inference.denoise_panel
    with the run's options ``kw`` (mode, sampler, gate, ...), each family alone. SDEdit
    draws its noise per batch of windows, so it is always served whole (slower, exact)."""
    from mamba_denoiser.inference.panel import denoise_panel

    whole = kw.get("sampler") == "sdedit"

    def serve(frame, bounds, rows=None, replay=None) -> Served:
        rows = None if whole else rows
        r = denoise_panel(
            models, frame, bounds, quiet=True, alone=True, rows=rows, replay=replay, **kw
        )
        return served_from(r, names, families, frame[names].to_numpy(dtype=np.float64))

    return serve


def alone_output(res, family: str, names: list[str], raw: np.ndarray) -> np.ndarray:
    """(T, F) a PanelResult's candidate family alone; raw for features it cannot serve."""
    got = res.alone.get(family, {})
    return np.column_stack([got.get(f, raw[:, j]) for j, f in enumerate(names)])


def served_from(res, names: list[str], families: list[str], raw: np.ndarray) -> Served:
    """A PanelResult as Served (a family that cannot serve a feature leaves it raw)."""
    cols = [res.stack("mean", names)]
    cols += [alone_output(res, fam, names, raw) for fam in families]
    record = {
        cid: {
            "decisions": r.info["decisions"],
            "gain_db_val_by_candidate": {
                f: v["gain_db_val_by_candidate"] for f, v in r.info["features"].items()
            },
        }
        for cid, r in res.clusters.items()
    }
    labels = ("the chosen mix", *(f"{fam} alone" for fam in families))
    return Served(np.column_stack(cols), json.dumps(record, sort_keys=True), labels)


def cuts_in_test_split(bounds: dict, n_rows: int, window: int, n: int = N_CUTS) -> list[int]:
    """Cuts over the whole test split: ``n`` evenly spread, each moved to a chunk phase in
    turn (cut mod L/2 = L/2 - 1, 0, 1), and the last row but one."""
    e, f = bounds["test"]
    h = max(window // 2, 1)
    cuts = set()
    for i, c in enumerate(np.linspace(e, f - 2, n).astype(int)):
        phase = (h - 1, 0, 1)[i % 3]
        c = (c // h) * h + phase
        cuts.add(int(min(max(c, e), n_rows - 2)))
    cuts.add(n_rows - 2)
    return sorted(cuts)


def fit_cuts(bounds: dict) -> list[int]:
    """Cuts inside the rows the decisions are fitted on: mid-train, mid-validation."""
    (a, b), (c, d) = bounds["train"], bounds["val"]
    return [(a + b) // 2, (c + d) // 2]


def perturb_values(x: np.ndarray, cut: int, rng: np.random.Generator) -> np.ndarray:
    """Rows > cut: every finite value replaced by noise around its column's mean."""
    with np.errstate(invalid="ignore"):
        center, spread = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    center = np.where(np.isfinite(center), center, 0.0)
    moved = x.copy()
    tail = moved[cut + 1 :]
    noise = center + SCALE * spread * rng.standard_normal(tail.shape)
    moved[cut + 1 :] = np.where(np.isfinite(tail), noise, tail)
    return moved


def perturb_missing(x: np.ndarray, cut: int, rng: np.random.Generator) -> np.ndarray:
    """Rows > cut: a share ``DROP`` of the observed cells become NaN (values unchanged)."""
    moved = x.copy()
    tail = moved[cut + 1 :]
    hide = np.isfinite(tail) & (rng.random(tail.shape) < DROP)
    moved[cut + 1 :] = np.where(hide, np.nan, tail)
    return moved


def compare(
    base: Served, got: Served, lo: int, cut: int, what: str, names: list[str], record=True
) -> None:
    """Raise LeakageError unless rows lo..cut of the outputs (and, with ``record``, the
    decisions and validation scores) agree."""
    a, b = base.out[lo : cut + 1], got.out[lo : cut + 1]
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if not same.all():
        r, c = np.argwhere(~same)[0]
        col = names[c % len(names)]
        output = base.outputs[c // len(names)]
        raise LeakageError(
            f"{what}: changing rows > {cut} changed {output} at row {lo + r}, column {col} "
            f"(|change| {np.nanmax(np.abs(a - b)):.3g}): the output looks ahead"
        )
    if record and got.record != base.record:
        raise LeakageError(
            f"{what}: changing rows > {cut} changed the decisions or the gate's validation "
            "scores: a decision reads rows after the validation split"
        )


def run_checks(
    serve: Callable[..., Served],
    frame: pd.DataFrame,
    names: list[str],
    bounds: dict,
    window: int,
    base: Served,
    replay: dict,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every check of the module docstring; raises LeakageError on the first failure.

    ``base``: the unperturbed run (every row served); ``replay``: its decisions per
    cluster. -> one record per check: name, cuts and seconds."""
    x = frame[names].to_numpy(dtype=np.float64)
    T = len(frame)
    rng = np.random.default_rng(seed)

    def with_x(v):
        f = frame.copy()
        f[names] = v
        return f

    def rows(cut):
        return (max(cut - window + 1, 0), cut + 1)

    done = []
    t_cuts, f_cuts = cuts_in_test_split(bounds, T, window), fit_cuts(bounds)
    mid = t_cuts[len(t_cuts) // 2]
    # shorter panels that end mid-chunk, where a plan that depends on the length would
    # move rows: ((t + 1) - L) mod L/2 != 0
    ragged = [c for c in t_cuts if (c + 1 - window) % max(window // 2, 1)] or t_cuts
    short = ragged[len(ragged) // 2 : len(ragged) // 2 + 2]
    plan = [
        ("end to end", t_cuts, lambda c: serve(with_x(perturb_values(x, c, rng)), bounds, rows(c))),
        (
            "decisions held",
            f_cuts,
            lambda c: serve(with_x(perturb_values(x, c, rng)), bounds, rows(c), replay),
        ),
        (
            "future missingness",
            [mid],
            lambda c: serve(with_x(perturb_missing(x, c, rng)), bounds, rows(c)),
        ),
        ("shorter panel", short, lambda c: serve(frame.iloc[: c + 1], bounds, rows(c))),
    ]
    from mamba_denoiser.progress import bar

    with bar("Leakage checks (cuts)", sum(len(cuts) for _, cuts, _ in plan)) as b:
        for what, cuts, run in plan:
            t0 = time.perf_counter()
            for c in cuts:
                got = run(c)
                if what == "shorter panel":  # its outputs end at the cut
                    got = Served(np.vstack([got.out, base.out[c + 1 :]]), got.record, got.outputs)
                # a replay re-fits nothing, so it has no validation scores to compare
                compare(base, got, rows(c)[0], c, what, names, record=what != "decisions held")
                b.advance()
            done.append({"check": what, "cuts": cuts, "seconds": time.perf_counter() - t0})
            if progress is not None:
                progress(f"{what}: {len(cuts)} cuts passed")
    return done


_DESCRIBED = {
    "end to end": "every decision re-fitted (σ, whiteness, fits, gate scores and choice "
    "compared too), values after the cut replaced",
    "decisions held": "inside the train and validation rows the decisions are fitted on; "
    "the decisions of the unperturbed run replayed",
    "future missingness": f"{DROP:.0%} of the observed cells after the cut hidden",
    "shorter panel": "the panel cut at the row, the split bounds passed as they were",
}


def method_checks(models, panel, names: list[str], res, label: str, **kw) -> list[str]:
    """Every check above over one denoiser method's whole causal path (the chosen mix and
    each candidate family alone): ``res`` its PanelResult on the whole panel, ``kw`` its
    options (gate, mode, sampler, seed, ...), ``label`` its name. Raises LeakageError;
    returns one line per passed check for the report."""
    seed = int(kw.get("seed", 0))
    fams = sorted(res.alone)
    raw = panel.frame[names].to_numpy(dtype=np.float64)
    serve = serve_fn(models, names, fams, **kw)
    base = served_from(res, names, fams, raw)
    replay = {cid: r.info["decisions"] for cid, r in res.clusters.items()}
    window = max(m.window for m in models.values())
    done = run_checks(serve, panel.frame, names, panel.bounds, window, base, replay, seed=seed)
    for d in done:
        log.info("  leakage, %s: %s passed (%.1fs)", label, d["check"], d["seconds"])
    what = ", ".join(["chosen mix", *[f"{f} alone" for f in fams]])
    return [
        f"exact, {d['check']} ({label}; {what}; {_DESCRIBED[d['check']]}; cuts at rows "
        f"{d['cuts']}): rows <= cut bit-identical"
        for d in done
    ]
