"""Small file-system helpers shared by the writers of checkpoints, bundles and tokenizers."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# NAME.tmp-PID[-XXXXXXXX]: a file being written by process PID (`atomic_write`)
_TMP_OF_PID = re.compile(r"\.tmp-(\d+)(?:-[0-9a-f]{8})?$")


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary `NAME.tmp-PID-XXXXXXXX` beside `path` for the caller to write; when
    the block ends without an error, flush it to disk and rename it over `path` (atomic within one
    filesystem); in any case remove what is left of it. A reader, or a crash, never sees a
    half-written `path`, and an existing one stays whole until the new one replaces it. The
    one way s2s writes a file (checkpoints, tokenizers, run files, outputs, the data cache);
    `remove_stale_tmp_files` removes what a killed writer leaves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_tmp(path)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        # a failed write (ENOSPC, EFBIG, EACCES, EROFS) names the file being written, not the
        # temporary or nothing, so that the error boundary (s2s.cli) says which one in one line
        if err.strerror and err.filename in (None, str(tmp)):
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _new_tmp(path: Path) -> Path:
    """A new, empty `NAME.tmp-PID-XXXXXXXX` beside `path`, created exclusively: two writers of
    one file never share a temporary, also when they have the same PID (processes in two
    containers writing to one shared data cache)."""
    while True:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def new_file_mode() -> int:
    """The mode `open(..., "w")` gives a new file: 0o666 less the process umask (0644 under
    the usual 022), for files first written to a private temporary (mkstemp makes 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def remove_stale_tmp_files(directory: Path) -> list[Path]:
    """Delete `*.tmp-PID[-XXXXXXXX]` files in `directory` whose writing process PID is gone (a
    killed save); a file of a live process is left alone. Returns what was removed."""
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
