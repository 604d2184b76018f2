"""``fn()`` in a forked worker process while the caller goes on: evaluate.py runs its exact
leakage checks (one core, torch single-threaded) beside the baselines and the report."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


class Background:
    """``fn()`` in a forked worker process: its result (or its exception, raised here) by
    ``result()``. Off Linux (no fork, or macOS where forking a process that has loaded
    its system frameworks is unsafe) ``fn`` runs inside ``result()``, as before.

    Why: the exact leakage checks re-run the causal path ~20 times on one core (torch,
    one thread), while the baselines, the look-ahead statistics and the report fill the
    other; a fork starts at once and shares the models, the panel and every memo (the
    state-space and robust fits) without pickling them. Same work, same results (every
    random draw has its own seeded generator); only where it runs changes."""

    def __init__(self, fn: Callable[[], Any]):
        import multiprocessing as mp

        self._fn, self._proc, self._done, self._value = fn, None, False, None
        if not sys.platform.startswith("linux"):
            return
        ctx = mp.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        sys.stdout.flush()  # a buffer copied into the child would be written twice
        sys.stderr.flush()
        self._proc = ctx.Process(target=_child, args=(fn, send), daemon=True)
        self._proc.start()
        send.close()

    def result(self) -> Any:
        if self._done:
            return self._value
        if self._proc is None:
            self._value = self._fn()
        else:
            try:
                ok, value = self._recv.recv()
            except EOFError:  # the child died without a word (killed, out of memory)
                self._proc.join()
                code = self._proc.exitcode
                ok, value = False, RuntimeError(f"the worker exited ({code})")
            self._proc.join()
            self._proc = None
            if not ok:
                raise value
            self._value = value
        self._done = True
        return self._value

    @contextlib.contextmanager
    def failure_first(self) -> Iterator[None]:
        """For the steps that ran after ``fn`` when it ran first: an error in them waits
        for ``fn`` and raises ``fn``'s own error, if any, instead."""
        try:
            yield
        except Exception:
            self.result()
            raise

    def stop(self) -> None:
        """End the worker if its result was never collected (a step before failed)."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join()
            self._proc = None


def _child(fn: Callable[[], Any], send) -> None:
    """The forked worker: one torch thread (the parent keeps the other core busy), no
    progress bars (they would draw over the parent's); sends (ok, result or error)."""
    import os

    import torch

    os.environ["MAMBA_DENOISER_PROGRESS"] = "0"
    torch.set_num_threads(1)
    try:
        out = (True, fn())
    except BaseException as err:  # noqa: BLE001 - handed to the parent, which raises it
        out = (False, err)
    try:
        send.send(out)
    except Exception as err:  # an error that cannot be pickled: its text instead
        send.send((False, RuntimeError(f"worker: {out[1]!r} ({err})")))
