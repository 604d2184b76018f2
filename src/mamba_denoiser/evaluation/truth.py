"""Known clean values to score against: the built-in panel's, or the user's own.

``truth=PATH`` is a CSV (or Parquet, *.parquet) with the panel's id column and clean
values for some or all of its continuous features; ``truth_families=PATH`` optionally a
JSON object mapping feature -> family name (the groups of the primary quality table). The
built-in synthetic panel ships both beside its CSV (``*_clean.csv``, ``*_truth.json``'s
``process``). Checked against the panel: the same ids, known feature columns only, numeric
values, and the same NaN layout as the observed values (a clean value exactly where a value
is observed), so every score compares like with like. Errors name the file, column or row
and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mamba_denoiser.data.panel import PanelError

NO_FAMILY = "(no family)"


@dataclass(frozen=True)
class Truth:
    clean: np.ndarray  # (T, F) in panel row order, NaN where not known
    family: dict[str, str]  # feature -> family name
    known: list[str]  # features with clean values
    source: str


def builtin_truth(panel, names: list[str], meta: dict | None = None) -> Truth | None:
    """The synthetic panel's clean values and planted families, or None for other data.
    ``meta``: the panel's truth file (data.source.load_truth) where already read."""
    from mamba_denoiser.data.source import load_truth, truth_paths

    meta = load_truth(panel.source) if meta is None else meta
    if meta is None:
        return None
    clean_path = truth_paths(panel.source)[0]
    fam = {f: str(meta.get("process", {}).get(f, NO_FAMILY)) for f in names}
    return _from_frame(pd.read_csv(clean_path), panel, names, fam, str(clean_path))


def load_truth_file(path, panel, names: list[str], families: str | None = None) -> Truth:
    """``truth=PATH`` (and ``truth_families=PATH``), checked against the panel."""
    from mamba_denoiser.data.panel import is_parquet, read_table

    path = Path(path)
    if not path.is_file():
        raise PanelError(f"truth={path}: file not found; give a CSV of clean values")
    if is_parquet(path):
        try:
            frame = read_table(path)
        except PanelError as e:
            raise PanelError(f"truth={e}") from None
    else:
        try:
            frame = pd.read_csv(path)
        except (ValueError, pd.errors.ParserError) as e:
            why = str(e).splitlines()[0]
            raise PanelError(f"truth={path}: not a readable CSV ({why})") from None
    fam = {f: NO_FAMILY for f in names}
    if families:
        fam.update(_families(Path(families), names))
    return _from_frame(frame, panel, names, fam, str(path))


def _families(path: Path, names: list[str]) -> dict[str, str]:
    if not path.is_file():
        raise PanelError(f"truth_families={path}: file not found; give a JSON object")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PanelError(f"truth_families={path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise PanelError(f'truth_families={path}: expected {{"feature": "family name", ...}}')
    unknown = sorted(set(doc) - set(names))
    if unknown:
        raise PanelError(
            f"truth_families={path}: {unknown[:5]} are not denoised features of this panel; "
            "use feature names from clusters.json"
        )
    return dict(doc)


def _from_frame(frame, panel, names, family, source) -> Truth:
    frame = frame.rename(columns=lambda c: str(c).strip())
    id_col = panel.id_col
    if id_col not in frame.columns:
        raise PanelError(f"{source}: no id column {id_col!r}; it needs the panel's id column")
    ids = pd.Index(panel.frame[id_col].to_numpy())
    theirs = frame[id_col].to_numpy()
    if pd.Index(theirs).has_duplicates:
        raise PanelError(f"{source}: duplicate ids in column {id_col!r}")
    order = pd.Index(theirs).get_indexer(ids)
    if (order < 0).any():
        missing = ids[order < 0][:3].tolist()
        raise PanelError(f"{source}: ids {missing}… of the panel are missing; give every row")
    if len(theirs) != len(ids):
        extra = sorted(set(theirs) - set(ids))[:3]
        raise PanelError(f"{source}: ids {extra}… are not in the panel; give its rows only")
    cols = [c for c in frame.columns if c != id_col]
    unknown = [c for c in cols if c not in names]
    roles = set(panel.targets) | set(panel.passthrough)
    if unknown and not set(unknown) <= roles | set(panel.frame.columns):
        bad = [c for c in unknown if c not in panel.frame.columns][:5]
        raise PanelError(f"{source}: columns {bad} are not in the panel; name panel features")
    known = [c for c in cols if c in names]
    if not known:
        raise PanelError(f"{source}: no column names a denoised feature ({names[:5]}…)")
    clean = np.full((len(ids), len(names)), np.nan)
    for c in known:
        v = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)[order]
        bad_text = frame[c].notna().to_numpy()[order] & np.isnan(v)
        if bad_text.any():
            row = ids[int(np.argmax(bad_text))]
            raise PanelError(f"{source}: column {c!r} is not numeric at {id_col}={row}")
        obs = np.isfinite(panel.frame[c].to_numpy(dtype=np.float64))
        differ = obs != np.isfinite(v)
        if differ.any():
            i = int(np.argmax(differ))
            what = "missing" if obs[i] else "given where the panel has no value"
            raise PanelError(
                f"{source}: column {c!r} at {id_col}={ids[i]}: clean value {what}; the clean "
                "values need the panel's NaN layout (a value exactly where one is observed)"
            )
        clean[:, names.index(c)] = v
    fam = {f: family.get(f, NO_FAMILY) for f in known}
    return Truth(clean=clean, family=fam, known=known, source=source)
