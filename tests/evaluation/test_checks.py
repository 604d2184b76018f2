"""The exact leakage checks (evaluation/checks.py) on a tiny trained sweep: the honest
serving path passes all of them, and each injected leak is caught. Each injected leak
also passes the two cuts the evaluation used before (a third and two thirds into the test
split, values only): that is the gap these checks close."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_denoiser import inference
from mamba_denoiser.errors import LeakageError
from mamba_denoiser.evaluation import checks, leakage
from mamba_denoiser.inference import plan as plan_mod
from tests.helpers import WINDOW, train_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from mamba_denoiser.artifacts import load_models
    from mamba_denoiser.data.panel import load_panel

    trained = train_sweep(tmp_path_factory.mktemp("checks"), directions=("causal",))
    models = load_models(trained["root"] / "causal")
    panel = load_panel(trained["csv"], window_size=WINDOW)
    names = [f for m in models.values() for f in m.features]
    return models, panel, names


def _run(sweep):
    """(run every check, run the old two-cut check) on the current inference code."""
    from mamba_denoiser.inference.panel import denoise_panel

    models, panel, names = sweep
    den = denoise_panel(models, panel.frame, panel.bounds, quiet=True, alone=True)
    fams = sorted(den.alone)
    serve = checks.serve_fn(models, names, fams, gate=True)
    x = panel.frame[names].to_numpy(dtype=np.float64)
    base = checks.served_from(den, names, fams, x)
    replay = {cid: r.info["decisions"] for cid, r in den.clusters.items()}

    def new():
        args = (serve, panel.frame, names, panel.bounds, WINDOW, base, replay)
        return checks.run_checks(*args)

    def old():
        e, f = panel.bounds["test"]

        def full(v):
            frame = panel.frame.copy()
            frame[names] = v
            return serve(frame, panel.bounds).out

        cuts = [e + (f - e) // 3, e + 2 * (f - e) // 3]
        leakage.check_future_perturbation(full, x, cuts=cuts, base=base.out)

    return new, old


def _leaky(monkeypatch, edit):
    """inference.denoise_cluster with ``edit(raw, result, kwargs)`` applied to its output."""
    real = inference.denoise_cluster

    def wrapped(model, raw, **kw):
        res = real(model, raw, **kw)
        edit(raw, res, kw)
        return res

    monkeypatch.setattr(inference, "denoise_cluster", wrapped)


def test_the_honest_serving_path_passes_every_check(sweep):
    new, _ = _run(sweep)
    done = new()
    assert [d["check"] for d in done] == [
        "end to end",
        "decisions held",
        "future missingness",
        "shorter panel",
    ]
    _, panel, _ = sweep
    t_cuts = done[0]["cuts"]
    e, f = panel.bounds["test"]
    assert 10 <= len(t_cuts) <= 20 and len(panel.frame) - 2 in t_cuts
    assert min(t_cuts) - e < (f - e) / 8  # spread over the whole test split
    assert {c % (WINDOW // 2) for c in t_cuts} >= {WINDOW // 2 - 1, 0, 1}  # chunk phases


def test_a_one_row_look_ahead_at_late_test_rows_is_caught(sweep, monkeypatch):
    def edit(raw, res, kw):
        late = len(raw) - 12
        res.mean[late:-1] += 1e-3 * np.nan_to_num(raw[late + 1 :])

    _leaky(monkeypatch, edit)
    new, old = _run(sweep)
    old()  # missed before: no cut after the first two thirds of the test split
    with pytest.raises(LeakageError, match="end to end"):
        new()


def test_a_dependence_on_future_missingness_is_caught(sweep, monkeypatch):
    def edit(raw, res, kw):
        res.mean[:-1] += 1e-3 * np.isnan(raw[1:])

    _leaky(monkeypatch, edit)
    new, old = _run(sweep)
    old()  # missed before: values were perturbed, never the NaN layout
    with pytest.raises(LeakageError, match="future missingness"):
        new()


def test_a_decision_read_from_test_rows_is_caught(sweep, monkeypatch):
    """The gate scores the validation rows and the first rows of the test split."""
    _, panel, _ = sweep
    e = panel.bounds["test"][0]
    real = inference.denoise_cluster

    def wrapped(model, raw, gate_rows=None, **kw):
        if gate_rows is not None:
            gate_rows = (gate_rows[0], e + 20)
        return real(model, raw, gate_rows=gate_rows, **kw)

    monkeypatch.setattr(inference, "denoise_cluster", wrapped)
    new, old = _run(sweep)
    old()  # missed before: both cuts lie after the rows it reads
    with pytest.raises(LeakageError, match="end to end"):
        new()


def test_an_output_that_depends_on_the_panel_length_is_caught(sweep, monkeypatch):
    """The serving plan before this check existed: a tail chunk ending at the last row."""

    def old_plan(n_rows, window, anchor_len, mode, direction):
        starts, rows, pos, w_idx = real_plan(n_rows, window, anchor_len, mode, direction)
        if mode != "causal" or direction != "causal" or starts.max() + window <= n_rows:
            return starts, rows, pos, w_idx
        last = len(starts) - 1  # the padded chunk, moved back to end at the last row
        starts = starts.copy()
        shift = starts[last] + window - n_rows
        starts[last] -= shift
        pos = np.where(w_idx == last, pos + shift, pos)
        return starts, rows, pos, w_idx

    real_plan = plan_mod.serving_plan
    monkeypatch.setattr(plan_mod, "serving_plan", old_plan)
    new, old = _run(sweep)
    old()  # missed before: perturbing values never changes the panel's length
    with pytest.raises(LeakageError, match="shorter panel"):
        new()
