"""The failure policy every entry script shares, and where a run's outputs go.

How a run fails: one clear message for user errors (``user_errors``), no traceback, and
nothing half-written left behind (``fail_cleanly``); Lightning's log lines routed through
Hydra's handlers once. And the project root the outputs/ folder hangs off. What the jobs
read from their configs in common is stage.py's; finding and checking the artifacts of
earlier stages is artifacts.py's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from mamba_denoiser.errors import (
    CheckpointError,
    ClustersError,
    ConfigError,
    LeakageError,
    NonFiniteLossError,
    PanelError,
)

log = logging.getLogger("mamba_denoiser")

# conf/paths/default.yaml reads the root from this variable. Entry scripts set it to the
# working directory before Hydra starts, so no `${hydra:...}` resolver is needed in
# anything the multirun sweeper resolves (hydra.sweep.dir is built before any job runs).
ROOT_ENV = "MAMBA_DENOISER_ROOT"


def set_project_root() -> None:
    """Called by entry scripts before @hydra.main: outputs/ go under the start directory
    unless the user set MAMBA_DENOISER_ROOT or passes paths.root_dir=..."""
    os.environ.setdefault(ROOT_ENV, os.getcwd())


def user_errors() -> tuple[type[BaseException], ...]:
    """Failures with a message written for the user: no traceback is shown for these.

    Lightning's MisconfigurationException is among them only when Lightning is already
    imported (train.py): it cannot be raised otherwise, and denoise.py must not import it."""
    import torch

    errors: tuple[type[BaseException], ...] = (
        PanelError,
        ClustersError,
        CheckpointError,
        ConfigError,
        NonFiniteLossError,
        LeakageError,
    )
    if "lightning" in sys.modules:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        errors += (MisconfigurationException,)
    return (*errors, torch.OutOfMemoryError)


def describe(err: BaseException) -> str:
    """One line for the user (a message of several lines is joined); OOM gets the fix
    appended."""
    import torch

    msg = str(err).strip() or type(err).__name__
    if isinstance(err, LeakageError):
        msg = f"leakage check failed: {msg}"
    if isinstance(err, torch.OutOfMemoryError):
        msg = (
            f"out of memory ({msg.splitlines()[0]}). Lower batch_size=..., use a smaller "
            "model (model=small), or a shorter data.window_size."
        )
    return " ".join(s.strip() for s in msg.splitlines() if s.strip())


def _has_checkpoint(out: Path) -> bool:
    return any(out.glob("checkpoints/*.ckpt"))


@contextlib.contextmanager
def fail_cleanly(
    out_dir: Path,
    *,
    on_failure=None,
    on_interrupt=None,
    delete: bool | Callable[[], bool] = True,
    keep_going: bool = False,
    passthrough: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Run a job; on failure print one message and exit, leaving nothing half-done.

    - A run that fails before its first checkpoint loses its run directory (`delete`
      is False for DDP children, which must not delete the launcher's directory; a
      callable is asked when the failure happens, e.g. for the rank a Trainer knows).
    - Exceptions of the types in `passthrough` are re-raised untouched (train.py: a
      preempted run, requeued by its launcher).
    - A run that fails later keeps its checkpoints; `on_failure(message, exit_code)`
      records the failure (train.py writes summary.json with "status": "failed").
    - User errors exit with code 2, anything else with 1, both without a traceback;
      HYDRA_FULL_ERROR=1 re-raises so the traceback is shown.
    - Ctrl-C (KeyboardInterrupt, also as Lightning's SystemExit(1)): `on_interrupt()`
      records it when there is something to keep (train.py: "status": "interrupted"); it
      may return the line to print. Exit code 130.
    - `keep_going` (a job of a multirun): a failure is recorded even before the first
      checkpoint, the directory is kept so the sweep table lists the job, and after the
      message the block returns instead of exiting, so the other jobs of the sweep run.
      Interrupts still exit.
    """
    try:
        yield
    except BaseException as err:
        if isinstance(err, passthrough) or (isinstance(err, SystemExit) and err.code in (0, None)):
            raise
        if callable(delete):
            delete = bool(delete())
        full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
        keep = keep_going or _has_checkpoint(out_dir)
        if _interrupted(err):
            restore_sigint()  # Lightning ignores SIGINT after a Ctrl-C; a second one must work
            line = None
            if delete and keep and on_interrupt is not None:
                with contextlib.suppress(Exception):
                    line = on_interrupt()
            elif delete and keep and on_failure is not None:
                with contextlib.suppress(Exception):
                    on_failure("interrupted (KeyboardInterrupt)", 130)
            elif delete and not keep:
                shutil.rmtree(out_dir, ignore_errors=True)
            if full_error:
                raise
            print(line or "interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        expected = isinstance(err, user_errors())
        message = describe(err) if expected else f"{type(err).__name__}: {describe(err)}"
        code = 2 if expected else 1
        if delete:
            if keep:
                if on_failure is not None:
                    with contextlib.suppress(Exception):
                        on_failure(message, code)
            else:
                shutil.rmtree(out_dir, ignore_errors=True)
        if full_error or (isinstance(err, SystemExit) and not keep_going):
            raise  # someone else's exit code (e.g. a DDP child's) is kept as it is
        print(f"error: {message}", file=sys.stderr)
        if not expected:
            print(
                "(an unexpected error: set HYDRA_FULL_ERROR=1 for the traceback and please "
                "report it)",
                file=sys.stderr,
            )
        if keep_going:
            return
        raise SystemExit(code) from None


def restore_sigint() -> None:
    """Give SIGINT back its default handler (Lightning sets SIG_IGN after catching a Ctrl-C)."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted(err: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or the sys.exit(1) Lightning raises after catching one
    (its trainer turns KeyboardInterrupt into SystemExit(1) raised inside the handler)."""
    return isinstance(err, KeyboardInterrupt) or (
        isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)
    )


class _DropVendorTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def route_lightning_logs() -> None:
    """Lightning adds its own stderr handler when imported before logging is configured,
    so under Hydra every line came out twice; send its records through Hydra's handlers
    only, and drop its advertising tips and a deprecation notice of its own internals."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        lg.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropVendorTips) for f in lg.filters):
            lg.addFilter(_DropVendorTips())
