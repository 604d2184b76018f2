"""The robust Gaussian-sum filter (robust.py): the compiled recursion against the same
recursion in Python with numpy over features (one vectorised step per row), in the same
run, on the built-in panel's 9,000 rows; then the noise-law fit (17 grid points per
feature on the train rows, one compiled pass).

    python benchmarks/robust.py [--features 85]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mamba_denoiser.data.synthetic import make_synthetic_panel
from mamba_denoiser.robust import (
    _columns,
    _standardise,
    fit_noise_laws,
    fit_robust,
    robust_filter,
)

TRAIN = (0, 6300)


def numpy_reference(z, F, q, P0, w, r_c, r_o):
    """The same recursion, one numpy step over all columns per row (NaN rows: predict)."""
    T, B = z.shape
    m, P = np.zeros((B, 2)), P0.copy()
    out = np.full((T, B), np.nan)
    started = np.zeros(B, bool)
    for t in range(T):
        y = z[t]
        mp = np.where(started[:, None], np.einsum("bij,bj->bi", F, m), 0.0)
        Pp = np.einsum("bij,bjk,blk->bil", F, P, F)
        Pp[:, 0, 0] += q
        Pp = np.where(started[:, None, None], Pp, P0)
        obs = ~np.isnan(y)
        started |= obs
        e = np.where(obs, y - mp[:, 0], 0.0)
        comps = []
        for wc, r in ((1 - w, r_c), (w, r_o)):
            s = Pp[:, 0, 0] + r
            with np.errstate(divide="ignore"):
                lw = np.log(wc) - 0.5 * (np.log(2 * np.pi * s) + e * e / s)
            k = Pp[:, :, 0] / s[:, None]
            comps.append((lw, mp + k * e[:, None], Pp - k[:, :, None] * Pp[:, None, 0, :]))
        top = np.maximum(comps[0][0], comps[1][0])
        pis = [np.exp(c[0] - top) for c in comps]
        tot = pis[0] + pis[1]
        mn = sum(p[:, None] * c[1] for p, c in zip(pis, comps)) / tot[:, None]
        Pn = (
            sum(
                p[:, None, None] * (c[2] + np.einsum("bi,bj->bij", c[1] - mn, c[1] - mn))
                for p, c in zip(pis, comps)
            )
            / tot[:, None, None]
        )
        m = np.where(obs[:, None], mn, mp)
        P = np.where(obs[:, None, None], Pn, Pp)
        out[t] = np.where(obs, m[:, 0], np.nan)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=85)
    args = ap.parse_args()
    p = make_synthetic_panel(noise_scale=5, noise_dist="outliers")
    cols = [c for c in p.continuous_columns if p.process[c] != "sv_returns"][: args.features]
    raw = p.frame[cols].to_numpy(np.float64)
    t0 = time.perf_counter()
    fits, laws = fit_robust(raw, TRAIN)  # state-space fits (statsmodels) + the noise laws
    t_fit = time.perf_counter() - t0
    ok = [j for j, f in enumerate(fits) if f is not None]
    fits, laws, raw = [fits[j] for j in ok], [laws[j] for j in ok], raw[:, ok]
    robust_filter(raw[:10], fits, laws)  # compile (or load the cached machine code)
    t0 = time.perf_counter()
    fit_noise_laws(raw, fits, TRAIN)
    t_law = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = robust_filter(raw, fits, laws)
    t_fast = time.perf_counter() - t0
    z = np.ascontiguousarray(_standardise(raw, fits))
    cols_ = _columns(fits, laws)
    t0 = time.perf_counter()
    ref = numpy_reference(z, cols_.F, cols_.q, cols_.P0, cols_.w_out, cols_.r_core, cols_.r_out)
    t_ref = time.perf_counter() - t0
    ref = ref * np.array([f.scale for f in fits]) + np.array([f.center for f in fits])
    err = np.nanmax(np.abs(fast - ref) / np.array([np.sqrt(f.noise_var) for f in fits]))
    print(f"{raw.shape[1]} features x {raw.shape[0]} rows (noise x5, outliers)")
    print(f"  state-space fits + noise laws (first run, statsmodels): {t_fit:.2f} s")
    print(f"  noise-law grid fit, compiled ({len(laws)} features x 17 laws): {t_law:.3f} s")
    print(
        f"  filter: compiled {t_fast * 1e3:.1f} ms vs numpy per row {t_ref:.2f} s: "
        f"{t_ref / t_fast:.0f}x; max |difference| {err:.1e} noise sd"
    )


if __name__ == "__main__":
    main()
