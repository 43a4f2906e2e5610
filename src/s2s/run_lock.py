"""One run per run directory: an advisory lock held for the whole run.

`hold(DIR)` takes `fcntl.flock` on DIR/run.lock and writes this process's id into it; a second
process aiming at DIR is refused with one line naming the holder's pid. The kernel releases the
lock when the holding process ends however it ends (also SIGKILL, also a crash), so a killed
run never leaves a directory locked; the file itself stays (removing it would race with a new
holder) and means nothing without the lock.

The lock is taken twice in a `python train.py` run: by the Hydra callback (s2s.run_dir.
RunDirGuard) before Hydra writes `.hydra/` and train.log into the directory, and by `train()`
for callers that call it directly. Within one process holds nest (a count per directory): a
second open file would conflict with the first under flock. Only global rank 0 locks (the other
DDP ranks start later, into the directory rank 0 holds).

flock is advisory and local: it does not stop a program that ignores it, and on some network
filesystems (older NFS) it is not shared between machines.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "run.lock"
_held: dict[Path, tuple[int, int]] = {}  # directory -> (open file descriptor, nesting count)
_created: set[Path] = set()  # directories that hold() made (removed again if left empty)


class RunDirLocked(ValueError):
    """The run directory is held by another process."""


def hold(directory: Path) -> None:
    """Take the lock of `directory` (created if missing) or raise RunDirLocked."""
    key = directory.resolve()
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return
    if not directory.exists():
        _created.add(key)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise RunDirLocked(
            f"{directory}: in use by another run (pid {holder}, {directory / LOCK_FILE}); wait "
            "for it to end or give another hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = (fd, 1)


def release(directory: Path) -> None:
    """Undo one `hold`; the last one unlocks (a process that never releases unlocks at exit)."""
    key = directory.resolve()
    if key not in _held:
        return
    fd, count = _held.pop(key)
    if count > 1:
        _held[key] = (fd, count - 1)
        return
    if key in _created:
        _created.discard(key)
        # a run refused before it wrote anything leaves no directory behind (only the lock
        # file is there: removed while still held, so no other holder can have it)
        if [p.name for p in directory.iterdir()] == [LOCK_FILE]:
            (directory / LOCK_FILE).unlink()
            directory.rmdir()
    os.close(fd)  # closing the only descriptor of the open file releases the flock
