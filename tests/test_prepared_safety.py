"""Prepared directories at corpus scale (issue 29): thousands of shards read under a low
`ulimit -n`, and a re-prepare that fails (or is killed) never costs the good dataset."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.corpus import jsonl
from helpers.corpus import texts as seeded_texts

import s2s.prepare
from s2s.data.prepared import open_prepared
from s2s.data.records import RecordError
from s2s.data.writing import STAGING
from s2s.prepare import prepare


def texts(n: int, seed: int = 0) -> list[str]:
    return seeded_texts(n, seed, lengths=(2, 12))


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
        [sys.executable, "-c", READ_UNDER_ULIMIT, str(tmp_path / "many"), "1"],  # EOS trimmed
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3000", expected.hexdigest()]


def files_of(directory) -> dict[str, bytes]:
    """Every file of a prepared directory (its staging area aside), by name."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and STAGING not in p.parts
    }


def test_a_re_prepare_with_a_bad_record_leaves_the_old_dataset_unchanged(tok_file, tmp_path):
    good = jsonl(tmp_path / "good.jsonl", texts(400))
    out = tmp_path / "prepared"
    manifest = prepare([str(good)], out, tokenizer=str(tok_file), shard_tokens=300, progress=False)
    before = files_of(out)
    assert len(manifest.shards["text"]) > 3
    bad = tmp_path / "more.jsonl"
    bad.write_text(jsonl(tmp_path / "x.jsonl", texts(900, seed=1)).read_text() + '{"Txet": 1}\n')
    with pytest.raises(RecordError, match=r"more.jsonl: line 901: no text field"):
        prepare([str(good), str(bad)], out, tokenizer=str(tok_file), shard_tokens=300)
    assert files_of(out) == before  # every shard, the tokenizer and the manifest
    assert open_prepared(out).manifest == manifest
    # without the bad record it is prepared, and nothing of the failed run is left
    bad.write_text(jsonl(tmp_path / "x.jsonl", texts(900, seed=1)).read_text())
    again = prepare([str(good), str(bad)], out, tokenizer=str(tok_file), shard_tokens=300)
    assert again.documents == 1300 and open_prepared(out).manifest == again
    assert not (out / STAGING).exists()
    assert {p.name for p in out.iterdir()} == {"manifest.json", "tokenizer.json"} | {
        f"{s.name}{suffix}" for s in again.shards["text"] for suffix in (".bin", ".idx")
    }


# A prepare that kills itself with SIGKILL once it has written shard number argv[4].
KILLED_PREPARE = """
import os, signal, sys
from s2s.data import writing
import s2s.prepare
from s2s.data.prepared import open_prepared
from s2s.data.records import RecordError
from s2s.data.writing import STAGING
from s2s.prepare import prepare
flush = writing.ShardWriter._flush
def flush_then_die(self):
    flush(self)
    if len(self.shards) == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
writing.ShardWriter._flush = flush_then_die
prepare([sys.argv[1]], sys.argv[2], tokenizer=sys.argv[3], shard_tokens=400, progress=False)
"""


def test_a_killed_prepare_is_resumed_with_its_finished_shards(tok_file, tmp_path, monkeypatch):
    corpus = jsonl(tmp_path / "corpus.jsonl", texts(2000, seed=2))  # 4 chunks of 512 documents
    reference = prepare(
        [str(corpus)], tmp_path / "reference", tokenizer=str(tok_file), shard_tokens=400
    )
    half = len(reference.shards["text"]) // 2
    assert half > 10
    out = tmp_path / "prepared"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_PREPARE, str(corpus), str(out), str(tok_file), str(half)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "manifest.json").exists() and (out / STAGING / "progress.json").is_file()
    encoded = []
    encode = s2s.prepare._encode_chunk
    monkeypatch.setattr(
        s2s.prepare, "_encode_chunk", lambda c, **kw: encoded.append(len(c)) or encode(c, **kw)
    )
    resumed = prepare([str(corpus)], out, tokenizer=str(tok_file), shard_tokens=400)
    assert 0 < sum(encoded) < 2000  # the finished shards' documents were not tokenised again
    assert resumed == reference
    assert files_of(out) == files_of(tmp_path / "reference")  # the same bytes


def test_a_publish_cut_short_is_finished_by_the_next_run(tok_file, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    first = jsonl(tmp_path / "first.jsonl", texts(300))
    prepare([str(first)], out, tokenizer=str(tok_file), shard_tokens=300, progress=False)
    second = jsonl(tmp_path / "second.jsonl", texts(500, seed=5))
    reference = prepare([str(second)], tmp_path / "ref", tokenizer=str(tok_file), shard_tokens=300)
    replace, moved = os.replace, []

    def die_after_three(src, dst):  # a kill in the middle of swapping the new files in
        if Path(dst).parent == out:
            if len(moved) == 3:
                raise KeyboardInterrupt
            moved.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", die_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(second)], out, tokenizer=str(tok_file), shard_tokens=300, progress=False)
    monkeypatch.setattr(os, "replace", replace)
    assert not (out / "manifest.json").exists()  # neither dataset is readable here...
    encoded = []
    encode = s2s.prepare._encode_chunk
    monkeypatch.setattr(
        s2s.prepare, "_encode_chunk", lambda c, **kw: encoded.append(len(c)) or encode(c, **kw)
    )
    assert prepare([str(second)], out, tokenizer=str(tok_file), shard_tokens=300) == reference
    assert not encoded  # ...until the next run finishes the swap, with nothing to tokenise
    assert files_of(out) == files_of(tmp_path / "ref")
