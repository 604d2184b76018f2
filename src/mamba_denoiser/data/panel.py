"""Panel loading, validation, column roles and the chronological split.

Everything downstream (clustering, training, denoising, evaluation) starts from a
`Panel`: a time-sorted frame plus the role of every column, decided once here.

Roles (docs/design.md "Column roles"):
- ``id``: the time index; duplicates are an error, unsorted rows are sorted with a warning.
- ``targets``: never clustered, never a model input, never changed.
- ``passthrough``: discrete, constant, almost-empty or user-excluded columns, copied unchanged.
- ``continuous``: everything else; clustered and denoised.

Roles are decided on the TRAIN split only (honesty rule 1): a column that only starts
after the train split cannot be fitted, so it passes through.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mamba_denoiser.errors import PanelError
from mamba_denoiser.io import existing_file
from mamba_denoiser.vocabulary import ID_COL, TARGETS, WINDOW_SIZE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSpec:
    """Chronological train/val/test parts with an embargo of `embargo` rows between parts.

    By fractions of the rows (the default), or by id: ``train_end`` and ``val_end`` are
    the last id of the train and of the validation part (a ``date_id`` value, or a date
    where the ids are dates); the test part is every row after ``val_end`` and the
    embargo; ``val_end`` None: validation runs to the last row (no test part). Ids
    replace the fractions. The embargo keeps a window that straddles two parts from
    leaking one into the other; it should be at least one window long (docs/design.md
    "Column roles").
    """

    train: float = 0.70
    val: float = 0.15
    test: float = 0.15
    embargo: int = WINDOW_SIZE
    train_end: Any = None
    val_end: Any = None

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise PanelError(f"split.{name}={v} must be in [0, 1]")
        if self.train <= 0:
            raise PanelError("split.train must be > 0: every fitted quantity needs train rows")
        if self.train + self.val + self.test > 1.0 + 1e-9:
            raise PanelError(
                f"split fractions add up to {self.train + self.val + self.test:.3f} > 1; "
                "lower data.split.train/val/test"
            )
        if self.embargo < 0:
            raise PanelError(f"split.embargo={self.embargo} must be >= 0")
        if self.val_end is not None and self.train_end is None:
            raise PanelError(
                f"data.split.val_end={self.val_end} without data.split.train_end: give the "
                "last train id too (or neither, for the fractional split)"
            )

    @property
    def by_id(self) -> bool:
        return self.train_end is not None

    def bounds(self, n_rows: int, ids=None) -> dict[str, tuple[int, int]]:
        """Row ranges [start, stop) of each part, embargo rows left out between parts;
        ``ids`` (the sorted id column) is needed by a split by id."""

        def part(start: int, stop: int) -> tuple[int, int]:
            start = min(start, n_rows)
            return start, max(start, min(stop, n_rows))

        if self.by_id:
            if ids is None:
                raise PanelError("a split by id (data.split.train_end) needs the panel's ids")
            n_train = rows_through(ids, self.train_end, "train_end")
            stop = n_rows if self.val_end is None else rows_through(ids, self.val_end, "val_end")
            if stop < n_train:
                raise PanelError(
                    f"data.split.val_end={self.val_end} comes before "
                    f"data.split.train_end={self.train_end}; validation follows training"
                )
            return {
                "train": (0, n_train),
                "val": part(n_train + self.embargo, stop),
                "test": part(stop + self.embargo, n_rows),
            }
        n_train = int(np.floor(self.train * n_rows))
        n_val = int(np.floor(self.val * n_rows))
        full = self.train + self.val + self.test >= 1.0 - 1e-9
        end = n_rows if full else min(n_rows, n_train + n_val + int(np.floor(self.test * n_rows)))
        # The embargo is carved from the start of val and of test, so the fractions keep
        # their meaning as calendar shares of the panel.
        out = {"train": (0, n_train)}
        out["val"] = part(n_train + self.embargo, n_train + n_val)
        out["test"] = part(n_train + n_val + self.embargo, end)
        return out

    def record(self) -> dict[str, Any]:
        """As clusters.json and checkpoints record it (the ids as JSON values)."""
        out: dict[str, Any] = {
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "embargo": self.embargo,
        }
        if self.by_id:
            out["train_end"] = json_id(self.train_end)
            out["val_end"] = json_id(self.val_end)
        return out


def json_id(value: Any) -> Any:
    """An id as JSON holds it: a number, a text, an ISO date (None stays None)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (pd.Timestamp, np.datetime64)) or hasattr(value, "isoformat"):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return int(value) if float(value).is_integer() else float(value)
    return str(value)


def rows_through(ids, value: Any, key: str) -> int:
    """How many rows have an id <= ``value``: numbers as numbers, dates as dates (a date
    column, or text that parses as dates), other text as text. Those rows must be the
    first ones (ids in order); else, or for a value of another kind, a PanelError."""
    ids = pd.Series(np.asarray(ids))
    where = f"data.split.{key}={value}"
    if pd.api.types.is_bool_dtype(ids) or not len(ids):
        raise PanelError(f"{where}: the id column cannot be split by id")
    if pd.api.types.is_numeric_dtype(ids):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise PanelError(
                f"{where}: the ids are numbers ({ids.iloc[0]}..{ids.iloc[-1]}); give the "
                "last id of the part as a number"
            ) from None
        mask = ids.to_numpy(np.float64) <= v
    else:
        dates = ids if pd.api.types.is_datetime64_any_dtype(ids) else _as_dates(ids)
        if dates is not None:
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                raise PanelError(
                    f"{where}: the ids are dates ({ids.iloc[0]}..{ids.iloc[-1]}); give a date"
                )
            try:
                v = pd.Timestamp(value)
            except (TypeError, ValueError):
                raise PanelError(f"{where}: not a date, and the ids are dates") from None
            if v.tzinfo is not None and dates.dt.tz is None:
                v = v.tz_localize(None)
            mask = (dates <= v).to_numpy()
        else:
            mask = (ids.astype(str) <= str(value)).to_numpy()
    n = int(mask.sum())
    if mask[:n].sum() != n:
        raise PanelError(
            f"{where}: the rows with ids up to it are not the first rows (ids out of order "
            "as values); give the ids in order, or split by fractions"
        )
    return n


def _as_dates(ids: pd.Series) -> pd.Series | None:
    """Text ids parsed as dates, or None where they are not all dates."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' "could not infer format"
            out = pd.to_datetime(ids.astype(str), errors="raise")
    except (ValueError, TypeError, OverflowError):
        return None
    return out


@dataclass
class Panel:
    """A validated, time-sorted panel and the role of every column."""

    frame: pd.DataFrame  # rows sorted by id, index 0..n-1, original column order
    source: str
    id_col: str
    targets: list[str]
    continuous: list[str]
    passthrough: dict[str, str]  # column -> reason
    split: SplitSpec = field(default_factory=SplitSpec)
    sha256: str | None = None
    # the `data` options it was built from (data/source.py); recorded so later stages can
    # read the same data the same way (data/remembered.py)
    data_config: dict | None = None
    _bounds: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def n_rows(self) -> int:
        return len(self.frame)

    @property
    def bounds(self) -> dict[str, tuple[int, int]]:
        key = (self.n_rows, self.split)
        if self._bounds is None or self._bounds[0] != key:
            ids = self.frame[self.id_col] if self.split.by_id else None
            self._bounds = (key, self.split.bounds(self.n_rows, ids))
        return dict(self._bounds[1])

    def split_ids(self) -> dict[str, list]:
        """The first and last id of each part that has rows, as JSON values."""
        ids = self.frame[self.id_col].to_numpy()
        return {
            k: [json_id(ids[a]), json_id(ids[b - 1])] for k, (a, b) in self.bounds.items() if b > a
        }

    def rows_digest(self, stop: int | None = None) -> str:
        """sha1 of the ids (as text) and the continuous features' float64 values of rows
        [0, stop) (default: the end of validation), the rows every fitted quantity reads:
        a panel grown by later rows keeps it (artifacts.py)."""
        stop = self.bounds["val"][1] if stop is None else int(stop)
        h = hashlib.sha1()
        h.update("\x1f".join(map(str, self.frame[self.id_col].to_numpy()[:stop])).encode())
        h.update("\x1f".join(self.continuous).encode())
        values = self.frame[self.continuous].to_numpy(dtype=np.float64)[:stop]
        h.update(np.ascontiguousarray(values).tobytes())
        return h.hexdigest()

    def part(self, name: str) -> pd.DataFrame:
        """Rows of one split part ('train', 'val', 'test'); a view-like slice."""
        start, stop = self.bounds[name]
        return self.frame.iloc[start:stop]

    def observed(self, column: str, part: str = "train") -> np.ndarray:
        """Observed (non-NaN) values of a column in a split part, in time order."""
        v = self.part(part)[column].to_numpy(dtype=np.float64)
        return v[~np.isnan(v)]

    def summary(self) -> dict:
        return {
            "path": self.source,
            "sha256": self.sha256,
            "rows": self.n_rows,
            "id_col": self.id_col,
            "split": {
                **self.split.record(),
                "bounds": {k: list(v) for k, v in self.bounds.items()},
                "ids": self.split_ids(),
            },
            "rows_digest": self.rows_digest(),
            **({"data_config": self.data_config} if self.data_config is not None else {}),
        }


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _short_parts(
    split: SplitSpec, n_rows: int, window: int, min_train_obs: int, ids=None
) -> list[str]:
    """What each split part lacks with `n_rows` rows: the train part needs one window and
    `min_train_obs` rows (fewer leave every feature passthrough), val and test (when their
    fraction is > 0; by id: val always, test never) one window after the embargo. Empty
    when the rows suffice."""
    bounds = split.bounds(n_rows, ids)
    size = {k: b - a for k, (a, b) in bounds.items()}
    out = []
    if size["train"] < window:
        out.append(f"the train split gets {size['train']} rows, fewer than one window ({window})")
    elif size["train"] < min_train_obs:
        out.append(
            f"the train split gets {size['train']} rows, fewer than the {min_train_obs} a "
            "feature needs (data.min_train_obs)"
        )
    wanted = ("val",) if split.by_id else [k for k in ("val", "test") if getattr(split, k) > 0]
    small = [k for k in wanted if size[k] < window]
    if small:
        got = " and ".join(f"{k} {size[k]}" for k in small)
        out.append(
            f"{got} rows after the {split.embargo}-row embargo, fewer than one window ({window})"
        )
    return out


def _rows_needed(split: SplitSpec, window: int, min_train_obs: int) -> int:
    """The fewest rows for which `_short_parts` finds nothing missing."""
    need = [max(window, min_train_obs) / split.train]
    need += [(window + split.embargo) / f for f in (split.val, split.test) if f > 0]
    n = int(np.ceil(max(need)))
    for _ in range(100_000):  # the floors of the split can add a few rows
        if not _short_parts(split, n, window, min_train_obs):
            break
        n += 1
    return n


PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path: str | Path) -> bool:
    """A data file is read as Parquet when its name ends in .parquet or .pq, else as CSV."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def read_table(path: str | Path) -> pd.DataFrame:
    """The data file as a frame: Parquet by suffix (``is_parquet``), else CSV. An unreadable
    file is one PanelError naming it and what was expected."""
    path = existing_file(
        path,
        PanelError,
        missing="file not found. Pass an existing CSV or Parquet file with data.path=..., "
        "or use the built-in default data (data=synthetic).",
        directory="is a directory, expected a CSV or Parquet file (data.path=FILE.csv)",
    )
    if path.stat().st_size == 0:
        raise PanelError(f"{path}: file is empty; expected a CSV with a header row and data rows")
    return _read_parquet(path) if is_parquet(path) else _read_csv(path)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError as e:
        raise PanelError(f"{path}: no columns could be parsed ({e}); is it a CSV?") from e
    except UnicodeDecodeError as e:
        raise PanelError(
            f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); is it a CSV? "
            "Pass a comma-separated text file with a header row (data.path=FILE.csv), or a "
            "Parquet file named *.parquet"
        ) from e
    except (pd.errors.ParserError, ValueError, OSError) as e:
        why = " ".join(str(e).split())[:200]
        raise PanelError(
            f"{path}: could not parse as CSV ({why}); pass a comma-separated text file with "
            "a header row (data.path=FILE.csv)"
        ) from e


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file's columns; its index, if one was stored, becomes a column first (a
    date index written by ``DataFrame.to_parquet`` is the id column of such a file)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # a dependency; only a broken install lacks it
        raise PanelError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as e:  # pyarrow's errors (ArrowInvalid, OSError, ...) share no base
        why = " ".join(str(e).split())[:200]
        raise PanelError(
            f"{path}: could not read as Parquet ({type(e).__name__}: {why}); pass a Parquet "
            "file (*.parquet) or a CSV"
        ) from None
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    return frame


def load_panel(path: str | Path, **options) -> Panel:
    """Read a wide CSV or Parquet file (``read_table``) and validate it: ``options`` are
    `panel_from_frame`'s (id_col, targets, exclude, split, window_size, ...), and so are
    the rules."""
    frame = read_table(path)
    return panel_from_frame(frame, source=str(path), sha256=file_sha256(path), **options)


def _clean_columns(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """A copy of `frame` with stripped column names; no rows or duplicate names are errors."""
    if frame.shape[1] == 0 or len(frame) == 0:
        raise PanelError(f"{where}: no data rows (only a header?). The panel needs rows.")
    frame = frame.copy()
    frame.columns = [str(c).strip() for c in frame.columns]
    dup_cols = frame.columns[frame.columns.duplicated()].tolist()
    if dup_cols:
        raise PanelError(f"{where}: duplicate column names {dup_cols}; rename them")
    return frame


def _sorted_by_id(frame: pd.DataFrame, id_col: str, where: str) -> pd.DataFrame:
    """`frame` checked for a complete, unique id column and sorted by it, index 0..n-1."""
    if id_col not in frame.columns:
        raise PanelError(
            f"{where}: no id column '{id_col}' (columns start with {list(frame.columns[:5])}). "
            "Set data.id_col=<name of the time-index column>."
        )
    ids = frame[id_col]
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise PanelError(f"{where}: id column '{id_col}' is empty at data row {row + 1}")
    dups = ids[ids.duplicated(keep=False)]
    if len(dups):
        first = dups.unique()[:5].tolist()
        raise PanelError(
            f"{where}: {ids.duplicated().sum()} duplicate {id_col} values, e.g. {first}. "
            "Each time step must appear once: drop or aggregate the duplicate rows."
        )
    if not ids.is_monotonic_increasing:
        warnings.warn(
            f"{where}: rows are not sorted by '{id_col}'; sorting them (stable).",
            stacklevel=3,  # the caller of panel_from_frame
        )
        frame = frame.sort_values(id_col, kind="mergesort")
    return frame.reset_index(drop=True)


def _feature_columns(
    frame: pd.DataFrame, id_col: str, targets: list[str], exclude: Sequence[str], where: str
) -> list[str]:
    """The feature columns (all but the id and the targets), after checking that every
    target and every excluded column exists."""
    missing_t = [t for t in targets if t not in frame.columns]
    if missing_t:
        raise PanelError(
            f"{where}: target column(s) {missing_t} not found. Set data.targets=[...] to the "
            "target names of this file (or data.targets=[] if it has none)."
        )
    unknown_ex = [c for c in exclude if c not in frame.columns]
    if unknown_ex:
        raise PanelError(f"{where}: data.exclude names unknown column(s) {unknown_ex}")

    features = [c for c in frame.columns if c != id_col and c not in targets]
    if not features:
        raise PanelError(f"{where}: no feature columns besides '{id_col}' and the targets")
    return features


def _to_float(frame: pd.DataFrame, columns: list[str], id_col: str, where: str) -> None:
    """Convert `columns` of `frame` to float64 in place; non-numeric or infinite values are
    errors (the first one found, in column order)."""
    for col in columns:
        s = frame[col]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            coerced = pd.to_numeric(s, errors="coerce")
            bad = np.flatnonzero((coerced.isna() & s.notna()).to_numpy())
            if bad.size == 0:  # object dtype holding numbers only: take them
                s = coerced
            else:
                row = int(bad[0])
                raise PanelError(
                    f"{where}: column '{col}' is not numeric: {id_col}={frame[id_col].iloc[row]} "
                    f"holds {s.iloc[row]!r}. Fix the value, or drop the column with "
                    f"data.exclude=[{col}]."
                )
        frame[col] = s.astype(np.float64)
        v = frame[col].to_numpy()
        inf = np.isinf(v)
        if inf.any():
            row = int(np.flatnonzero(inf)[0])
            raise PanelError(
                f"{where}: column '{col}' holds {v[row]} at {id_col}={frame[id_col].iloc[row]} "
                f"({int(inf.sum())} infinite values). Replace them with a finite value or "
                "leave the cell empty (missing)."
            )


def _check_rows(
    split: SplitSpec, n_rows: int, window_size: int, min_train_obs: int, where: str, ids=None
) -> None:
    """Refuse a panel whose split parts are too short (`_short_parts`), saying how many
    rows would do (by id: which bound to move)."""
    short = _short_parts(split, n_rows, window_size, min_train_obs, ids)
    if short and split.by_id:
        raise PanelError(
            f"{where}: {'; '.join(short)} (data.split.train_end={split.train_end}, "
            f"val_end={split.val_end}). Move the bounds, or lower data.window_size="
            f"{window_size} or data.split.embargo={split.embargo}."
        )
    if short:
        need = _rows_needed(split, window_size, min_train_obs)
        raise PanelError(
            f"{where}: {n_rows} rows are too few: {'; '.join(short)}. Provide at least "
            f"{need} rows, or lower data.window_size={window_size} or "
            f"data.split.embargo={split.embargo}."
        )


def _passthrough_reason(
    v_all: np.ndarray,
    v_train: np.ndarray,
    min_train_obs: int,
    window_size: int,
    max_discrete_values: int,
) -> str | None:
    """Why a (not excluded) feature with all values `v_all` and train values `v_train`
    passes through, or None when it is continuous."""
    if np.isnan(v_all).all():
        return "all values missing"
    obs = v_train[~np.isnan(v_train)]
    if len(obs) == 0:
        return "no observed values in the train split (cannot be fitted)"
    if len(obs) < min_train_obs:
        return (
            f"only {len(obs)} observed train rows, fewer than {min_train_obs} "
            f"(2 windows of {window_size})"
        )
    n_unique = len(np.unique(obs))
    if n_unique == 1:
        return "constant on the train split"
    if n_unique <= max_discrete_values:
        return f"discrete ({n_unique} distinct values)"
    return None


def _check_interior_gaps(
    frame: pd.DataFrame, col: str, id_col: str, interior_gaps: str, where: str
) -> None:
    """Warn about (``interior_gaps="mask"``) or refuse (``"error"``) missing values of a
    continuous column between its first and last observation."""
    obs_all = ~np.isnan(frame[col].to_numpy())
    first, last = np.flatnonzero(obs_all)[[0, -1]]
    gaps = np.flatnonzero(~obs_all[first : last + 1])
    if not len(gaps):
        return
    rows = frame[id_col].to_numpy()[first + gaps]
    msg = (
        f"{where}: column '{col}' has {len(gaps)} missing values after its first "
        f"observation, e.g. at {id_col}={rows[:5].tolist()}"
    )
    if interior_gaps == "error":
        raise PanelError(msg + ". Fill them upstream or pass data.interior_gaps=mask to mask them.")
    # stacklevel: _check_interior_gaps <- _column_roles <- panel_from_frame <- its caller
    warnings.warn(msg + "; they stay missing and are masked.", stacklevel=4)


def _column_roles(
    frame: pd.DataFrame,
    features: list[str],
    *,
    exclude: Sequence[str],
    train_rows: tuple[int, int],
    id_col: str,
    window_size: int,
    min_train_obs: int,
    max_discrete_values: int,
    interior_gaps: str,
    where: str,
) -> tuple[list[str], dict[str, str]]:
    """Split `features` into continuous columns and passthrough columns (with reason),
    judged on the train rows `train_rows` = [start, stop)."""
    passthrough: dict[str, str] = {}
    continuous: list[str] = []
    train = frame.iloc[train_rows[0] : train_rows[1]]
    for col in features:
        if col in exclude:
            passthrough[col] = "excluded by data.exclude"
            continue
        reason = _passthrough_reason(
            frame[col].to_numpy(),
            train[col].to_numpy(),
            min_train_obs,
            window_size,
            max_discrete_values,
        )
        if reason is not None:
            passthrough[col] = reason
            continue
        _check_interior_gaps(frame, col, id_col, interior_gaps, where)
        continuous.append(col)
    return continuous, passthrough


def panel_from_frame(
    frame: pd.DataFrame,
    *,
    source: str = "<dataframe>",
    sha256: str | None = None,
    id_col: str = ID_COL,
    targets: Sequence[str] = TARGETS,
    exclude: Sequence[str] = (),
    split: SplitSpec | None = None,
    window_size: int = WINDOW_SIZE,
    min_train_obs: int | None = None,
    max_discrete_values: int = 5,
    interior_gaps: str = "mask",
) -> Panel:
    """Validate a wide frame and decide column roles.

    Errors (PanelError, nothing written): no rows, missing id column, duplicate ids,
    missing target columns, non-numeric feature values, ±inf, a train split shorter than
    one window. Warnings: unsorted ids (rows sorted), interior NaN gaps (kept as NaN and
    masked downstream; ``interior_gaps="error"`` refuses them instead).
    Passthrough (with reason): user-excluded, all-NaN, unobserved in the train split,
    fewer than `min_train_obs` observed train rows, constant, discrete
    (<= `max_discrete_values` distinct values).
    """
    split = split or SplitSpec(embargo=window_size)
    min_train_obs = 2 * window_size if min_train_obs is None else min_train_obs
    if interior_gaps not in ("mask", "error"):
        raise PanelError(f"data.interior_gaps={interior_gaps!r}: expected 'mask' or 'error'")
    where = f"{source}"
    # The checks run in this order and the first problem found is the one reported.
    frame = _sorted_by_id(_clean_columns(frame, where), id_col, where)
    targets = list(targets)
    features = _feature_columns(frame, id_col, targets, exclude, where)
    # Numeric check on everything except the id (excluded columns are copied unchanged):
    # a text cell is an error, not a silent NaN.
    _to_float(frame, [c for c in features + targets if c not in exclude], id_col, where)
    ids = frame[id_col] if split.by_id else None
    _check_rows(split, len(frame), window_size, min_train_obs, where, ids)
    continuous, passthrough = _column_roles(
        frame,
        features,
        exclude=exclude,
        train_rows=split.bounds(len(frame), ids)["train"],
        id_col=id_col,
        window_size=window_size,
        min_train_obs=min_train_obs,
        max_discrete_values=max_discrete_values,
        interior_gaps=interior_gaps,
        where=where,
    )
    if not continuous:
        log.warning(
            "%s: no continuous feature columns; nothing will be clustered or denoised", where
        )
    return Panel(
        frame=frame,
        source=source,
        id_col=id_col,
        targets=targets,
        continuous=continuous,
        passthrough=passthrough,
        split=split,
        sha256=sha256,
    )
