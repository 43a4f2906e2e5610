"""Entry-point helpers: turn the project's expected errors into one line on stderr, exit 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf.errors import OmegaConfBaseException

import s2s.paths  # noqa: F401  (registers the ${s2s_root:} resolver the configs use)

T = TypeVar("T")
log = logging.getLogger("s2s")


def run_cli(function: Callable[..., T], *args: Any) -> T:
    """Call `function`; on a user-facing error print `error: <message>` and exit non-zero.

    User-facing errors are bad values and files (ValueError and its subclasses: RecordError,
    TokenizerError, CheckpointError, config validation), missing files, and OmegaConf errors
    (a missing `???` key, a bad interpolation). Anything else is a bug and keeps its traceback.
    """
    try:
        return function(*args)
    except (ValueError, FileNotFoundError, OmegaConfBaseException) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
