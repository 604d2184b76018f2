"""run_clustering: train split only, deterministic artifacts, config keys."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mamba_denoiser.clustering.run import run_clustering
from mamba_denoiser.data.panel import SplitSpec, panel_from_frame
from mamba_denoiser.data.synthetic import make_synthetic_panel

ROOT = Path(__file__).resolve().parents[2]
N = 1500


@pytest.fixture(scope="module")
def frame():
    return make_synthetic_panel(N, seed=2).frame


def panel_of(frame):
    return panel_from_frame(
        frame, source="synthetic", split=SplitSpec(train=0.7, val=0.15, test=0.15, embargo=30)
    )


def run(frame, out, **kw):
    return run_clustering(panel_of(frame), out, plots=False, k_max=8, **kw)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*missing values after its first observation")
def test_statistics_and_groups_ignore_validation_and_test_rows(frame, tmp_path):
    """Honesty rule 1: rewriting every row after the train split (other values, other
    dynamics, missing values) leaves the statistics, K, groups and types unchanged."""
    panel = panel_of(frame)
    stop = panel.bounds["train"][1]
    changed = frame.copy()
    rng = np.random.default_rng(0)
    for col in panel.continuous:
        tail = changed.loc[stop:, col].to_numpy()
        scale = np.nanstd(frame[col].to_numpy()) + 1.0
        changed.loc[stop:, col] = 100.0 * scale * rng.standard_t(2, tail.size)
    changed.loc[stop + 10 : stop + 40, panel.continuous[:5]] = np.nan
    after = panel.continuous
    assert not np.allclose(changed.loc[stop:, after].fillna(0), frame.loc[stop:, after].fillna(0))

    a = run(frame, tmp_path / "a", criterion="stability")
    b = run(changed, tmp_path / "b", criterion="stability")
    assert (tmp_path / "a" / "feature_stats.csv").read_bytes() == (
        tmp_path / "b" / "feature_stats.csv"
    ).read_bytes()
    for key in ("statistics", "selection", "clusters", "merges", "excluded", "config"):
        assert a[key] == b[key], key


@pytest.mark.slow
def test_clusters_json_is_byte_identical_across_runs(frame, tmp_path):
    for name in ("a", "b"):
        run(frame, tmp_path / name, criterion="stability", seed=3)
    a = (tmp_path / "a" / "clusters.json").read_bytes()
    assert a == (tmp_path / "b" / "clusters.json").read_bytes()
    doc = json.loads(a)
    # Schema kept for train.py / denoise.py; the new keys are additions.
    assert doc["schema_version"] == 1
    for c in doc["clusters"]:
        assert {"id", "type", "strategy", "features"} <= set(c)
        assert c["n_features"] >= doc["selection"]["min_size"] == 3
    assert doc["selection"]["criterion"] == "stability"
    assert all("stability" in row for row in doc["selection"]["curve"])
    assert isinstance(doc["merges"], list) and isinstance(doc["selection"]["at_boundary"], bool)
    assert doc["config"]["min_size"] == 3 and doc["config"]["n_bootstrap"] == 20


def test_every_config_key_is_a_keyword_of_run_clustering():
    """cluster_job.run_cluster passes clustering.* as keywords: a key without a matching keyword
    would be a TypeError at run time."""
    from mamba_denoiser.clustering.run import grouping_defaults

    conf = OmegaConf.load(ROOT / "conf" / "cluster.yaml")
    keys = set(conf.clustering.keys())
    own = set(inspect.signature(run_clustering).parameters) - {"panel", "out_dir", "grouping"}
    params = own | set(grouping_defaults())  # the rest go on to cluster_features
    assert keys <= params, keys - params
    assert {"min_size", "n_bootstrap", "stability_threshold", "criterion"} <= keys
