"""How every entry script runs its @hydra.main function: `entry.run(main)`.

Two things Hydra does its own way are made to follow the project's rule for failures
(one line on stderr naming the option and the fix, exit code 2, no traceback):

- Composition errors (an unknown config group option, a misspelt key, an override that
  does not parse) are caught by Hydra inside hydra.main and printed as 6-13 lines with
  exit code 1 (hydra/_internal/utils.py `run_and_report`, which wraps config composition,
  `--cfg` and the run itself). `run` wraps that function, so only errors raised while
  composing, never those of the job (they come from `run_job` and are reported by
  cli.fail_cleanly), become one line and exit code 2. HYDRA_FULL_ERROR=1 keeps Hydra's
  behaviour: the traceback is shown.
- Warnings of this package (data warnings: unsorted ids, interior gaps, other data) are
  written as one line through the "mamba_denoiser" logger, so they reach the console and
  the run's .log file once, instead of the two-line `file:line: UserWarning: ...` plus
  source line of the warnings module, on stderr only. Other packages' warnings are shown
  as before.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("mamba_denoiser")

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_MARK = "_mamba_denoiser_wrapped"


def run(main: Callable[[], Any]) -> Any:
    """Call a @hydra.main-decorated function with the project's error and warning rules."""
    _report_composition_errors()
    _log_package_warnings()
    return main()


# ---- Hydra composition errors -----------------------------------------------------------


def _script() -> str:
    return Path(sys.argv[0]).name or "the script"


def _one_line(text: str) -> str:
    lines = [" ".join(x.split()) for x in str(text).splitlines()]
    return next((x for x in lines if x), "")


def _from_job(err: BaseException) -> bool:
    """Raised by the task function, not by Hydra: run_job stores a job's exception and
    JobReturn.return_value (hydra/core/utils.py) raises it again."""
    tb = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "return_value" and code.co_filename.endswith(
            str(Path("hydra", "core", "utils.py"))
        ):
            return True
        tb = tb.tb_next
    return False


def composition_error_line(err: BaseException, script: str | None = None) -> str | None:
    """The one line for an error Hydra raised while composing the config, or None when
    `err` is not one (an error of the job itself, or anything else)."""
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(err, (HydraException, OmegaConfBaseException)) or _from_job(err):
        return None
    script = script or _script()
    shows = f"`python {script} --cfg job` shows the config"
    if isinstance(err, MissingConfigException):
        first = _one_line(str(err))
        missing = str(getattr(err, "missing_cfg_file", "") or "")
        group, _, option = missing.rpartition("/")
        options = list(getattr(err, "options", None) or [])
        if group and options:
            fix = f"choose {group}= one of: {', '.join(options)}"
        elif group:
            fix = f"no options in group '{group}'; `python {script} --help` lists the groups"
        else:
            fix = f"`python {script} --help` lists the config groups and their options"
        return f"error: {first} — {fix}"
    if isinstance(err, OverrideParseException):
        override = getattr(err, "override", "") or ""
        what = f"cannot parse the override '{override}'" if override else "cannot parse"
        return (
            f"error: {what} ({_one_line(getattr(err, 'message', str(err)))}) — write "
            "key=value, lists as [a,b], mappings as {k: v}, and quote it for the shell, "
            "e.g. 'sigma={E1: 0.5}' (https://hydra.cc/docs/advanced/override_grammar/basic)"
        )
    if isinstance(err, ConfigCompositionException):
        first = _one_line(str(err)).rstrip(".")
        cause = err.__cause__
        m = re.match(r"Could not override '([^']+)'", first)
        plus = re.search(r"use (\+\S+)", str(err))
        if m and isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
            key = m.group(1)
            parent = getattr(cause, "parent_node", None)
            keys = [str(k) for k in parent.keys()] if hasattr(parent, "keys") else []
            close = difflib.get_close_matches(key.rpartition(".")[2], keys, n=1, cutoff=0.6)
            prefix = key.rpartition(".")[0]
            mean = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            add = f"; only to add a new key write {plus.group(1)}" if plus else ""
            return (
                f"error: {first}: the config has no key '{key}' — check the spelling{mean}; "
                f"{shows}{add}"
            )
        return f"error: {first} — check the override; {shows}"
    first = _one_line(str(err)) or type(err).__name__
    return f"error: {first} — check the command line overrides; {shows}"


def _report_composition_errors() -> None:
    """Wrap Hydra's `run_and_report` (hydra/_internal/utils.py, looked up by name when
    hydra.main runs): composition errors become one line and exit code 2. Without that
    function (another Hydra version) Hydra reports them its own way."""
    try:
        from hydra._internal import utils as hydra_utils
    except ImportError:  # pragma: no cover
        return
    original = getattr(hydra_utils, "run_and_report", None)
    if original is None or getattr(original, _MARK, False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                line = composition_error_line(err)
                if line is None:
                    raise  # a job's error: Hydra's own report, as before
                _drop_empty_sweep_dir(err)
                print(line, file=sys.stderr)
                raise SystemExit(2) from None

        return original(guarded)

    setattr(run_and_report, _MARK, True)
    hydra_utils.run_and_report = run_and_report


def _drop_empty_sweep_dir(err: BaseException) -> None:
    """A multirun writes <sweep dir>/multirun.yaml before it composes its jobs (Hydra's
    BasicSweeper.sweep, local `sweep_dir`); after a composition error nothing else is
    there: remove it (no partial output)."""
    import shutil

    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "sweep" and isinstance(frame.f_locals.get("sweep_dir"), Path):
            sweep = frame.f_locals["sweep_dir"]
            if sweep.is_dir() and [p.name for p in sweep.iterdir()] == ["multirun.yaml"]:
                shutil.rmtree(sweep, ignore_errors=True)
            return
        tb = tb.tb_next


# ---- warnings ---------------------------------------------------------------------------


def _log_package_warnings() -> None:
    original = warnings.showwarning
    if getattr(original, _MARK, False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(_PACKAGE_DIR) and issubclass(category, UserWarning):
            text = " ".join(str(message).split())
            if category is not UserWarning:
                text = f"{category.__name__}: {text}"
            log.warning("%s", text)
            return
        original(message, category, filename, lineno, file, line)

    setattr(showwarning, _MARK, True)
    warnings.showwarning = showwarning
