"""A bounded set of open read-only files: the least recently used one is closed first.

A prepared corpus at C4 scale has thousands of shards (two files each); keeping one descriptor
per file open fails with `[Errno 24] Too many open files` under the common `ulimit -n 1024`.
`OpenFiles` keeps at most `limit` open per process (each DataLoader worker has its own), far
under RLIMIT_NOFILE, and re-opens a closed file on its next read (an `open` costs microseconds,
a block read far more). Reads use `os.pread`, so a descriptor has no position to restore.
"""

from __future__ import annotations

import os
import resource
from collections import OrderedDict
from pathlib import Path

MAX_OPEN = 64  # per reader and process, when RLIMIT_NOFILE leaves room for it
SHARE_OF_LIMIT = 16  # ...and never more than 1/16 of the soft RLIMIT_NOFILE


def default_limit() -> int:
    """How many files one reader keeps open: MAX_OPEN, or less under a low `ulimit -n`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN
    return max(2, min(MAX_OPEN, soft // SHARE_OF_LIMIT))


class OpenFiles:
    """`pread(path, size, offset)` through a least-recently-used cache of descriptors.

    Pickles as empty (a DataLoader worker opens its own), and a forked child closes the copies
    of its parent's descriptors before opening any (they would count against its own limit).
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._fds: OrderedDict[Path, int] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {"limit": self.limit, "_fds": OrderedDict(), "_pid": -1}

    def __len__(self) -> int:
        return len(self._fds)

    def pread(self, path: Path, size: int, offset: int) -> bytes:
        return os.pread(self._fd(path), size, offset)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __del__(self) -> None:
        # at interpreter exit module globals (os) may already be gone: the OS closes the files
        if os is not None and os.getpid is not None and getattr(self, "_pid", None) == os.getpid():
            self.close()

    def _fd(self, path: Path) -> int:
        if self._pid != os.getpid():  # a forked child: its own descriptors
            if self._pid != -1:
                self.close()
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        limit = self.limit or default_limit()
        while len(self._fds) >= limit:
            os.close(self._fds.popitem(last=False)[1])
        fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd
