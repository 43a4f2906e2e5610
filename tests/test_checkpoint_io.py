"""s2s.checkpoint_io.AtomicCheckpointIO on small files, without training: a save is complete or
absent (the previous file kept whole, no temporary left), a failed write surfaces as the
OSError naming the file, stale temporaries of dead writers are swept, storage options are
refused, and loading goes through `read_checkpoint` (weights only, never `weights_only=False`).
(test_faults.py drives the same through a training run; these pin each rule alone, in seconds.)
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
from helpers.generation import tiny_model, write_ckpt

import s2s.checkpoint_io
from s2s.checkpoint import CheckpointError
from s2s.checkpoint_io import AtomicCheckpointIO


def test_a_save_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpts" / "last.ckpt"  # the directory is made
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, str(path))
    assert torch.load(path, weights_only=True) == {"step": torch.tensor(2)}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_failed_write_keeps_the_previous_file_and_raises_the_os_error(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def full_disk(checkpoint, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(s2s.checkpoint_io.torch, "save", full_disk)
    with pytest.raises(OSError) as err:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_torchs_own_error_around_a_failed_write_becomes_that_write_error(tmp_path, monkeypatch):
    """torch's zip writer reports a failed write as RuntimeError("unexpected pos ...") while
    closing; the OSError it carries as its context is what the user sees. A RuntimeError
    without one is raised as it is."""
    path = tmp_path / "last.ckpt"

    def zip_writer_failure(checkpoint, handle):
        try:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
        except OSError:
            raise RuntimeError("unexpected pos 64 vs 0") from None

    monkeypatch.setattr(s2s.checkpoint_io.torch, "save", zip_writer_failure)
    with pytest.raises(OSError) as err:
        AtomicCheckpointIO().save_checkpoint({}, path)
    assert err.value.errno == errno.EFBIG and err.value.__suppress_context__

    def plain_failure(checkpoint, handle):
        raise RuntimeError("not serialisable")

    monkeypatch.setattr(s2s.checkpoint_io.torch, "save", plain_failure)
    with pytest.raises(RuntimeError, match=r"^not serialisable$"):
        AtomicCheckpointIO().save_checkpoint({}, path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_stale_temporaries_of_dead_writers_are_swept_before_a_save(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    stale = tmp_path / f"last.ckpt.tmp-{dead}-0123abcd"
    live = tmp_path / f"epoch=0.ckpt.tmp-{os.getpid()}-89abcdef"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", live.name])


def test_storage_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"^AtomicCheckpointIO takes no storage_options$"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={})
    assert not list(tmp_path.iterdir())


def test_loading_is_read_checkpoint_and_never_unpickles(tokenizer, tmp_path):
    model = tiny_model(tokenizer.vocab_size)
    path = write_ckpt(tmp_path / "m.ckpt", model, tokenizer, global_step=3)
    raw = AtomicCheckpointIO().load_checkpoint(path)
    assert raw["global_step"] == 3 and set(raw) == {"state_dict", "s2s", "global_step"}
    assert AtomicCheckpointIO().load_checkpoint(str(path), weights_only=True)["global_step"] == 3
    with pytest.raises(ValueError) as err:
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert str(err.value) == f"{path}: s2s reads checkpoints with weights_only=True only"
    with pytest.raises(CheckpointError, match=r"^ckpt_path=http://h/x\.ckpt: only local files"):
        AtomicCheckpointIO().load_checkpoint("http://h/x.ckpt")
