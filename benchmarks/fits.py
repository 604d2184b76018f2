"""statsmodels state-space fits (classical.fit_state_space: 3 MLE fits per feature on the
train rows of the built-in panel), made in 2 worker processes into a fresh disk cache:
the hand-written path this package used before (a ProcessPoolExecutor, one JSON file per
fit; kept here only, as the reference) against `classical.prefit_state_space`
(joblib.Parallel, joblib.Memory), in the same run. Each trial is a fresh Python process,
as cluster.py is (so both pay their worker start-up), old and new alternating; the ratio
is of the medians.

    python benchmarks/fits.py [--features 16] [--repeats 3] [--n-jobs 2]
    python benchmarks/fits.py --digest [--features 0]   # sha256 of every fit and filter

--digest prints one sha256 over the MLE params of every model of every feature (fitted
cold in this process, then fitted by `prefit_state_space` in worker processes into a
disk cache and read back), the lowest-AIC choices and the Kalman filter outputs (signal
and gain): run it under two versions of the package (PYTHONPATH=<tree>/src) to show they
give the same bits. It uses only functions both versions have.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

TRAIN = (0, 6300)  # the built-in panel's train rows (0.70 of 9,000)


def _panel(n_features: int) -> np.ndarray:
    from mamba_denoiser.data.synthetic import make_synthetic_panel

    frame = make_synthetic_panel(n_rows=9000, seed=0).frame
    cols = [c for c in frame.columns if c[0] in "EIMPSV" and frame[c].nunique() > 5]
    cols = cols[:n_features] if n_features > 0 else cols
    return frame[cols].to_numpy(np.float64)  # (T, F)


# ---- the pool and disk cache this package used before (the reference) -----------------


def _old_one_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _old_column(args: tuple[np.ndarray, tuple[int, int], str]) -> None:
    """What a worker of the old prefit_state_space did for one column: the three fits of
    its train rows, each stored as JSON under the key the old cache used."""
    from mamba_denoiser import classical

    y, train, folder = args
    try:
        z, observed, _, _ = classical.train_segment(y, train, label="prefit")
    except ValueError:
        return
    z = np.where(observed, z, np.nan)
    key = classical.digest(z)
    import statsmodels.tools.sm_exceptions  # noqa: F401  (its import adds "always" filters)

    for model in classical.STATE_SPACE_MODELS:
        path = Path(folder) / f"{model}-{key}.json"
        if path.is_file():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = classical._FITTERS[model](z)
        except (ValueError, np.linalg.LinAlgError):
            continue
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(params))
        os.replace(tmp, path)


def old_prefit(panel: np.ndarray, train: tuple[int, int], n_jobs: int, folder: str) -> None:
    from concurrent.futures import ProcessPoolExecutor

    cols = [(panel[:, j].copy(), train, folder) for j in range(panel.shape[1])]
    with ProcessPoolExecutor(max_workers=n_jobs, initializer=_old_one_thread) as pool:
        list(pool.map(_old_column, cols, chunksize=max(1, len(cols) // (4 * n_jobs))))


def new_prefit(panel: np.ndarray, train: tuple[int, int], n_jobs: int, folder: str) -> None:
    from mamba_denoiser import classical

    classical.set_fit_cache(folder)
    classical.prefit_state_space(panel, train, n_jobs=n_jobs)


# ---- timing ------------------------------------------------------------------------------


def _cpu() -> float:
    """CPU seconds of this process and of its children that have ended (the workers)."""
    import resource

    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def trial(which: str, n_features: int, n_jobs: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds with the workers') of one prefit in this (fresh) process,
    into a fresh cache folder. The workers are shut down before the CPU time is read
    (joblib keeps its loky workers for reuse), outside the wall time."""
    from mamba_denoiser import classical

    panel = _panel(n_features)
    with tempfile.TemporaryDirectory() as folder:
        classical.clear_cache()
        run = old_prefit if which == "old" else new_prefit
        cpu0, t0 = _cpu(), time.perf_counter()
        run(panel, TRAIN, n_jobs, folder)
        wall = time.perf_counter() - t0
        if which == "new":
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)
        return wall, _cpu() - cpu0


def _trial_in_subprocess(which: str, n_features: int, n_jobs: int) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--trial", which, f"--features={n_features}"]
    out = subprocess.run([*cmd, f"--n-jobs={n_jobs}"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    wall, cpu = out.stdout.split()[-2:]
    return float(wall), float(cpu)


def timing(n_features: int, repeats: int, n_jobs: int) -> None:
    runs: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for r in range(repeats):
        for which in ("old", "new") if r % 2 == 0 else ("new", "old"):
            runs[which].append(_trial_in_subprocess(which, n_features, n_jobs))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{n_features or 'all'} features x 3 models, train rows {TRAIN}, n_jobs={n_jobs}, "
        f"{cores} cores visible, {repeats} alternating trials each (fresh processes)"
    )
    med = {}
    for which, label in (
        ("old", "ProcessPoolExecutor + JSON files"),
        ("new", "joblib.Parallel + Memory"),
    ):
        wall, cpu = [w for w, _ in runs[which]], [c for _, c in runs[which]]
        med[which] = (statistics.median(wall), min(wall), statistics.median(cpu))
        print(f"  {which}  {label:32s} wall {_fmt(wall)}  CPU {_fmt(cpu)}")
    (ow, omin, oc), (nw, nmin, nc) = med["old"], med["new"]
    print(
        f"  new / old: median wall {nw / ow:.3f} ({nw:.2f} / {ow:.2f} s), best wall "
        f"{nmin / omin:.3f}, median CPU {nc / oc:.3f} ({nc:.2f} / {oc:.2f} s)"
    )


def _fmt(ts: list[float]) -> str:
    return " ".join(f"{t:6.2f}" for t in ts)


# ---- bit identity ------------------------------------------------------------------------


def _exact(x) -> object:
    if isinstance(x, float):
        return float(x).hex()
    if isinstance(x, dict):
        return {str(k): _exact(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_exact(v) for v in x]
    return x


def digest(n_features: int, n_jobs: int) -> None:
    import mamba_denoiser
    from mamba_denoiser import classical

    panel = _panel(n_features)
    h = {"cold": hashlib.sha256(), "cached": hashlib.sha256(), "filter": hashlib.sha256()}

    def fits_into(hasher) -> list:
        fits = []
        for j in range(panel.shape[1]):
            y = panel[:, j]
            try:
                z, observed, _, _ = classical.train_segment(y, TRAIN, label="digest")
            except ValueError:
                fits.append(None)
                continue
            params = {m: classical.fit_model(m, z, observed) for m in classical.STATE_SPACE_MODELS}
            fit = classical.fit_state_space(y, TRAIN)
            doc = {"params": params, "model": fit.model, "fits": fit.fits, "scale": fit.scale}
            hasher.update(json.dumps(_exact(doc), sort_keys=True).encode())
            fits.append(fit)
        return fits

    classical.set_fit_cache(None)
    classical.clear_cache()
    fits = fits_into(h["cold"])
    for j, fit in enumerate(fits):
        if fit is not None:
            signal, gain = classical.kalman_filter(fit, panel[:, j])
            h["filter"].update(np.ascontiguousarray(signal).tobytes())
            h["filter"].update(np.ascontiguousarray(gain).tobytes())
    with tempfile.TemporaryDirectory() as folder:
        classical.set_fit_cache(folder)
        classical.clear_cache()
        classical.prefit_state_space(panel, TRAIN, n_jobs=n_jobs)
        classical.clear_cache()  # from here on every fit is read from the disk cache
        fits_into(h["cached"])
        n_files = sum(len(files) for _, _, files in os.walk(folder))
        classical.set_fit_cache(None)
    print(f"package {Path(mamba_denoiser.__file__).parent}")
    print(f"{panel.shape[1]} features, train rows {TRAIN}; {n_files} files in the disk cache")
    for name, hasher in h.items():
        print(f"  {name:7s} {hasher.hexdigest()}")
    same = h["cold"].hexdigest() == h["cached"].hexdigest()
    print(f"  cold == read back from the disk cache: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=16, help="0: every continuous feature")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--digest", action="store_true")
    ap.add_argument("--trial", choices=("old", "new"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        print("{:.4f} {:.4f}".format(*trial(args.trial, args.features, args.n_jobs)))
    elif args.digest:
        digest(args.features, args.n_jobs)
    else:
        timing(args.features, args.repeats, args.n_jobs)


if __name__ == "__main__":
    main()
