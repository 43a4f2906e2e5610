"""Small file-system helpers shared by the writers of checkpoints, bundles and tokenizers."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# NAME.tmp-PID: a file being written by process PID (`atomic_write`)
_TMP_OF_PID = re.compile(r"\.tmp-(\d+)$")


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path `NAME.tmp-PID` beside `path` for the caller to write; when the
    block ends without an error, flush it to disk and rename it over `path` (atomic within one
    filesystem); in any case remove what is left of it. A reader, or a crash, never sees a
    half-written `path`, and an existing one stays whole until the new one replaces it. The
    one way s2s writes a file (checkpoints, tokenizers, run files, outputs, the data cache);
    `remove_stale_tmp_files` removes what a killed writer leaves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def new_file_mode() -> int:
    """The mode `open(..., "w")` gives a new file: 0o666 less the process umask (0644 under
    the usual 022), for files first written to a private temporary (mkstemp makes 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def remove_stale_tmp_files(directory: Path) -> list[Path]:
    """Delete `*.tmp-PID` files in `directory` whose writing process PID is gone (a killed
    save); a file of a live process is left alone. Returns what was removed."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TMP_OF_PID.search(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists under another user (or an absurd number: leave the file)
    return True
