"""Reliability and safety of the entry points (issue 14): resume reads checkpoints safely and
checks them, configs read from files are size-checked, nothing is overwritten by accident,
expected failures are one line, and tokenizer training cannot stall on one long record.

Training runs are in process (a subprocess pays seconds of start-up); one module-wide run
provides the checkpoint that the resume tests start from.
"""

from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers.generation import tiny_model, write_ckpt
from helpers.train import REPO, compose_generate, compose_train, overrides_for
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf

import s2s.data.datamodule
import s2s.pipeline
from s2s.bundle import load_pretrained, read_pretrained, save_bundle
from s2s.checkpoint import CheckpointError, read_checkpoint
from s2s.checkpoint_io import AtomicCheckpointIO
from s2s.cli import cli_status, run_cli
from s2s.config import (
    MAX_PARAMETERS,
    ModelConfig,
    check_size,
    estimated_parameters,
    parameter_limit,
)
from s2s.data.records import RecordError
from s2s.export import main as export_main
from s2s.files import remove_stale_tmp_files
from s2s.model import Seq2SeqTransformer
from s2s.pipeline import generate, train
from s2s.report import log_locations
from s2s.run_dir import RunDirGuard, check_run_dir, replace_earlier_run
from s2s.tokenizer import MAX_TRAINING_RUN, Tokenizer, training_pieces


class WritesMarker:
    """Unpickling this creates the file `path`: the stand-in for code a checkpoint could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def hostile_ckpt(path: Path, marker: Path, tokenizer: Tokenizer) -> Path:
    model = tiny_model(tokenizer.vocab_size)
    write_ckpt(path, model, tokenizer, callbacks=WritesMarker(marker))
    return path


def refused(cfg, match: str) -> None:
    """train(cfg) must fail with an expected (one-line) error matching `match`."""
    with pytest.raises(ValueError, match=match):
        train(cfg)


def one_line(capsys, function, *args) -> str:
    status = cli_status(function, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A 4-step run on text data: its directory holds checkpoints/last.ckpt and csv logs."""
    base = tmp_path_factory.mktemp("trained")
    cfg = compose_train([*overrides_for(tiny_data, base), "trainer.max_steps=4"])
    train(cfg)
    return base / "run"


def base(tiny_data, tmp_path: Path, *extra: str, kind: str = "text"):
    return compose_train([*overrides_for(tiny_data, tmp_path, kind), *extra])


# -- 1. code execution on resume ---------------------------------------------------------------


def test_resume_from_a_url_is_refused_without_fetching(tiny_data, tokenizer, tmp_path):
    marker = tmp_path / "marker"
    hostile_ckpt(tmp_path / "x.ckpt", marker, tokenizer)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            requests.append(args)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # a short poll: shutdown() waits up to one interval (0.5 s by default)
    serve = functools.partial(server.serve_forever, poll_interval=0.02)
    threading.Thread(target=serve, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x.ckpt"
        refused(base(tiny_data, tmp_path, f"ckpt_path={url}"), "only local files are read")
        with pytest.raises(CheckpointError, match="only local files"):
            AtomicCheckpointIO().load_checkpoint(url)
    finally:
        server.shutdown()
        server.server_close()
    assert not marker.exists() and not requests


def test_resume_from_a_hostile_pickle_never_runs_it(tiny_data, tokenizer, tmp_path):
    marker = tmp_path / "marker"
    ckpt = hostile_ckpt(tmp_path / "x.ckpt", marker, tokenizer)
    refused(base(tiny_data, tmp_path, f"ckpt_path={ckpt}"), "refused: the checkpoint holds")
    with pytest.raises(CheckpointError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(ckpt)  # what trainer.fit(ckpt_path=) calls
    with pytest.raises(ValueError, match="weights_only=True only"):
        AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=False)
    assert not marker.exists()


def test_lightning_checkpoints_load_weights_only(trained):
    raw = AtomicCheckpointIO().load_checkpoint(trained / "checkpoints" / "last.ckpt")
    assert raw["global_step"] == 4 and "optimizer_states" in raw and "s2s" in raw


# -- 2. resume goes through s2s's checks ---------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d, ok: _write(d / "zero.ckpt", b""), "not a readable checkpoint"),
        (lambda d, ok: _write(d / "rand.ckpt", os.urandom(4096)), "not a readable checkpoint"),
        (lambda d, ok: _damaged(ok, d / "cut.ckpt"), "not a readable checkpoint"),
        (lambda d, ok: _non_s2s(d / "other.ckpt"), "not an s2s checkpoint"),
        (lambda d, ok: _bundle(ok, d / "bundle"), "is a directory .* use init_from="),
        (lambda d, ok: d / "missing.ckpt", "checkpoint not found"),
        (lambda d, ok: _weights_only(ok, d / "w.ckpt"), "not a training checkpoint"),
    ],
    ids=["zero-byte", "random", "truncated", "non-s2s", "bundle-dir", "missing", "no-state"],
)
def test_bad_resume_checkpoints_give_one_line(tiny_data, trained, tmp_path, capsys, make, message):
    ckpt = make(tmp_path, trained / "checkpoints" / "last.ckpt")
    cfg = base(tiny_data, tmp_path, f"ckpt_path={ckpt}")
    line = one_line(capsys, train, cfg)
    assert re.search(message, line), line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _damaged(ok: Path, path: Path) -> Path:
    return _write(path, ok.read_bytes()[: ok.stat().st_size // 2])


def _non_s2s(path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return path


def _bundle(ok: Path, directory: Path) -> Path:
    model, tokenizer = load_pretrained(ok)
    return save_bundle(model, tokenizer, directory)


def _weights_only(ok: Path, path: Path) -> Path:
    model, tokenizer = load_pretrained(ok)
    return write_ckpt(path, model, tokenizer)


def test_resume_with_another_architecture_is_refused(tiny_data, trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    cfg = base(tiny_data, tmp_path, "model=small", "model.d_model=64", f"ckpt_path={ckpt}")
    refused(cfg, r"ckpt_path=.*last\.ckpt: the checkpoint's architecture .*model\.d_model=64")


def test_ckpt_path_last_in_a_new_directory_is_an_error(tiny_data, tmp_path):
    refused(base(tiny_data, tmp_path, "ckpt_path=last"), r"ckpt_path=last: no checkpoint at")


@pytest.mark.slow  # two training runs
def test_ckpt_path_last_resumes_the_run_in_place_and_keeps_its_metrics(
    tiny_data,
    trained,
    tmp_path,
):
    run = shutil.copytree(trained, tmp_path / "run")
    before = (run / "csv" / "metrics.csv").read_text()
    result = train(base(tiny_data, tmp_path, "ckpt_path=last", "trainer.max_steps=6"))
    assert read_checkpoint(result["last_checkpoint"]).raw["global_step"] == 6
    assert (run / "csv" / "metrics-1.csv").read_text() == before  # the first 4 steps' logs
    with (run / "csv" / "metrics.csv").open() as handle:
        steps = {int(row["step"]) for row in csv.DictReader(handle)}
    assert steps and min(steps) >= 4


# -- 3. resume uses the checkpoint's tokenizer ---------------------------------------------------


@pytest.mark.slow  # a second training run
def test_resume_with_changed_data_keeps_the_checkpoints_tokenizer(tiny_data, trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = ckpt.with_name(f"last.ckpt.tmp-{dead.pid}")  # left by a killed save (item 9)
    stale.write_bytes(b"half a checkpoint")
    # another corpus under a resume is refused unless forced (s2s.data.position, issue 29)
    forced = "data.force_resume=true"
    cfg = base(
        tiny_data, tmp_path, f"ckpt_path={ckpt}", "trainer.max_steps=5", forced, kind="pairs"
    )
    train(cfg)
    written = Tokenizer.load(tmp_path / "run" / "tokenizer.json")
    assert written.digest() == read_checkpoint(ckpt).tokenizer.digest()
    assert not stale.exists()


# -- 4. data=custom needs its files, and says so before any model is built -----------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=custom"], "data.train_path is not set"),
        (["data=custom", "data.train_path={train}"], "data.val_path is not set"),
    ],
)
def test_custom_data_without_files_fails_before_any_model(
    tiny_data,
    tmp_path,
    monkeypatch,
    overrides,
    message,
):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(s2s.pipeline, "Seq2SeqTransformer", no_model)
    monkeypatch.setattr(s2s.data.datamodule, "S2SDataModule", no_model)
    given = [o.format(train=tiny_data["text_train"]) for o in overrides]
    cfg = compose_train([*given, f"paths.output_dir={tmp_path / 'run'}"])
    assert cfg.data.train_path != str(REPO / "datasets/shakespeare/train.json")
    refused(cfg, message)


# -- 5. configs read from files are size-checked before allocation -------------------------------

HOSTILE = {
    "wide": {"d_model": 16384, "d_ff": 65536},
    "deep": {"n_encoder_layers": 200000},
    "everything": {
        "d_model": 2**20,
        "d_ff": 2**20,
        "n_heads": 2**10,
        "n_encoder_layers": 2**20,
        "n_decoder_layers": 2**20,
        "max_positions": 2**20,
    },
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_oversized_configs_in_files_are_refused_before_allocation(
    tokenizer, tmp_path, monkeypatch, capsys, name
):
    model = tiny_model(tokenizer.vocab_size)
    save_bundle(model, tokenizer, tmp_path / "bundle")
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(config | HOSTILE[name]))
    ckpt = write_ckpt(tmp_path / "x.ckpt", model, tokenizer)
    raw = torch.load(ckpt, weights_only=True)
    raw["s2s"]["model_config"].update(HOSTILE[name])
    torch.save(raw, ckpt)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr("s2s.bundle.Seq2SeqTransformer", no_model)
    monkeypatch.setattr("s2s.config.physical_memory", lambda: 16 * 2**30)  # a 16 GB machine
    for source in (tmp_path / "bundle", ckpt):
        with pytest.raises(CheckpointError, match="over the limit"):
            load_pretrained(source)
    assert export_main([str(ckpt), str(tmp_path / "out")]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {ckpt}: ") and "over the limit" in line


def test_the_size_limit_is_documented_and_can_be_changed(monkeypatch):
    config = ModelConfig()
    real = sum(p.numel() for p in Seq2SeqTransformer(config).parameters())
    assert abs(estimated_parameters(config) - real) < 0.01 * real
    check_size(config, "x")
    monkeypatch.setattr("s2s.config.physical_memory", lambda: 16 * 2**30)
    assert parameter_limit() == 16 * 2**30 // 8  # 2.1e9 on a 16 GB machine
    monkeypatch.setattr("s2s.config.physical_memory", lambda: 2**50)
    assert parameter_limit() == MAX_PARAMETERS == 20 * 10**9
    monkeypatch.setenv("S2S_MAX_PARAMETERS", "1000")
    with pytest.raises(ValueError, match=r"x: .* over the limit of 1e\+03 \(set S2S_MAX_PARAM"):
        check_size(config, "x")
    monkeypatch.setenv("S2S_MAX_PARAMETERS", str(10**14))
    check_size(ModelConfig(d_model=16384, d_ff=65536), "x")


# -- 6. nothing is overwritten without overwrite=true --------------------------------------------


def test_a_second_run_in_a_used_directory_is_refused(trained, cfg_train):
    def files():
        # run.lock is left out: it holds the id of the last process that took the directory's
        # lock (s2s.run_lock), and the refused run takes it before it looks; which process that
        # was before depends on the tests that ran earlier (found by a random-order run)
        return {
            p: p.read_bytes() for p in trained.rglob("*") if p.is_file() and p.name != "run.lock"
        }

    before = files()
    cfg = cfg_train(f"paths.output_dir={trained}")
    refused(cfg, r"holds an earlier run .* overwrite=true")
    assert files() == before and len(before) > 3
    check_run_dir(trained, overwrite=True, ckpt_path=None)  # allowed when asked for
    check_run_dir(trained, overwrite=False, ckpt_path=str(trained / "checkpoints/last.ckpt"))


@pytest.mark.slow  # a whole training run
def test_overwrite_replaces_the_earlier_runs_checkpoints_and_logs(tiny_data, tmp_path):
    first = [*overrides_for(tiny_data, tmp_path), "trainer.max_steps=4"]
    train(compose_train(first))
    run = tmp_path / "run"
    stale = run / "checkpoints" / "stale-note.txt"
    stale.write_text("from the earlier run")
    train(compose_train([*first, "trainer.max_steps=2", "overwrite=true"]))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert not stale.exists() and "last-v1.ckpt" not in names and "last.ckpt" in names
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step == 2  # the new run's, not the earlier run's 4
    # resuming from inside the directory keeps everything, overwrite or not
    assert replace_earlier_run(run, ckpt_path="last") == [] and (run / "checkpoints").is_dir()


def test_the_hydra_guard_refuses_before_hydra_writes(trained, capsys):
    from s2s import run_lock

    try:
        with pytest.raises(SystemExit):
            guard = {"hydra": {"run": {"dir": str(trained)}}, "overwrite": False}
            RunDirGuard().on_run_start(OmegaConf.create(guard))
    finally:  # the guard holds the directory until its process ends: this process goes on
        run_lock.release(trained)
    assert capsys.readouterr().err.startswith(f"error: {trained}: holds an earlier run")
    hydra_cfg = compose_train([f"hydra.run.dir={trained}"])
    assert "run_dir_guard" in OmegaConf.load(REPO / "conf/hydra/default.yaml").callbacks
    assert hydra_cfg.overwrite is False


@pytest.mark.slow
def test_train_py_into_a_used_run_dir_prints_one_line(trained, tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={trained}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {trained}: holds an earlier run (config.yaml, model_config.json, "
        "tokenizer.json, checkpoints, csv): give a new hydra.run.dir, resume that run with "
        "ckpt_path=last, or add overwrite=true to replace its files"
    ]
    assert not (trained / ".hydra").exists()


def test_generate_never_overwrites_without_overwrite_true(tokenizer, tmp_path):
    ckpt = write_ckpt(tmp_path / "m.ckpt", tiny_model(tokenizer.vocab_size), tokenizer)
    prompts = _write(tmp_path / "in.txt", b"How are you?\n")
    out = _write(tmp_path / "out.jsonl", b"precious\n")
    common = [f"ckpt={ckpt}", f"input_file={prompts}", "generate.max_new_tokens=2"]
    cfg = compose_generate
    with pytest.raises(ValueError, match=r"out\.jsonl exists: .* overwrite=true"):
        generate(cfg(*common, f"output_file={out}"))
    assert out.read_text() == "precious\n"
    for overwrite in ("false", "true"):
        with pytest.raises(ValueError, match="is the input_file"):
            generate(cfg(*common, f"output_file={prompts}", f"overwrite={overwrite}"))
    assert prompts.read_text() == "How are you?\n"
    generate(cfg(*common, f"output_file={out}", "overwrite=true"), stdout=io.StringIO())
    assert json.loads(out.read_text())["input"] == "How are you?"


# -- 7. one line for every expected failure ------------------------------------------------------


def test_unreadable_training_file_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    train_file = tiny_data["text_train"]
    real = Path.read_bytes

    def read_bytes(path):
        if path == train_file:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    line = one_line(capsys, train, base(tiny_data, tmp_path))
    assert line == f"error: {train_file}: cannot read the file (Permission denied)"
    cfg = base(tiny_data, tmp_path / "b", f"data.train_path={tmp_path}")
    assert "is a directory" in one_line(capsys, train, cfg)


def test_init_from_with_a_missing_or_misshapen_tensor_is_one_line(tiny_data, trained, tmp_path):
    raw = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    name = next(k for k in raw["state_dict"] if k.endswith("ffn.w_in.weight") or "ffn" in k)
    for case, change in [("missing", lambda s: s.pop(name)), ("shape", lambda s: s.update(
            {name: torch.zeros(3, 3)}))]:  # fmt: skip
        broken = {**raw, "state_dict": dict(raw["state_dict"])}
        change(broken["state_dict"])
        path = tmp_path / f"{case}.ckpt"
        torch.save(broken, path)
        cfg = base(tiny_data, tmp_path / case, f"init_from={path}")
        refused(cfg, rf"{case}\.ckpt: weights do not (match|fit) the model config")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tokenizer, tmp_path):
    small = tiny_model(tokenizer.vocab_size - 10)
    save_bundle(small, tokenizer, tmp_path / "bundle")
    ckpt = write_ckpt(tmp_path / "m.ckpt", small, tokenizer)
    for source in (tmp_path / "bundle", ckpt):
        with pytest.raises(CheckpointError, match=r"the tokenizer has \d+ tokens but the model"):
            load_pretrained(source)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_no_cuda_is_one_line(tiny_data, tokenizer, tmp_path, capsys):
    from s2s.cli import cli_status

    ckpt = write_ckpt(tmp_path / "m.ckpt", tiny_model(tokenizer.vocab_size), tokenizer)
    assert cli_status(generate, compose_generate(f"ckpt={ckpt}", "prompt=hi", "device=cuda")) == 1
    assert capsys.readouterr().err.startswith("error: device=cuda but CUDA is not available")
    line = one_line(capsys, train, base(tiny_data, tmp_path, "trainer=gpu"))
    assert line.startswith("error: trainer.accelerator=gpu but no CUDA GPU is available")


def test_a_bundle_with_a_swapped_tokenizer_warns(tokenizer, tmp_path, caplog):
    save_bundle(tiny_model(tokenizer.vocab_size), tokenizer, tmp_path / "bundle")
    path = tmp_path / "bundle" / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]  # same size, two ids exchanged
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        load_pretrained(tmp_path / "bundle")
    assert "is not the tokenizer" in caplog.text and "model.safetensors" in caplog.text


def test_the_entry_points_share_one_error_boundary(capsys, tmp_path):
    from hydra.errors import InstantiationException

    def fail(err):
        raise err

    wrapped = InstantiationException("Error in call to target 'x':\nValueError('inner')")
    wrapped.__cause__ = ValueError("inner\nsecond line")
    cases = [
        (PermissionError(13, "Permission denied", "/data/x.json"), "/data/x.json: Permission"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), "'utf-8' codec can't decode"),
        (FileNotFoundError(2, "No such file or directory", "a.json"), "a.json: No such file"),
        (wrapped, "error: inner second line"),
    ]
    for err, wanted in cases:
        assert wanted in one_line(capsys, fail, err)
    cfg = OmegaConf.create({"a": "???"})
    assert "a" in one_line(capsys, lambda: cfg.a)
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        cli_status(fail, RuntimeError("bug"))
    with pytest.raises(SystemExit) as exit_:
        run_cli(fail, ValueError("x"))
    assert exit_.value.code == 1
    assert export_main([str(tmp_path / "none.ckpt"), str(tmp_path / "o")]) == 1
    assert "none.ckpt: no such checkpoint" in capsys.readouterr().err


# -- 8. tokenizer training cannot stall on one long record ---------------------------------------


def test_long_runs_are_split_for_training_only():
    text = "short words " + "x" * 1000 + " tail"
    pieces = list(training_pieces([text, "plain text"]))
    assert "".join(pieces[:-1]) == text and pieces[-1] == "plain text"
    assert max(len(w) for p in pieces for w in p.split()) <= MAX_TRAINING_RUN
    assert list(training_pieces(["a b", "c"])) == ["a b", "c"]


def test_a_200k_character_record_trains_in_seconds(corpus):
    import random

    rng = random.Random(0)
    blob = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(200_000))
    start = time.perf_counter()
    tokenizer = Tokenizer.train([*corpus, blob], vocab_size=600, num_sentinels=4)
    assert time.perf_counter() - start < 30  # minutes before the split; well under 1 s now
    assert tokenizer.decode(tokenizer.encode(blob[:5000])) == blob[:5000]


# -- 9. smaller ----------------------------------------------------------------------------------


def test_bundle_and_tokenizer_files_are_readable_by_others(tokenizer, tmp_path):
    old = os.umask(0o022)
    try:
        save_bundle(tiny_model(tokenizer.vocab_size), tokenizer, tmp_path / "bundle")
        tokenizer.save(tmp_path / "run" / "tokenizer.json")
    finally:
        os.umask(old)
    for path in [*(tmp_path / "bundle").iterdir(), tmp_path / "run" / "tokenizer.json"]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = _write(tmp_path / f"last.ckpt.tmp-{dead.pid}", b"x")
    live = _write(tmp_path / f"last.ckpt.tmp-{os.getpid()}", b"x")
    other = _write(tmp_path / "notes.txt", b"x")
    assert remove_stale_tmp_files(tmp_path) == [stale]
    assert live.exists() and other.exists()


def test_non_utf8_prompts_name_the_file(tmp_path):
    from s2s.cli_generate import read_prompts

    path = _write(tmp_path / "bad.txt", b"fine\n\xff\xfe bad\n")
    with pytest.raises(RecordError, match=r"bad\.txt: line 2: invalid UTF-8"):
        read_prompts(path)


@pytest.mark.slow  # a second training run
def test_init_from_a_bundle(tiny_data, trained, tmp_path):
    model, tok = load_pretrained(trained / "checkpoints" / "last.ckpt")
    save_bundle(model, tok, tmp_path / "bundle")
    assert read_pretrained(tmp_path / "bundle", "init_from").config == model.config
    train(base(tiny_data, tmp_path, f"init_from={tmp_path / 'bundle'}", "trainer.max_steps=1"))
    assert Tokenizer.load(tmp_path / "run" / "tokenizer.json").digest() == tok.digest()


def test_tensorboard_hint_only_with_a_tensorboard_logger(tmp_path):
    csv = dict(log_locations([CSVLogger(tmp_path)], tmp_path))
    assert "tensorboard" not in csv and csv["csv"].endswith("metrics.csv")
    tensorboard = dict(log_locations([TensorBoardLogger(tmp_path)], tmp_path))
    assert tensorboard["tensorboard"] == f"tensorboard --logdir {tmp_path}"
