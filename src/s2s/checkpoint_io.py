"""Checkpoint files that are either complete or absent, never half-written, and read safely.

Lightning's default writer moves a temporary file from the system temp directory into place,
which is a copy (not an atomic rename) when that directory is on another filesystem. This one
writes `NAME.tmp-<pid>-<random>` beside the target, flushes it to disk, then `os.replace`s it: a run
killed at any moment (even SIGKILL) leaves the previous checkpoint intact. Temporaries of
processes that are gone are removed (`s2s.files.remove_stale_tmp_files`).

Reading (what `trainer.fit(ckpt_path=...)` calls) accepts local files only and always uses
`torch.load(..., weights_only=True)`: an s2s checkpoint holds only plain data and tensors, and
a file that needs more is refused instead of being unpickled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from s2s.checkpoint import read_checkpoint
from s2s.files import atomic_write, remove_stale_tmp_files


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        remove_stale_tmp_files(path.parent)
        # through a Python file: a failed write is an OSError (ENOSPC, EFBIG) that names the
        # file, where torch.save(PATH) raises an unnamed RuntimeError
        with atomic_write(path) as tmp, tmp.open("wb") as handle:
            try:
                torch.save(checkpoint, handle)
            except RuntimeError as err:
                # torch's zip writer reports the failed write as a RuntimeError of its own
                # ("unexpected pos") while closing the archive: the OSError is its context
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """The whole checkpoint, read by `s2s.checkpoint.read_checkpoint` (local, weights only,
        s2s metadata checked); `weights_only=False` is refused, never honoured."""
        if weights_only is False:
            raise ValueError(f"{path}: s2s reads checkpoints with weights_only=True only")
        return read_checkpoint(path, "ckpt_path").raw
