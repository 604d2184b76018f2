"""Atomic writes: no reader sees a half-written artifact (docs/design.md "Failures and paths");
and the one check every stage runs on a file it is told to read."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def existing_file(
    path: str | Path, error: type[Exception], *, missing: str, directory: str
) -> Path:
    """``Path(path)`` if it is a file; else ``error`` naming the path, with ``missing`` (it
    does not exist) or ``directory`` (it is a folder) saying what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: {missing}")
    if path.is_dir():
        raise error(f"{path}: {directory}")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)`, then rename tmp over `path` (same directory, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_write_csv(path: str | Path, frame, **kwargs) -> Path:
    kwargs.setdefault("index", False)
    return atomic_write(path, lambda p: frame.to_csv(p, **kwargs))


def console():
    """A rich Console: the terminal's width on a terminal; when piped (logs, CI), $COLUMNS
    if set, else 120 columns (not rich's default of 80)."""
    import sys

    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        width = 0
    return Console(width=width if width >= 20 else 120)
