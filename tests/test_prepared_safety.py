"""Prepared directories at corpus scale (issue 29): thousands of shards read under a low
`ulimit -n`, and a re-prepare that fails (or is killed) never costs the good dataset."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from s2s.prepare import prepare

WORDS = ["the", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with"]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) for _ in range(n)]


@pytest.fixture
def tok_file(tokenizer, tmp_path):
    return tokenizer.save(tmp_path / "tok" / "tokenizer.json")


def jsonl(path, lines: list[str]):
    path.write_text("".join(json.dumps({"Text": t}) + "\n" for t in lines), encoding="utf-8")
    return path


# A child process that may hold at most 256 descriptors reads every document of a prepared
# directory twice (so shards closed to make room are opened again) and prints a digest.
READ_UNDER_ULIMIT = """
import hashlib, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from s2s.data.prepared import Documents, open_prepared
docs = Documents(open_prepared(sys.argv[1]).streams["text"], int(sys.argv[2]))
digest = hashlib.sha256()
for _ in range(2):
    for i in range(len(docs)):
        digest.update(docs[i].astype("int64").tobytes())
print(len(docs), digest.hexdigest())
"""


def test_thousands_of_shards_read_under_ulimit_256(tokenizer, tok_file, tmp_path, monkeypatch):
    corpus = texts(3000)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # 6,000 small files: durability untested
    manifest = prepare(
        [str(jsonl(tmp_path / "many.jsonl", corpus))],
        tmp_path / "many",
        tokenizer=str(tok_file),
        shard_tokens=1,  # every document its own shard
        progress=False,
    )
    assert len(manifest.shards["text"]) == 3000
    expected = hashlib.sha256()
    for _ in range(2):
        for text in corpus:
            expected.update(np.asarray(tokenizer.encode(text), dtype=np.int64).tobytes())
    done = subprocess.run(
        [sys.executable, "-c", READ_UNDER_ULIMIT, str(tmp_path / "many"), "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3000", expected.hexdigest()]
