"""One folder that holds a fitted ``Denoiser`` (api.py): ``Denoiser.save`` / ``Denoiser.load``.

    bundle/
      manifest.json     versions, the sha256 of every other file, the training data's
                        digest and split, the Denoiser's options
      clusters.json     the clustering the models were trained with
      checkpoints/c<id>.ckpt   each cluster's network: hyper-parameters + weights only
      decisions.json    the held per-feature decisions (σ, whiteness, t grid, the
                        state-space / noise-law fits, the gate's choices), per cluster

Everything ``transform`` and ``update`` need, nothing else (no optimiser state, no
history). Loading checks every file against its sha256 before reading any of it, so a
bundle copied between machines either serves exactly what was saved or refuses with one
line naming the file. The checkpoints are read with ``weights_only=True`` as everywhere.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from mamba_denoiser.errors import BundleError

FORMAT = "mamba-denoiser-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DECISIONS = "decisions.json"
CLUSTERS = "clusters.json"


def _sha256(path: Path) -> str:
    from mamba_denoiser.data.panel import file_sha256

    return file_sha256(path)


def _versions() -> dict[str, str]:
    import numpy
    import pandas
    import torch

    from mamba_denoiser.version import __version__

    return {
        "mamba_denoiser": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
    }


def _write_json(path: Path, obj: Any) -> None:
    # allow_nan=False: decisions record NaN as null already; a NaN here would be a bug and
    # would not survive a strict JSON reader on another machine
    path.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")


def _slim_checkpoint(src: Path, dst: Path) -> None:
    """The checkpoint's hyper-parameters and weights only: what load_cluster_model reads
    (optimiser and loop state are training's, and are most of a Lightning file)."""
    import torch

    from mamba_denoiser.checkpoint import load_checkpoint

    ck = load_checkpoint(src)
    torch.save({"hyper_parameters": ck["hyper_parameters"], "state_dict": ck["state_dict"]}, dst)


def _clusters_doc(models: dict[int, Any]) -> dict:
    """The clusters.json the models were trained with, or (moved or deleted since) their
    own cluster records, which is all that serving needs."""
    first = next(iter(models.values()))
    path = first.source.get("clusters")
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return {
        "note": f"rebuilt from the checkpoints' cluster records ({path} was not found)",
        "clusters": [m.cluster for m in models.values()],
    }


def save_bundle(den: Any, folder: str | Path) -> Path:
    """Write ``den`` (a Denoiser whose decisions are fitted) to ``folder``, atomically: it
    is built beside ``folder`` and renamed into place, so a reader never sees half of it."""
    from mamba_denoiser.errors import ConfigError

    if den._decisions is None or den._fitted_on is None:
        raise ConfigError(
            "save(): nothing fitted yet; call transform(history) first (it fits the "
            "decisions the bundle holds)"
        )
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
        if not (folder / MANIFEST).is_file():
            raise BundleError(
                f"{folder}: exists and is not a bundle; choose a new folder (save never "
                "overwrites other files)"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "checkpoints").mkdir()
        ckpts, predictive = {}, {}
        for cid, m in den.models.items():
            rel = f"checkpoints/c{cid}.ckpt"
            _slim_checkpoint(m.path, tmp / rel)
            ckpts[str(cid)] = rel
            source = getattr(m, "predictive_source", None)
            if source == "filter":  # train.py chose the untrained residual head (its filter)
                predictive[str(cid)] = source
            elif source is not None:  # the predictive head's own best checkpoint
                predictive[str(cid)] = f"checkpoints/c{cid}.predictive.ckpt"
                _slim_checkpoint(Path(source), tmp / predictive[str(cid)])
        _write_json(tmp / CLUSTERS, _clusters_doc(den.models))
        _write_json(tmp / DECISIONS, {str(cid): d for cid, d in den._decisions.items()})
        extra = [p for p in predictive.values() if p != "filter"]
        files = sorted([CLUSTERS, DECISIONS, *ckpts.values(), *extra])
        first = next(iter(den.models.values()))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "versions": _versions(),
            "files": {f: _sha256(tmp / f) for f in files},
            "data": {
                # the training file as train.py recorded it, and the rows the decisions
                # were fitted on: sha1 of the float64 feature values of rows [0, val end)
                "source": first.source.get("path"),
                "sha256": first.source.get("sha256"),
                "fitted_rows_digest": den._fitted_on,
                "split": {k: list(v) for k, v in den.bounds.items()},
                "split_ids": den._split_ids,
                # the split as train.py recorded it: fractions, or data.split.train_end /
                # val_end (ids), and the ids at its bounds
                "split_spec": {
                    k: v for k, v in (first.source.get("split") or {}).items() if k != "bounds"
                },
            },
            "denoiser": {
                "id_col": den.id_col,
                "gate": den.gate,
                **den.kw,
                "features": den.features,
                "checkpoints": ckpts,
                "predictive": predictive,
            },
        }
        _write_json(tmp / MANIFEST, manifest)  # last: its presence means the set is complete
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_manifest(folder: str | Path) -> dict:
    """The manifest, after checking that every file it lists is there, unchanged."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        what = "no such folder" if not folder.exists() else f"no {MANIFEST} in it"
        raise BundleError(f"{folder}: not a Denoiser bundle ({what}); pass a Denoiser.save folder")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise BundleError(f"{path}: not readable JSON ({e}); save the bundle again") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r}; this package reads {FORMAT!r} version "
            f"{FORMAT_VERSION}"
        )
    for rel, sha in manifest["files"].items():
        f = folder / rel
        if not f.is_file():
            raise BundleError(
                f"{f}: missing from the bundle; copy the whole folder again (or save anew)"
            )
        if _sha256(f) != sha:
            raise BundleError(
                f"{f}: changed since the bundle was saved (sha256 differs from "
                f"{MANIFEST}); copy the bundle again or save anew, never edit it"
            )
    mine = _versions()
    theirs = manifest.get("versions") or {}
    # python's own version does not change the numbers; the libraries' may (last bits)
    differ = [
        f"{k} {theirs.get(k)} -> {v}"
        for k, v in mine.items()
        if k != "python" and theirs.get(k) != v
    ]
    if differ:
        warnings.warn(
            f"{folder}: saved with other versions ({', '.join(differ)}); outputs may differ "
            "in the last bits",
            stacklevel=3,
        )
    return manifest


def load_bundle(folder: str | Path) -> tuple[dict, dict[int, Any], dict[int, dict]]:
    """(manifest, cluster id -> ClusterModel, cluster id -> decisions), all verified."""
    from mamba_denoiser.inference import load_cluster_model

    folder = Path(folder)
    manifest = read_manifest(folder)
    spec = manifest["denoiser"]
    from mamba_denoiser.artifacts import predictive_module

    models = {
        int(cid): load_cluster_model(folder / rel) for cid, rel in spec["checkpoints"].items()
    }
    for cid, source in spec.get("predictive", {}).items():
        m = models[int(cid)]
        m.predictive_source = source if source == "filter" else str(folder / source)
        m.predictive_module = predictive_module(m)
    decisions = {int(k): v for k, v in json.loads((folder / DECISIONS).read_text()).items()}
    if set(decisions) != set(models):
        raise BundleError(
            f"{folder / DECISIONS}: decisions for clusters {sorted(decisions)}, checkpoints "
            f"for {sorted(models)}; save the bundle again"
        )
    return manifest, dict(sorted(models.items())), decisions
