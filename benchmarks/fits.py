"""statsmodels state-space fits (classical.fit_state_space: 3 MLE fits per feature on the
train rows): serial vs `prefit_state_space` in 2 worker processes, in the same run, each
into a fresh on-disk cache; then the cost of reading them back.

    python benchmarks/fits.py [--features 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from mamba_denoiser import classical
from mamba_denoiser.data.synthetic import make_synthetic_panel

TRAIN = (0, 6300)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=16)
    args = ap.parse_args()
    frame = make_synthetic_panel(n_rows=9000, seed=0).frame
    cols = [c for c in frame.columns if c[0] in "EMV"][: args.features]
    panel = frame[cols].to_numpy(np.float64)  # (T, F)

    def serial() -> None:
        for j in range(panel.shape[1]):
            try:
                classical.fit_state_space(panel[:, j], TRAIN)
            except ValueError:
                pass

    times = {}
    for name, run in (
        ("serial", serial),
        ("2 processes", lambda: classical.prefit_state_space(panel, TRAIN, n_jobs=2)),
    ):
        classical.set_fit_cache(tempfile.mkdtemp())
        classical.clear_cache()
        t0 = time.perf_counter()
        run()
        times[name] = time.perf_counter() - t0
    classical.clear_cache()  # the last cache folder is still set: read back from disk
    t0 = time.perf_counter()
    serial()
    times["read from the disk cache"] = time.perf_counter() - t0
    classical.set_fit_cache(None)
    print(f"{len(cols)} features x {len(classical.STATE_SPACE_MODELS)} models, train rows {TRAIN}")
    for name, t in times.items():
        print(f"  {name:26s} {t:6.2f} s  ({times['serial'] / t:5.1f}x serial)")


if __name__ == "__main__":
    main()
