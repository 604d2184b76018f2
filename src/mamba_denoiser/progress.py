"""Progress bars for the long loops: state-space fits, denoising (per cluster, its windows),
the baselines and the leakage checks. The one helper every stage uses.

    with bar("State-space fits", total=len(cols)) as b:
        for _ in pool.map(...):
            b.advance()
    run_windows(..., progress=b)          # a Bar is also the (done, total) callback

A bar is drawn (rich, on stderr, removed when done) only on an interactive terminal: when
stderr is not a TTY (piped to a log, CI, a notebook) nothing is drawn and the stages' own
log lines (one per stage) are the record. ``MAMBA_DENOISER_PROGRESS=0`` turns bars off,
``=1`` on (even when piped). Bars opened while one is shown join it as further lines (rich
allows one live display), so nested loops (a cluster, then its windows) show together.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

ENV = "MAMBA_DENOISER_PROGRESS"
_live = None  # the rich Progress on screen, shared by nested bars
_depth = 0


def _flag() -> str:
    return os.environ.get(ENV, "").strip().lower()


def _forced() -> bool:
    return _flag() in ("1", "true", "yes", "on")


def enabled() -> bool:
    """Bars on: MAMBA_DENOISER_PROGRESS=1; off: =0; else when stderr is a terminal."""
    if _flag() in ("0", "false", "no", "off"):
        return False
    return _forced() or sys.stderr.isatty()


class Bar:
    """One task of the shared display; without a display every call does nothing."""

    def __init__(self, progress=None, task=None):
        self._p, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the count (and the total, for loops that report both)."""
        if self._p is not None:
            self._p.update(self._task, completed=completed, total=total)

    __call__ = update  # the (done, total) callback of inference.plan.run_windows

    @property
    def shown(self) -> bool:
        return self._p is not None


@contextlib.contextmanager
def bar(description: str, total: int | None = None, *, show: bool = True) -> Iterator[Bar]:
    """A bar for one loop (``show=False``, or bars off: a Bar that does nothing)."""
    global _live, _depth
    if not show or not enabled():
        yield Bar()
        return
    if _live is None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        _live = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            # forced on (MAMBA_DENOISER_PROGRESS=1) through a pipe: drawn as on a terminal
            console=Console(stderr=True, force_terminal=True if _forced() else None),
            transient=True,
        )
        _live.start()
    _depth += 1
    task = _live.add_task(description, total=total)
    try:
        yield Bar(_live, task)
    finally:
        _live.remove_task(task)
        _depth -= 1
        if _depth == 0:
            _live.stop()
            _live = None
