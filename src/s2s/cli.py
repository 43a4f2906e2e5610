"""The one error boundary of the entry points: expected failures print one line, exit 1.

`train.py`, `generate.py` and `python -m s2s.export` all go through `run_cli` (or `cli_status`,
which returns the exit status instead of exiting), so the same failure prints the same way
everywhere. Expected failures are

    ValueError (and subclasses)  bad values and files: RecordError, TokenizerError,
                                 CheckpointError, config validation, UnicodeDecodeError
    OSError                      missing or unreadable files, permissions, a full disk
    OmegaConf errors             a missing `???` key, a bad interpolation
    MisconfigurationException    Lightning refusing a trainer setting (e.g. no GPU)

and the same errors when Hydra's `instantiate` wraps them. Anything else is a bug and keeps
its traceback; Ctrl-C exits with status 130 without one. A run stopped by a signal after
saving what resumes it (`Interrupted`, s2s.preemption) prints `stopped: <message>` and exits
with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a shell reports a signal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from omegaconf.errors import OmegaConfBaseException

import s2s.paths  # noqa: F401  (registers the ${s2s_root:} resolver the configs use)

T = TypeVar("T")
log = logging.getLogger("s2s")
EXPECTED = (ValueError, OSError, OmegaConfBaseException)
# Lightning's configuration error, matched only when Lightning is loaded (generate.py and the
# export never import it, and importing it takes seconds)
LIGHTNING_ERRORS = "lightning.fabric.utilities.exceptions"
INTERRUPTED = 130


class Interrupted(Exception):
    """A run stopped by signal `signum` once it had saved what resumes it: not a failure of
    the program, but not a finished run either (the exit status says which signal)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def run_cli(function: Callable[..., T], *args: Any) -> T:
    """Call `function`; on an expected failure print `error: <message>` and exit non-zero."""
    try:
        return function(*args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Interrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr, flush=True)
        sys.exit(128 + stop.signum)
    except Exception as err:
        cause = expected_cause(err)
        if cause is None:
            raise
        print(f"error: {error_message(cause)}", file=sys.stderr, flush=True)
        sys.exit(1)


def cli_status(function: Callable[..., Any], *args: Any) -> int:
    """`run_cli` that returns the exit status (0, 1 or 130) instead of exiting."""
    try:
        run_cli(function, *args)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0


def expected_cause(err: BaseException) -> BaseException | None:
    """`err`, or the error a Hydra instantiation failure wraps, if expected; else None."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    expected: tuple[type, ...] = EXPECTED
    if LIGHTNING_ERRORS in sys.modules:
        expected += (sys.modules[LIGHTNING_ERRORS].MisconfigurationException,)
    return err if isinstance(err, expected) else None


def error_message(err: BaseException) -> str:
    """One line: the message with its whitespace collapsed; OSErrors as `FILE: reason`."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split()) or type(err).__name__
