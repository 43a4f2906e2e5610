"""Faults a long run meets (issue 26): a loss that goes non-finite, a full disk, two runs in one
directory, a shared data cache written by two processes at once, and preemption (SIGTERM /
SIGINT). docs/reliability.md says what each test shows.

Whole runs are in process where they can be; the ones that need a process of their own (a
file-size limit, a signal, two processes at once) run `train.py` and are marked slow.
"""

from __future__ import annotations

import csv
import errno
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.train import REPO, compose_train, overrides_for, run_cli

import s2s.checkpoint_io
from s2s import run_lock
from s2s.checkpoint import read_checkpoint
from s2s.cli import cli_status
from s2s.files import atomic_write
from s2s.pipeline import train

DIVERGING = ["optimizer.lr=1e4", "scheduler=constant", "trainer.gradient_clip_val=0"]
DIVERGING += ["trainer.max_steps=12", "trainer.log_every_n_steps=4"]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A 6-step run on text data: its directory holds checkpoints/last.ckpt at step 6."""
    base = tmp_path_factory.mktemp("trained")
    train(compose_train(overrides_for(tiny_data, base)))
    return base / "run"


def checkpoints(run: Path) -> dict[str, dict]:
    return {p.name: read_checkpoint(p).raw for p in sorted((run / "checkpoints").glob("*.ckpt"))}


def finite(checkpoint: dict) -> bool:
    return all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


# -- 1. a non-finite loss ----------------------------------------------------------------------


def test_a_diverging_run_stops_with_one_line_and_saves_no_wreck(cfg_train, tmp_path, capsys):
    status = cli_status(train, cfg_train(*DIVERGING))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    match = re.fullmatch(r"error: step (\d+): the loss is (nan|inf) and the gradient norm .*", err)
    assert match, err
    saved = checkpoints(tmp_path / "run")
    assert saved and all(finite(c) for c in saved.values())
    assert all(c["global_step"] < int(match.group(1)) for c in saved.values())


def test_nonfinite_skip_trains_on_without_updating_on_bad_steps(cfg_train, tmp_path, caplog):
    result = train(cfg_train(*DIVERGING, "nonfinite=skip", "trainer.max_steps=8"))
    assert "step skipped" in caplog.text
    last = read_checkpoint(result["last_checkpoint"]).raw
    assert last["global_step"] == 8 and finite(last)


def test_the_gradient_norm_is_logged_before_clipping(cfg_train, tmp_path):
    train(cfg_train("trainer.gradient_clip_val=1e-6", "trainer.max_steps=3"))
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as handle:
        norms = [
            float(r["train/grad_norm"]) for r in csv.DictReader(handle) if r["train/grad_norm"]
        ]
    assert len(norms) == 3 and min(norms) > 1e-3  # the clipped norm would be 1e-6


# -- 2. a full disk ----------------------------------------------------------------------------


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(
    tiny_data, trained, tmp_path, monkeypatch, capsys
):
    run = shutil.copytree(trained, tmp_path / "run")
    before = (run / "checkpoints" / "last.ckpt").read_bytes()

    def full_disk(checkpoint, handle):
        if isinstance(handle, (str, os.PathLike)):  # torch.save(PATH) as it was called before
            handle = open(handle, "wb")  # noqa: SIM115
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(s2s.checkpoint_io.torch, "save", full_disk)
    cfg = compose_train(
        [*overrides_for(tiny_data, tmp_path), "ckpt_path=last", "trainer.max_steps=9"]
    )
    assert cli_status(train, cfg) == 1
    err = capsys.readouterr().err.strip()
    pattern = rf"error: {re.escape(str(run))}/checkpoints/[\w-]+\.ckpt: No space left on device"
    assert re.fullmatch(pattern, err), err
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
    assert read_checkpoint(run / "checkpoints" / "last.ckpt").raw["global_step"] == 6
    assert not list((run / "checkpoints").glob("*.tmp-*"))


@pytest.mark.slow  # a train.py process under a file-size limit
def test_a_file_size_limit_is_one_line_and_keeps_the_last_checkpoint(tiny_data, trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    args = overrides_for(tiny_data, tmp_path)
    size = (run / "checkpoints" / "last.ckpt").stat().st_size
    limit = size // 2  # tokenizer, config and logs fit; a checkpoint does not

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, "ckpt_path=last", "trainer.max_steps=9",
         f"hydra.run.dir={run}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limited,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    pattern = rf"error: {re.escape(str(run))}/checkpoints/[\w-]+\.ckpt: File too large"
    assert re.fullmatch(pattern, last), last
    assert read_checkpoint(run / "checkpoints" / "last.ckpt").raw["global_step"] == 6


# -- 3. concurrent runs and the shared cache ---------------------------------------------------


def _holder(directory: Path) -> subprocess.Popen:
    """Another process that holds `directory`'s lock until it is killed."""
    code = (
        "import pathlib, time\nfrom s2s import run_lock\n"
        f"run_lock.hold(pathlib.Path({str(directory)!r}))\n"
        "print('held', flush=True)\ntime.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_directory_held_by_another_process_is_refused(cfg_train, tmp_path, capsys):
    holder = _holder(tmp_path / "run")
    try:
        assert cli_status(train, cfg_train()) == 1
        err = capsys.readouterr().err.strip()
        assert re.fullmatch(rf"error: .*run: in use by another run \(pid {holder.pid}, .*", err)
        assert not (tmp_path / "run" / "config.yaml").exists()  # nothing written
    finally:
        holder.kill()  # SIGKILL: the kernel releases its lock
        holder.wait()
    run_lock.hold(tmp_path / "run")
    run_lock.release(tmp_path / "run")


@pytest.mark.slow  # two train.py processes
def test_two_runs_started_into_one_directory_at_once_only_one_trains(tiny_data, tmp_path):
    args = [*overrides_for(tiny_data, tmp_path), "trainer.max_steps=3"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}
    command = [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={tmp_path / 'run'}"]
    runs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    statuses = sorted(run.returncode for run in runs)
    assert statuses == [0, 1], errors
    refused = errors[[run.returncode for run in runs].index(1)].strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: .*run: (in use by another run \(pid \d+|holds an earlier run).*", refused
    )
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").raw["global_step"] == 3


CACHE_WRITER = """
import io, os, sys, time
from pathlib import Path
import numpy as np
from s2s.data import cache
from s2s.tokenizer import Tokenizer

os.getpid = lambda: 4242  # two containers: the same pid, one shared cache directory
real_savez = np.savez

def slow_savez(handle, **arrays):  # a slow disk: the entry is written in ten pieces
    buffer = io.BytesIO()
    real_savez(buffer, **arrays)
    data = buffer.getvalue()
    for i in range(10):
        handle.write(data[i * len(data) // 10 : (i + 1) * len(data) // 10])
        handle.flush()
        time.sleep(0.05)

cache.np.savez = slow_savez
data, tokenizer, cache_dir, go, name = sys.argv[1:]
tokenizer = Tokenizer.load(tokenizer)
Path(go + "." + name).touch()  # ready
while not Path(go).exists():
    time.sleep(0.005)
cache.tokenize_file(data, tokenizer, cache_dir)
"""


def test_a_cache_entry_written_by_two_processes_at_once_is_read_back_whole(
    tiny_data, tokenizer, tmp_path
):
    tokenizer.save(tmp_path / "tokenizer.json")
    cache_dir, go = tmp_path / "cache", tmp_path / "go"
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    args = [str(tiny_data["text_train"]), str(tmp_path / "tokenizer.json"), str(cache_dir), str(go)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", CACHE_WRITER, *args, str(i)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    while not all(Path(f"{go}.{i}").exists() for i in range(2)):  # both ready, then both go
        assert all(w.poll() is None for w in writers), [w.communicate()[1] for w in writers]
        time.sleep(0.01)
    go.touch()
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    from s2s.data.cache import tokenize_file

    entries = list(cache_dir.iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz", entries  # no temporaries left
    cached = tokenize_file(tiny_data["text_train"], tokenizer, cache_dir)
    fresh = tokenize_file(tiny_data["text_train"], tokenizer, None)
    assert (cached.inputs.ids == fresh.inputs.ids).all()
    assert (cached.inputs.offsets == fresh.inputs.offsets).all()


def test_writers_of_one_file_never_share_a_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    with atomic_write(tmp_path / "f") as first, atomic_write(tmp_path / "f") as second:
        assert first != second
        first.write_text("one")
        second.write_text("two")
    assert (tmp_path / "f").read_text() == "one"  # the last rename wins, whole


# -- 4. preemption -----------------------------------------------------------------------------


@pytest.mark.slow  # three train.py runs
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_and_the_resume_ends_at_the_same_weights(
    tiny_data, tmp_path, signum
):
    at = random.Random().randint(1, 7)  # the signal arrives during step at + 1
    common = [
        *overrides_for(tiny_data, tmp_path),
        "trainer.max_steps=10",
        "trainer.val_check_interval=4",
    ]
    whole = train(compose_train([*common, f"paths.output_dir={tmp_path / 'whole'}"]))
    stopped = common  # into tmp_path / "run"
    kill = ["+callbacks.kill._target_=helpers.signals.SignalAt", f"+callbacks.kill.step={at}",
            f"+callbacks.kill.signum={int(signum)}"]  # fmt: skip
    done = run_cli([*stopped, *kill], tmp_path)
    assert done.returncode == 128 + signum, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert re.fullmatch(
        rf"stopped: {name} at step {at + 1}: saved .*last\.ckpt; resume with .*", line
    )
    assert (
        read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").raw["global_step"] == at + 1
    )
    assert (tmp_path / "run" / "report.md").is_file()

    resumed = run_cli([*stopped, "ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").raw
    theirs = read_checkpoint(whole["last_checkpoint"]).raw
    assert ours["global_step"] == theirs["global_step"] == 10
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for key, tensor in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], tensor), f"at={at}: {key} differs"


@pytest.mark.slow  # a train.py run
def test_a_second_signal_ends_the_process_at_once(tiny_data, tmp_path):
    args = [*overrides_for(tiny_data, tmp_path), "trainer.max_steps=10",
            "+callbacks.kill._target_=helpers.signals.SignalAt", "+callbacks.kill.step=2",
            "+callbacks.kill.times=2"]  # fmt: skip
    done = run_cli(args, tmp_path)
    assert done.returncode == -signal.SIGTERM, done.stderr[-3000:]
    assert not (tmp_path / "run" / "report.md").exists()
