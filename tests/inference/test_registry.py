"""The candidate protocol and registry: a candidate added as one class plus one registry
line is built, run, gated, recorded, replayed and reported alone by the cluster pipeline,
with no other change."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from mamba_denoiser.diffusion import VPSDE
from mamba_denoiser.inference import candidates as cand_mod
from mamba_denoiser.inference import denoise_cluster
from mamba_denoiser.inference.candidates import (
    REGISTRY,
    Candidate,
    CandidateOutput,
    Context,
)


class EMACandidate:
    """A causal EMA whose smoothing weight is fitted on the train rows (the lag-1
    autocorrelation of y, clipped): linear, with its divergence in closed form."""

    family: ClassVar[str] = "ema"
    causal_only: ClassVar[bool] = True
    linear: ClassVar[bool] = True
    scope: ClassVar[str] = "feature"
    streaming: ClassVar[bool] = False
    name = "ema"

    def __init__(self, alpha: list[float]):
        self.alpha = np.asarray(alpha, dtype=float)

    @classmethod
    def build(cls, ctx: Context) -> list:
        tr = ctx.raw[slice(*ctx.train)]
        rho = [np.corrcoef(c[~np.isnan(c)][1:], c[~np.isnan(c)][:-1])[0, 1] for c in tr.T]
        return [cls([float(np.clip(1 - r, 0.05, 1.0)) for r in rho])]

    @classmethod
    def from_decisions(cls, ctx: Context, held: Any) -> list:
        return [] if held is None else [cls(held["alpha"])]

    def decisions(self) -> dict:
        return {"alpha": self.alpha.tolist()}

    def run(self, raw: np.ndarray, progress=None, rows=None) -> CandidateOutput:
        out = np.array(raw, dtype=float)
        for t in range(1, len(raw)):  # a tiny test filter; clarity over speed
            out[t] = self.alpha * raw[t] + (1 - self.alpha) * out[t - 1]
        return CandidateOutput(out, np.broadcast_to(self.alpha, raw.shape).copy())


class _Model:
    """What denoise_cluster reads of a ClusterModel when no network candidate runs."""

    name, direction, heads, path = "c0", "causal", "diffusion", "none"
    cluster = {"id": 0, "type": "mean_reverting", "features": ["a", "b"]}
    features = ["a", "b"]
    unit = np.ones(2)
    module = SimpleNamespace(sde=VPSDE())  # the plan's t grid reads it

    def has_head(self, name: str) -> bool:
        return False


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(REGISTRY, "ema", EMACandidate)  # the one registry line
    return EMACandidate


def _block(n=900, seed=0):
    rng = np.random.default_rng(seed)
    s = np.zeros((n, 2))
    for t in range(1, n):
        s[t] = 0.95 * s[t - 1] + rng.standard_normal(2)
    return s + 2.0 * rng.standard_normal((n, 2))


def test_the_built_in_candidates_follow_the_protocol():
    members = ("family", "causal_only", "linear", "scope", "streaming")
    members += ("run", "decisions", "build", "from_decisions")
    for key, cls in REGISTRY.items():
        assert all(hasattr(cls, m) for m in members), key
        assert cls.family == key
        assert cls.scope in ("feature", "group") and isinstance(cls.linear, bool)
    assert cand_mod.CANDIDATES == ("diffusion", "predictive", "kalman", "robust", "combiner")
    assert REGISTRY["kalman"].linear and not REGISTRY["predictive"].linear


def test_a_registered_candidate_is_gated_recorded_replayed_and_reported(registered):
    raw, train, val = _block(), (0, 600), (660, 780)
    res = denoise_cluster(
        _Model(), raw, train=train, gate_rows=val, candidates=["ema", "kalman"], alone=True
    )
    assert isinstance(EMACandidate([0.5]), Candidate)  # runtime_checkable on an instance
    assert set(res.alone) == {"ema", "kalman"}  # each family alone, no other change
    fits = res.info["decisions"]["fits"]
    assert set(fits) == {"ema", "kalman"}  # generic: each family under its own key
    assert {v["chosen"] for v in res.info["features"].values()} <= {"ema", "kalman"}
    assert all(
        v["gain_db_val_by_candidate"]["ema"] is not None for v in res.info["features"].values()
    )

    # replay from the JSON record: the held fits, nothing re-fitted, the same output
    held = json.loads(json.dumps(res.info["decisions"]))
    bent = raw.copy()
    bent[300:] += 50.0  # train rows changed: a re-fit would move every row
    again = denoise_cluster(_Model(), bent, train=train, replay=held, candidates=["ema", "kalman"])
    np.testing.assert_array_equal(again.mean[:300], res.mean[:300])


def test_runs_recorded_before_the_registry_still_replay():
    """Old denoise_summary.json files kept the Kalman fits under decisions["kalman"]."""
    raw, train, val = _block(), (0, 600), (660, 780)
    res = denoise_cluster(_Model(), raw, train=train, gate_rows=val, candidates=["kalman"])
    old = dict(res.info["decisions"])
    old["kalman"] = old.pop("fits")["kalman"]
    again = denoise_cluster(_Model(), raw, train=train, replay=old, candidates=["kalman"])
    np.testing.assert_array_equal(again.mean, res.mean)
