"""Exact joint-vs-per-feature headroom of the built-in panel, from its planted parameters.

On the ``noise_dist="factors"`` panel (data/synthetic.py) the ou_fast, ou_slow,
random_walk and trend families share one latent factor each, so a filter that sees every
feature of a family at once can beat one that sees a single feature's own history. This
module computes by how much, exactly: from the planted parameters
(``SyntheticPanel.params``), not from data estimates, for each family

- the steady-state MSE of the optimal causal linear filter of each feature from its own
  observations only: the Kalman filter of the feature's true (marginal) state-space model;
- the steady-state MSE of the optimal causal linear filter of each feature from all the
  family's observations: one Kalman filter over the family's stacked state (the factor
  plus every feature's own states);

and reports the SNR gains over raw, ``10 log10(noise_var / MSE)``, averaged over the
family's features as the project averages gains (the mean of per-feature dB), and the
headroom ``joint - per-feature`` (dB). Noise is taken at its variance only, so with
non-Gaussian noise (or signal jumps) these are the bounds of the best *linear* filters.

State-space models, in the units before each feature's scale and offset (the gains are
unit-free); ``a = ref_scale * loading`` (0 without a factor), ``b = sqrt(1 - share)``:

- ou_fast / ou_slow: ``x = a f + b o`` with the factor ``f`` AR(1) (``factor_phi``,
  unit variance) and the own ``o`` AR(1) (``phi``, unit innovations).
- random_walk / trend: level ``L_t = L_{t-1} + k + a f_t + h_t`` with ``f`` the factor
  (white for random walks, AR(1) velocity for trends, unit variance) and ``h`` the own
  move, AR(1) (``phi``; 0 for random walks) with innovation sd ``q = ref_scale * b / s``
  where ``s`` is the realised std of the raw moves the generator standardised with
  (``moves_std``); the constant ``k`` (drift, including the realised-mean correction)
  shifts the estimates but not their error variance. Without a factor ``q = 1``,
  ``k = drift``.
- Observation ``y = x + noise``, noise variance ``noise_sd**2``.
- ``noise_dist="jumps"``: the jumps enter as extra innovation variance (own AR(1) state
  for ou_*, the level for random_walk / trend), as the generator propagates them.

API:

    family_headroom(panel)        -> DataFrame (index family; per_feature_db, joint_db,
                                     headroom_db, n_features)
    feature_headroom(panel)       -> the same per feature (plus noise_var and the MSEs)
    headroom_markdown(table)      -> a markdown table of family_headroom's output
    simulated_mse(panel, family, joint=...)  -> realised MSE of the exact time-varying
                                     Kalman filter on the panel's rows (validation)

``panel`` is a ``SyntheticPanel``; for a synthetic CSV, regenerate it from the knobs its
``*_truth.json`` records: ``make_synthetic_panel(n_rows=, seed=, noise_scale=,
noise_dist=)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mamba_denoiser.data.synthetic import _JUMP_RATE, _JUMP_SIZE
from mamba_denoiser.riccati import riccati_step, steady_prediction_cov

HEADROOM_FAMILIES: tuple[str, ...] = ("ou_fast", "ou_slow", "random_walk", "trend")
_OU = ("ou_fast", "ou_slow")
COLUMNS = ("per_feature_db", "joint_db", "headroom_db", "n_features")
# E[U^2] of the jump size U ~ U(lo, hi) in noise sds (noise_dist="jumps").
_JUMP_VAR = (
    _JUMP_RATE * (_JUMP_SIZE[1] ** 3 - _JUMP_SIZE[0] ** 3) / (3.0 * (_JUMP_SIZE[1] - _JUMP_SIZE[0]))
)


@dataclass
class StateSpace:
    """x_t = F x_{t-1} + k + w_t, w ~ N(0, Q); y_t = H x_t + v_t, v ~ N(0, R) (R diagonal).

    ``H x_t`` is the clean signal of the observed features; ``x0``, ``P0`` the law of the
    state before the first row (stationary parts at their stationary law, levels diffuse).
    """

    features: list[str]
    F: np.ndarray
    Q: np.ndarray
    H: np.ndarray
    R: np.ndarray
    k: np.ndarray
    x0: np.ndarray
    P0: np.ndarray


def _check(params: dict[str, dict], features: list[str]) -> str:
    procs = {params[f]["process"] for f in features}
    if len(procs) != 1 or not procs <= set(HEADROOM_FAMILIES):
        raise ValueError(f"{features}: need one family of {HEADROOM_FAMILIES}, got {procs}")
    return procs.pop()


def state_space(
    params: dict[str, dict], features: list[str], *, noise_dist: str = "factors"
) -> StateSpace:
    """The exact linear state-space model of ``features`` (one family) seen together.

    One feature gives its own (marginal) model, several the family's joint model. The
    state is the family factor, then each feature's own states (ou_*: ``o``; random_walk,
    trend: level ``L`` and own move ``h``).
    """
    proc = _check(params, features)
    ou = proc in _OU
    n = len(features)
    per = 1 if ou else 2
    m = 1 + per * n
    first = params[features[0]]
    phi_f = first.get("factor_phi") or 0.0
    s_f = np.sqrt(1.0 - phi_f * phi_f)
    jump_var = _JUMP_VAR if noise_dist == "jumps" else 0.0
    F = np.zeros((m, m))
    G = np.zeros((m, 1 + n))  # shocks: factor, then one per feature (own)
    J = np.zeros(m)  # jump variance (independent per feature)
    H = np.zeros((n, m))
    k = np.zeros(m)
    x0 = np.zeros(m)
    P0 = np.zeros((m, m))
    F[0, 0], G[0, 0] = phi_f, s_f
    P0[0, 0] = 1.0
    R = np.diag([params[f]["noise_sd"] ** 2 for f in features])
    for j, name in enumerate(features):
        p = params[name]
        if p["process"] != proc or (p.get("factor_phi") or 0.0) != phi_f:
            raise ValueError(f"{name}: not of the family of {features[0]}")
        ref, phi = p["ref_scale"], p.get("phi", 0.0)
        a = ref * p.get("loading", 0.0)
        b = np.sqrt(1.0 - p.get("share", 0.0))
        jv = jump_var * p["noise_sd"] ** 2
        if ou:
            i = 1 + j
            F[i, i], G[i, 1 + j] = phi, 1.0
            J[i] = jv
            P0[i, i] = (1.0 + jv) / (1.0 - phi * phi)
            H[j, 0], H[j, i] = a, b
            continue
        lev, h = 1 + 2 * j, 2 + 2 * j
        if "moves_std" in p:  # own move standardised by its realised moments
            s, mu = p["moves_std"], p["moves_mean"]
            q = ref * b / s
            k[lev] = mu - q * (mu - p.get("drift", 0.0))
        else:
            q, k[lev] = 1.0, p.get("drift", 0.0)
        F[h, h], G[h, 1 + j] = phi, q
        # L_t = L_{t-1} + k + a f_t + h_t, with f_t and h_t written out.
        F[lev, lev], F[lev, 0], F[lev, h] = 1.0, a * phi_f, phi
        G[lev, 0], G[lev, 1 + j] = a * s_f, q
        J[lev] = jv
        P0[h, h] = q * q / (1.0 - phi * phi)
        P0[lev, lev] = 1e12  # diffuse level
        H[j, lev] = 1.0
    Q = G @ G.T + np.diag(J)
    return StateSpace(list(features), F, Q, H, R, k, x0, P0)


def steady_state_mse(model: StateSpace) -> np.ndarray:
    """Steady-state filtered MSE of each observed feature's clean signal given y_{<=t}
    (riccati.py: scipy's Riccati solution, checked, else the recursion iterated)."""
    F, Q, H, R = model.F, model.Q, model.H, model.R
    if not np.all(np.diag(R) > 0):
        raise ValueError("zero observation noise: the filter MSE is 0 and the gain infinite")
    P = steady_prediction_cov(F, Q, H, R, model.P0)
    _, Pf = riccati_step(P, F, Q, H, R)
    return np.einsum("ij,jk,ik->i", H, Pf, H)


def _panel_params(panel) -> dict[str, dict]:
    params = getattr(panel, "params", None)
    if not params:
        raise ValueError(
            "the panel records no planted parameters (SyntheticPanel.params); "
            "regenerate it with make_synthetic_panel"
        )
    return params


def _families(params: dict[str, dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, p in params.items():
        if p["process"] in HEADROOM_FAMILIES:
            out.setdefault(p["process"], []).append(name)
    return {f: out[f] for f in HEADROOM_FAMILIES if f in out}


def feature_headroom(panel) -> pd.DataFrame:
    """Per feature of the factor families: family, noise_var, per_feature_mse, joint_mse
    (steady state, before the feature's scale) and per_feature_db, joint_db, headroom_db."""
    params = _panel_params(panel)
    noise_dist = getattr(panel, "noise_dist", "factors")
    rows = []
    for fam, names in _families(params).items():
        joint = steady_state_mse(state_space(params, names, noise_dist=noise_dist))
        for name, mj in zip(names, joint):
            mp = steady_state_mse(state_space(params, [name], noise_dist=noise_dist))[0]
            nv = params[name]["noise_sd"] ** 2
            rows.append(
                {
                    "feature": name,
                    "family": fam,
                    "noise_var": nv,
                    "per_feature_mse": mp,
                    "joint_mse": mj,
                    "per_feature_db": 10.0 * np.log10(nv / mp),
                    "joint_db": 10.0 * np.log10(nv / mj),
                }
            )
    out = pd.DataFrame(rows).set_index("feature")
    out["headroom_db"] = out["joint_db"] - out["per_feature_db"]
    return out


def family_headroom(panel) -> pd.DataFrame:
    """Per family (ou_fast, ou_slow, random_walk, trend): the mean over its features of
    the per-feature and the joint Kalman SNR gains over raw (dB), their difference
    (the exact headroom of a joint filter, dB) and the number of features."""
    per = feature_headroom(panel)
    g = per.groupby("family", sort=False)
    out = g[["per_feature_db", "joint_db", "headroom_db"]].mean()
    out["n_features"] = g.size()
    out.index.name = "family"
    return out[list(COLUMNS)]


def headroom_markdown(table: pd.DataFrame, *, digits: int = 2) -> str:
    """``family_headroom``'s output as a markdown table (tables.markdown_table)."""
    from mamba_denoiser.tables import markdown_table

    def db(v: float, sign: str = "") -> str:
        return f"{round(float(v), digits) + 0.0:{sign}.{digits}f}"  # + 0.0: no "-0.00"

    head = ["family", "features", "per-feature Kalman (dB)", "joint Kalman (dB)", "headroom (dB)"]
    rows = [
        [
            fam,
            int(r["n_features"]),
            db(r["per_feature_db"]),
            db(r["joint_db"]),
            db(r["headroom_db"], "+"),
        ]
        for fam, r in table.iterrows()
    ]
    return markdown_table(head, rows)


def report_section(meta: dict | None) -> str:
    """The report's headroom section for a built-in ``factors`` panel ("" otherwise), from
    its truth file's knobs (the panel is regenerated: the same seed gives the same
    planted parameters)."""
    if not meta or meta.get("noise_dist") != "factors":
        return ""
    from mamba_denoiser.data.synthetic import make_synthetic_panel

    panel = make_synthetic_panel(
        int(meta["n_rows"]),
        int(meta["seed"]),
        noise_scale=float(meta["noise_scale"]),
        noise_dist="factors",
    )
    return (
        "\n## Exact joint headroom (planted factors)\n\n"
        "Steady-state SNR gains of the optimal causal linear filters, from the planted "
        "parameters (evaluation/headroom.py): each feature from its own rows (per-feature "
        "Kalman) and from every feature of its family (joint Kalman). The headroom is what "
        "seeing the group can add; compare the methods' gains above with both.\n\n"
        + headroom_markdown(family_headroom(panel))
        + "\n"
    )


# --- validation: the exact time-varying filter on the panel's rows ------------------------


def kalman_filter(model: StateSpace, y: np.ndarray) -> np.ndarray:
    """Filtered clean signals ``H x_{t|t}`` of the time-varying Kalman filter; ``y``
    (T, n) in the model's units, NaN where not observed (no update from that cell)."""
    F, Q, H, R, k = model.F, model.Q, model.H, model.R, model.k
    x, P = model.x0.copy(), model.P0.copy()
    out = np.empty(y.shape)
    for t in range(y.shape[0]):
        x = F @ x + k
        P = F @ P @ F.T + Q
        seen = ~np.isnan(y[t])
        if seen.any():
            Ho = H[seen]
            S = Ho @ P @ Ho.T + R[np.ix_(seen, seen)]
            K = np.linalg.solve(S, Ho @ P).T
            x = x + K @ (y[t, seen] - Ho @ x)
            P = P - K @ Ho @ P
            P = 0.5 * (P + P.T)
        out[t] = H @ x
    return out


def _model_units(panel, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    params = panel.params
    scale = np.array([params[f]["scale"] for f in names])
    offset = np.array([params[f]["offset"] for f in names])
    y = (panel.frame[names].to_numpy() - offset) / scale
    clean = (panel.clean[names].to_numpy() - offset) / scale
    return y, clean


def simulated_mse(panel, family: str, *, joint: bool, rows: slice | None = None) -> pd.Series:
    """Realised MSE (before scaling) against ``panel.clean`` of the exact Kalman filter
    with the planted parameters run on the panel's observations from row 0: one filter
    over the family (``joint``) or one per feature. ``rows``: the rows scored (default:
    the test split of the project's default SplitSpec)."""
    from mamba_denoiser.data.panel import SplitSpec

    params = _panel_params(panel)
    names = _families(params)[family]
    if rows is None:
        rows = slice(*SplitSpec().bounds(len(panel.frame))["test"])
    y, clean = _model_units(panel, names)
    nd = getattr(panel, "noise_dist", "factors")
    if joint:
        est = kalman_filter(state_space(params, names, noise_dist=nd), y)
    else:
        est = np.column_stack(
            [
                kalman_filter(state_space(params, [f], noise_dist=nd), y[:, [j]])[:, 0]
                for j, f in enumerate(names)
            ]
        )
    err = (est - clean)[rows]
    return pd.Series(np.nanmean(err**2, axis=0), index=names)
