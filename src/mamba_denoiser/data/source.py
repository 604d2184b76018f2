"""Where a panel comes from: the built-in synthetic data or a user CSV.

Takes plain mappings (an OmegaConf node converted with `to_container` works), so it is
usable without Hydra.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mamba_denoiser.data.panel import Panel, PanelError, SplitSpec, load_panel
from mamba_denoiser.io import atomic_write_csv, atomic_write_json
from mamba_denoiser.vocabulary import ID_COL, WINDOW_SIZE

log = logging.getLogger(__name__)


def truth_paths(csv_path: str | Path) -> tuple[Path, Path]:
    """Companion files of a synthetic CSV: clean signals and the planted processes."""
    p = Path(csv_path)
    return p.with_name(p.stem + "_clean.csv"), p.with_name(p.stem + "_truth.json")


def synthetic_csv_path(
    path: str | Path, *, noise_scale: float = 1.0, noise_dist: str = "mixed"
) -> Path:
    """The file a synthetic panel with these noise knobs is cached in.

    ``path`` (``data.path``) names the default panel; other noise settings live beside it
    with a suffix, e.g. ``synthetic_n9000_seed0.csv`` -> ``synthetic_n9000_seed0_noise3_
    gaussian.csv`` for ``noise_scale=3, noise_dist="gaussian"``, so panels made with
    different knobs never overwrite (or get mistaken for) each other.
    """
    path = Path(path)
    if float(noise_scale) == 1.0 and noise_dist == "mixed":
        return path
    tag = f"{float(noise_scale):g}".replace("-", "m")
    return path.with_name(f"{path.stem}_noise{tag}_{noise_dist}{path.suffix}")


def ensure_synthetic_csv(
    path: str | Path,
    *,
    n_rows: int = 9000,
    seed: int = 0,
    noise_scale: float = 1.0,
    noise_dist: str = "mixed",
) -> Path:
    """Write the synthetic panel (and its ground truth) unless it already exists.

    Returns the CSV actually used: ``synthetic_csv_path(path, ...)`` (``path`` itself for
    the default noise). A cached file is remade when its ``*_truth.json`` records another
    generator version or other knobs.
    """
    from mamba_denoiser.data.synthetic import (
        GENERATOR_VERSION,
        NOISE_DISTS,
        make_synthetic_panel,
    )

    noise_scale = float(noise_scale)
    if noise_dist not in NOISE_DISTS:
        raise PanelError(f"data.noise_dist={noise_dist!r}: expected one of {list(NOISE_DISTS)}")
    if not (np.isfinite(noise_scale) and noise_scale >= 0):
        raise PanelError(f"data.noise_scale={noise_scale}: must be a number >= 0 (1.0 = default)")
    path = synthetic_csv_path(path, noise_scale=noise_scale, noise_dist=noise_dist)
    clean_path, truth_path = truth_paths(path)
    wanted = {
        "generator_version": GENERATOR_VERSION,
        "n_rows": n_rows,
        "seed": seed,
        "noise_scale": noise_scale,
        "noise_dist": noise_dist,
    }
    if path.exists() and clean_path.exists() and truth_path.exists():
        meta = json.loads(truth_path.read_text())
        # Files written before the noise knobs existed are default-noise panels.
        meta.setdefault("noise_scale", 1.0)
        meta.setdefault("noise_dist", "mixed")
        if all(meta.get(key) == value for key, value in wanted.items()):
            return path
        log.info("%s was made by another generator version or settings; remaking it", path)
    log.info(
        "Generating the built-in synthetic panel (%d rows, seed %d, noise_scale %g, "
        "noise_dist %s) -> %s",
        n_rows,
        seed,
        noise_scale,
        noise_dist,
        path,
    )
    sp = make_synthetic_panel(
        n_rows=n_rows, seed=seed, noise_scale=noise_scale, noise_dist=noise_dist
    )
    atomic_write_csv(clean_path, sp.clean)
    atomic_write_json(
        truth_path,
        {
            **wanted,
            "process": sp.process,
            "expected_type": sp.expected_type,
            "noise_std": {k: float(v) for k, v in sp.noise_std.items()},
            # Student-t degrees of freedom of each feature's noise; null: Gaussian.
            "noise_df": dict(sp.noise_df),
        },
    )
    atomic_write_csv(path, sp.frame)  # last: its presence means the set is complete
    return path


def load_truth(csv_path: str | Path) -> dict[str, Any] | None:
    """Ground truth written beside a synthetic CSV, or None for user data."""
    _, truth_path = truth_paths(csv_path)
    if not truth_path.exists():
        return None
    return json.loads(truth_path.read_text())


def panel_from_config(data: Mapping[str, Any]) -> Panel:
    """Build a validated Panel from a `data` config node (conf/data/*.yaml)."""
    kind = data.get("kind", "csv")
    path = data.get("path")
    if kind == "synthetic":
        missing = [k for k in ("n_rows", "seed") if k not in data]
        if missing:  # a hand-made options dict; the synthetic group always has them
            raise PanelError(
                f"data.kind=synthetic without data.{missing[0]}: choose data=synthetic for "
                "the built-in panel, or data=csv data.path=FILE for your own"
            )
        path = ensure_synthetic_csv(
            path,
            n_rows=int(data["n_rows"]),
            seed=int(data["seed"]),
            noise_scale=float(data.get("noise_scale", 1.0)),
            noise_dist=str(data.get("noise_dist", "mixed")),
        )
    elif kind != "csv":
        raise PanelError(f"data.kind={kind!r}: expected 'synthetic' or 'csv'")
    if not path or path == "???":
        raise PanelError("data.path is not set: pass data=csv data.path=/path/to/train.csv")
    split = data.get("split") or {}
    window = int(data.get("window_size", WINDOW_SIZE))
    panel = load_panel(
        path,
        id_col=data.get("id_col", ID_COL),
        targets=list(data.get("targets") or []),
        exclude=list(data.get("exclude") or []),
        split=SplitSpec(
            train=float(split.get("train", 0.7)),
            val=float(split.get("val", 0.15)),
            test=float(split.get("test", 0.15)),
            embargo=int(split.get("embargo", window)),
            train_end=split.get("train_end"),
            val_end=split.get("val_end"),
        ),
        window_size=window,
        min_train_obs=data.get("min_train_obs"),
        max_discrete_values=int(data.get("max_discrete_values", 5)),
        interior_gaps=data.get("interior_gaps", "mask"),
    )
    panel.data_config = copy.deepcopy(dict(data))
    return panel
