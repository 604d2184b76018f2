"""denoise.py: the output contract, causality for every sampler, modes, and refusals.

Checkpoints are trained once per module on the small panel (tiny models, a few steps);
denoising goes through run_denoise with configs composed from the real conf/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.denoise_job import run_denoise
from mamba_denoiser.inference import serving_plan
from tests.helpers import CLUSTERS, WINDOW, denoise, train_sweep
from tests.helpers import compose_config as _compose
from tests.helpers import data_overrides as _data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CSV, its clusters.json and causal + bidirectional checkpoints of 2 clusters."""
    return train_sweep(tmp_path_factory.mktemp("denoise"))


def _text(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_output_contract(trained, tmp_path):
    info = denoise(trained, tmp_path / "run")
    out, inp = _text(tmp_path / "run" / "denoised.csv"), _text(trained["csv"])
    assert list(out.columns) == list(inp.columns) and len(out) == len(inp)
    features = [f for _, _, fs in CLUSTERS for f in fs]
    untouched = [c for c in inp.columns if c not in features]  # id, targets, passthrough D1
    assert "date_id" in untouched and "forward_returns" in untouched and "D1" in untouched
    pd.testing.assert_frame_equal(out[untouched], inp[untouched])  # byte-identical text
    for f in features:
        assert ((out[f] == "") == (inp[f] == "")).all()  # NaN stays NaN
    changed = sum(int((out[f] != inp[f]).sum()) for f in features)
    assert changed > 0  # something was denoised
    assert info["uses_future_rows"] is False and info["mode"] == "causal"
    s = json.loads((tmp_path / "run" / "denoise_summary.json").read_text())
    assert {c["cluster"] for c in s["clusters"]} == {"c0", "c1"}


@pytest.mark.parametrize(
    "sampler, direction",
    [
        ("posterior_mean", "causal"),
        ("sdedit", "causal"),
        ("posterior_mean", "bidirectional"),
    ],
)
def test_causal_output_ignores_future_rows(trained, tmp_path, sampler, direction):
    """Rows <= t of the causal output are bit-identical whatever rows > t hold."""
    t = 540  # inside the test split: what was fitted on train/val rows is unchanged
    frame = pd.read_csv(trained["csv"])
    rng = np.random.default_rng(1)
    for f in ("E1", "E2", "M1", "M2"):
        frame.loc[t + 1 :, f] = frame.loc[t + 1 :, f] + 5 * rng.standard_normal(len(frame) - t - 1)
    perturbed = tmp_path / "perturbed.csv"
    frame.to_csv(perturbed, index=False)
    a = denoise(trained, tmp_path / "a", f"sampler={sampler}", direction=direction)
    # another file, but the rows up to the end of validation are the trained ones (their
    # digest): not other data, so no warning (artifacts.other_data)
    denoise(trained, tmp_path / "b", f"sampler={sampler}", csv=perturbed, direction=direction)
    out_a, out_b = _text(tmp_path / "a" / "denoised.csv"), _text(tmp_path / "b" / "denoised.csv")
    pd.testing.assert_frame_equal(out_a.iloc[: t + 1], out_b.iloc[: t + 1])
    assert not out_a.iloc[t + 1 :].equals(out_b.iloc[t + 1 :])
    assert a["clusters"][0]["direction"] == direction


def test_offline_mode_is_labelled_and_bands_bracket_the_mean(trained, tmp_path):
    info = denoise(
        trained, tmp_path / "run", "mode=offline", "bands=true", direction="bidirectional"
    )
    assert info["uses_future_rows"] is True
    assert not (tmp_path / "run" / "denoised.csv").exists()  # never mistaken for causal
    mid = pd.read_csv(tmp_path / "run" / "denoised_offline.csv")
    lo = pd.read_csv(tmp_path / "run" / "denoised_offline_lower.csv")
    hi = pd.read_csv(tmp_path / "run" / "denoised_offline_upper.csv")
    for f in ("E1", "M1"):
        ok = mid[f].notna()
        assert (lo[f][ok] <= mid[f][ok] + 1e-9).all() and (mid[f][ok] <= hi[f][ok] + 1e-9).all()


def test_missing_cluster_checkpoint_is_refused_unless_partial(trained, tmp_path, capsys):
    ck = tmp_path / "ck"
    shutil.copytree(trained["root"] / "causal" / "0_c0", ck / "0_c0")
    ov = [
        *_data(trained["csv"]),
        f"clusters={trained['clusters']}",
        f"checkpoints={ck}",
        "plots=false",
        f"output={tmp_path / 'out.csv'}",
    ]
    with pytest.raises(SystemExit) as exc:
        run_denoise(_compose("denoise", ov, tmp_path / "run"))
    assert exc.value.code == 2 and "allow_partial=true" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "run").exists()
    info = run_denoise(_compose("denoise", [*ov, "allow_partial=true"], tmp_path / "run2"))
    assert info["left_raw"] == ["c1"]
    out, inp = _text(tmp_path / "out.csv"), _text(trained["csv"])
    pd.testing.assert_frame_equal(out[["M1", "M2"]], inp[["M1", "M2"]])


def test_unreadable_checkpoint_is_a_clear_error(trained, tmp_path, capsys):
    ck = tmp_path / "ck" / "0_c0" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "best-epoch000.ckpt").write_bytes(b"\x80\x04garbage")
    ov = [
        *_data(trained["csv"]),
        f"clusters={trained['clusters']}",
        f"checkpoints={tmp_path / 'ck'}",
        "plots=false",
    ]
    with pytest.raises(SystemExit):
        run_denoise(_compose("denoise", ov, tmp_path / "run"))
    assert "weights-only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sure_gate_passes_unhelpful_features_through_exactly(trained, tmp_path):
    info = denoise(trained, tmp_path / "run", "gate=true", "gate_margin_db=100")
    out, inp = _text(tmp_path / "run" / "denoised.csv"), _text(trained["csv"])
    pd.testing.assert_frame_equal(out, inp)  # nothing can gain 100 dB: all raw
    feats = [v for c in info["clusters"] for v in c["features"].values()]
    assert all(not v["denoised"] and "validation rows" in v["reason"] for v in feats)
    assert all(any(g is not None for g in v["gain_db_val_by_candidate"].values()) for v in feats)


def test_sure_estimates_the_risk_of_a_known_shrinkage():
    """d = a·y on y = s + n: the risk is (a-1)²v + a²σ²; SURE must find it from y alone."""
    from mamba_denoiser.inference import probe_divergence, sure_gain_db

    rng = np.random.default_rng(0)
    n, v, sigma, a = 200_000, 1.0, 0.5, 0.7
    s = rng.normal(0, np.sqrt(v), (n, 1))
    y = s + rng.normal(0, sigma, (n, 1))
    probe = rng.choice([-1.0, 1.0], size=y.shape)
    delta = 0.05 * sigma
    div = probe_divergence(a * y, a * (y + delta * probe), probe, delta)
    gain = sure_gain_db(y, a * y, div, np.array([sigma]))
    risk = (a - 1) ** 2 * v + a**2 * sigma**2
    assert gain[0] == pytest.approx(10 * np.log10(sigma**2 / risk), abs=0.05)
    true = 10 * np.log10(np.mean((y - s) ** 2) / np.mean((a * y - s) ** 2))
    assert gain[0] == pytest.approx(true, abs=0.05)


@pytest.mark.parametrize(
    "override, message",
    [("sigma={NOPE: 0.1}", "which no cluster denoises"), ("sigma={E1: -1}", "sigma.E1=-1")],
)
def test_bad_sigma_override_is_refused(trained, tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exc:
        denoise(trained, tmp_path / "run", override)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_guidance_is_refused_in_causal_mode(trained, tmp_path, capsys):
    with pytest.raises(SystemExit):
        denoise(trained, tmp_path / "run", "sampler=sdedit", "sampler.guidance=tv")
    assert "cannot be used in causal mode" in capsys.readouterr().err


@pytest.mark.parametrize("n_rows", [64, 97, 600])
def test_causal_serving_plan_serves_each_row_once_from_a_causal_position(n_rows):
    starts, rows, pos, w = serving_plan(n_rows, 16, 4, "causal", "causal")
    assert len(np.unique(rows)) == len(rows)  # each row once
    assert set(rows) == set(range(4, n_rows))  # all but the first anchor_len rows
    assert (pos >= 4).all()  # after the rows that set the window's level
    assert (starts[w] + pos == rows).all() and (starts % 8 == 0).all()  # regular chunks
    # the plan of a longer panel serves each of these rows from the same window position
    g_starts, g_rows, g_pos, g_w = serving_plan(n_rows + 5, 16, 4, "causal", "causal")
    keep = g_rows < n_rows
    np.testing.assert_array_equal(g_rows[keep], rows)
    np.testing.assert_array_equal(g_starts[g_w[keep]], starts[w])
    np.testing.assert_array_equal(g_pos[keep], pos)


def _recorded_clusters(trained, tmp_path: Path) -> Path:
    """The fixture's clusters.json as cluster.py writes it: with the data options recorded."""
    doc = json.loads(trained["clusters"].read_text())
    doc["source"]["data_config"] = {
        "kind": "csv",
        "path": str(trained["csv"]),
        "id_col": "date_id",
        "targets": ["forward_returns", "risk_free_rate", "market_forward_excess_returns"],
        "exclude": [],
        "window_size": WINDOW,
        "anchor_len": 4,
        "split": {"train": 0.7, "val": 0.15, "test": 0.15, "embargo": WINDOW},
        "max_discrete_values": 5,
        "min_train_obs": None,
        "interior_gaps": "mask",
    }
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps(doc))
    return path


def test_denoise_without_data_options_reads_the_recorded_data(trained, tmp_path):
    """No data options: the recorded file, window and split, not the built-in panel (which
    the conf default would generate); the output equals an explicit run's."""
    clusters = _recorded_clusters(trained, tmp_path)
    common = [
        f"clusters={clusters}",
        f"checkpoints={trained['root'] / 'causal'}",
        "plots=false",
        "gate=false",
        f"paths.data_dir={tmp_path / 'no_builtin'}",
    ]
    info = run_denoise(_compose("denoise", common, tmp_path / "a"))
    assert info["data"]["path"] == str(trained["csv"])
    assert not (tmp_path / "no_builtin").exists()  # the built-in panel was never generated
    run_denoise(_compose("denoise", [*common, *_data(trained["csv"])], tmp_path / "b"))
    assert (tmp_path / "a" / "denoised.csv").read_bytes() == (
        tmp_path / "b" / "denoised.csv"
    ).read_bytes()


def test_denoise_refuses_a_data_option_that_contradicts_the_record(trained, tmp_path, capsys):
    clusters = _recorded_clusters(trained, tmp_path)
    ov = [
        f"clusters={clusters}",
        f"checkpoints={trained['root'] / 'causal'}",
        "plots=false",
        "data=csv",
        f"data.path={trained['csv']}",
        "data.window_size=20",
    ]
    with pytest.raises(SystemExit) as exc:
        run_denoise(_compose("denoise", ov, tmp_path / "run"))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "data.window_size=20 (recorded: 16)" in err and str(clusters) in err
    assert not (tmp_path / "run").exists()


def test_a_copied_sweep_reads_its_own_checkpoints(trained, tmp_path, capsys):
    """summary.json records absolute paths; a copy must use the checkpoints beside it (a
    corrupted copy fails, rather than silently reading the originals)."""
    copy = tmp_path / "copy"
    shutil.copytree(trained["root"] / "causal", copy)
    assert list(copy.rglob("summary.json"))
    for ck in copy.rglob("*.ckpt"):
        ck.write_bytes(b"corrupted copy")
    ov = [
        *_data(trained["csv"]),
        f"clusters={trained['clusters']}",
        f"checkpoints={copy}",
        "plots=false",
    ]
    with pytest.raises(SystemExit) as exc:
        run_denoise(_compose("denoise", ov, tmp_path / "run"))
    assert exc.value.code == 2 and str(copy) in capsys.readouterr().err


def test_no_candidate_leaves_every_feature_raw_and_says_why(trained):
    from mamba_denoiser.artifacts import load_models
    from mamba_denoiser.data.panel import load_panel
    from mamba_denoiser.inference import denoise_cluster

    m = load_models(trained["root"] / "causal")[0]
    panel = load_panel(trained["csv"], window_size=WINDOW)
    raw = panel.frame[m.features].to_numpy(float)
    r = denoise_cluster(
        m, raw, train=panel.bounds["train"], candidates=[], gate_rows=panel.bounds["val"]
    )
    np.testing.assert_array_equal(r.mean, raw)
    for f in m.features:
        info = r.info["features"][f]
        assert info["chosen"] == "raw" and info["gain_db_val"] is None


@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
def test_rows_already_served_do_not_move_when_the_panel_grows(trained, direction):
    """Live equals backtest: extend the panel by 1, 17 and 100 rows and every earlier row
    of the output (the mix and each candidate alone, decisions re-fitted on the same train
    and validation rows) is bit-identical, the tail included. The start length puts the
    last row mid-chunk ((T - L) mod (L // 2) != 0), where the old plan's tail chunk, which
    ended at the last row, moved with T."""
    from mamba_denoiser.artifacts import load_models
    from mamba_denoiser.data.panel import load_panel
    from mamba_denoiser.inference import denoise_cluster
    from tests.helpers import make_small_frame

    bounds = load_panel(trained["csv"], window_size=WINDOW).bounds
    longer = make_small_frame(n_rows=800)
    t0 = 597
    assert (t0 - WINDOW) % (WINDOW // 2) != 0
    for m in load_models(trained["root"] / direction).values():
        raw = longer[m.features].to_numpy(float)

        def run(n, m=m, raw=raw):
            return denoise_cluster(
                m, raw[:n], train=bounds["train"], gate_rows=bounds["val"], alone=True
            )

        base = run(t0)
        assert base.alone  # each candidate family alone is compared too
        for extra in (1, 17, 100):
            grown = run(t0 + extra)
            np.testing.assert_array_equal(grown.mean[:t0], base.mean, err_msg=f"+{extra}")
            for fam, out in base.alone.items():
                np.testing.assert_array_equal(grown.alone[fam][:t0], out, err_msg=fam)
            assert grown.info["decisions"] == base.info["decisions"]


@pytest.mark.parametrize("direction", ["causal"])
def test_serving_a_few_rows_gives_the_whole_runs_bits(trained, direction):
    """What update runs (inference/plan.run_windows with ``rows``: only the windows that
    serve the wanted rows, one padded call of BATCH_WINDOWS, only the rows they read
    converted) gives every wanted row the bits of the whole run, for every candidate."""
    from mamba_denoiser.artifacts import load_models
    from mamba_denoiser.data.panel import load_panel
    from mamba_denoiser.inference import denoise_cluster
    from tests.helpers import make_small_frame

    bounds = load_panel(trained["csv"], window_size=WINDOW).bounds
    frame = make_small_frame(n_rows=640)
    for m in load_models(trained["root"] / direction).values():
        raw = frame[m.features].to_numpy(float)
        whole = denoise_cluster(m, raw, train=bounds["train"], gate_rows=bounds["val"], alone=True)
        held = whole.info["decisions"]
        for a, b in ((639, 640), (611, 640), (600, 601)):
            part = denoise_cluster(
                m, raw[:b], train=bounds["train"], replay=held, rows=(a, b), alone=True
            )
            np.testing.assert_array_equal(part.mean[a:b], whole.mean[a:b])
            for fam, out in part.alone.items():
                np.testing.assert_array_equal(out[a:b], whole.alone[fam][a:b], err_msg=fam)
