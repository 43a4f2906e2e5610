"""Shared fixtures: small corpora, a session-wide trained tokenizer, a file writer, the first
records of the shipped datasets for training tests, and the composed configs of a tiny training
run (`cfg_train`) and of generate.py (`cfg_generate`), as in lightning-hydra-template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.train import compose_generate, compose_train, overrides_for

from s2s.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]

CORPUS = [
    "How are you doing? I am doing well, thank you.",
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them. To die: to sleep;",
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void.",
] * 20


@pytest.fixture(autouse=True)
def _restore_float32_matmul_settings():
    """`train()` sets torch.set_float32_matmul_precision("high") (TF32 on CUDA) for the whole
    process: put it and the TF32 flags back after every test, so that no test's float32
    numbers depend on which tests ran before it."""
    precision = torch.get_float32_matmul_precision()
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return list(CORPUS)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A small byte-level BPE tokenizer trained on `CORPUS` (seconds, shared by all tests)."""
    return Tokenizer.train(CORPUS, vocab_size=600, num_sentinels=8, min_frequency=2)


@pytest.fixture
def write(tmp_path: Path):
    """write(name, text_or_bytes) -> Path: create a file under tmp_path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """The first records of the shipped datasets: real text, seconds to train on."""
    out = tmp_path_factory.mktemp("data")
    files = {}
    for name, source, n in [
        ("text_train", "shakespeare/train.json", 40),
        ("text_val", "shakespeare/validation.json", 12),
        ("pairs_train", "bible_modern/train.json", 48),
        ("pairs_val", "bible_modern/validation.json", 8),
    ]:
        records = json.loads((REPO / "datasets" / source).read_text())[:n]
        files[name] = out / f"{name}.json"
        files[name].write_text(json.dumps(records))
    return files


@pytest.fixture
def cfg_train(tiny_data, tmp_path):
    """cfg_train(*overrides, kind="text", out=tmp_path): `conf/train.yaml` composed for a run of
    seconds (a 1+1-layer model on `tiny_data`, 6 steps, outputs under `out`), plus overrides.
    kind="pairs" trains on Input/Target pairs instead of Text records."""

    def _cfg(*overrides: str, kind: str = "text", out: Path | None = None):
        return compose_train([*overrides_for(tiny_data, out or tmp_path, kind), *overrides])

    return _cfg


@pytest.fixture
def cfg_generate():
    """cfg_generate(*overrides): `conf/generate.yaml` composed with the overrides."""
    return compose_generate


@pytest.fixture
def tok_file(tokenizer, tmp_path):
    """The session tokenizer saved as tmp_path/tok/tokenizer.json (for `prepare --tokenizer`)."""
    return tokenizer.save(tmp_path / "tok" / "tokenizer.json")
