"""Documents in prepared and in-memory text (issue 29 items 6 and 7): an end-of-document id at
every boundary, empty documents dropped and counted, literal special-token strings read as
text, a fingerprint that sees same-size edits, and the DDP wrap-around as documented."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.corpus import data_module, jsonl, texts

import s2s.prepare
from s2s.data.cache import tokenize_file
from s2s.data.prepared import MANIFEST, Manifest, PackedBlocks, open_prepared
from s2s.data.sampler import BucketBatchSampler, StreamBatchSampler
from s2s.data.writing import ShardWriter
from s2s.prepare import prepare

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_end_of_document_ids_at_every_boundary_and_nowhere_else(tokenizer, tok_file, tmp_path):
    corpus = texts(200)
    corpus[3] = "two paragraphs\n\nin one document </s> with a literal end tag"
    corpus[10], corpus[50] = "", "  \n\t "  # dropped, counted
    path = jsonl(tmp_path / "c.jsonl", corpus)
    manifest = prepare([str(path)], tmp_path / "out", tokenizer=str(tok_file), shard_tokens=300)
    kept = [t for t in corpus if t.strip()]
    text = open_prepared(tmp_path / "out").streams["text"]
    assert len(text.shards) > 5  # boundaries inside shards and at their edges
    stream = text.read(0, text.tokens)
    # independent expectation: each document's own encoding, then one EOS
    ends = np.cumsum([len(tokenizer.encode(t)) + 1 for t in kept]) - 1
    assert np.flatnonzero(stream == tokenizer.eos_id).tolist() == ends.tolist()
    assert (manifest.documents, manifest.empty_documents) == (198, 2)
    assert manifest.separator == [tokenizer.eos_id] == [manifest.end_of_document]
    assert tokenizer.decode(text.document(3, trim=1).tolist()) == corpus[3]
    # packed rows are that stream without its final EOS, as in-memory packing gives them
    rows = PackedBlocks(text, 23, len(manifest.separator))
    assert np.concatenate([rows[i] for i in range(len(rows))]).tolist() == stream[:-1].tolist()


def test_in_memory_text_records_are_joined_by_the_end_of_document_id(tokenizer, tmp_path):
    corpus = texts(60, seed=1)
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"Text": t} for t in corpus]), encoding="utf-8")
    dm = data_module(tokenizer, tmp_path, train_path=str(path))
    rows = dm.datasets["train"].rows
    stream = np.concatenate([rows[i] for i in range(len(rows))])
    ends = np.cumsum([len(tokenizer.encode(t)) + 1 for t in corpus])[:-1] - 1
    assert np.flatnonzero(stream == tokenizer.eos_id).tolist() == ends.tolist()


def test_an_older_directory_joined_by_paragraph_breaks_reads_with_one_warning(
    tokenizer, tok_file, tmp_path, caplog
):
    """A version-1 directory (written here as that version wrote it) is read as it is."""
    out = tmp_path / "old"
    out.mkdir()
    corpus = texts(80, seed=2)
    old_separator = tokenizer.encode("\n\n")
    writer = ShardWriter(out, "text", np.dtype(np.uint16), old_separator, 200)
    writer.add([tokenizer.encode(t) for t in corpus], first=0)
    shards = writer.close()
    (out / "tokenizer.json").write_bytes(tok_file.read_bytes())
    fields = {"fingerprint": "x", "tokenizer_sha256": "y", "sources": []}
    manifest = Manifest(
        "text", "uint16", old_separator, {"text": shards}, 80, sum(s.tokens for s in shards),
        **fields, version=1,
    )  # fmt: skip
    raw = json.loads(manifest.to_json())
    for new in ("empty_documents", "pre_masked"):
        raw.pop(new, None)  # version 1 did not write them
    (out / MANIFEST).write_text(json.dumps(raw), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="s2s.data.datamodule"):
        dm = data_module(tokenizer, tmp_path, train_dir=str(out))
    legacy = [r for r in caplog.records if "format version 1" in r.getMessage()]
    assert len(legacy) == 1 and '"\\n\\n"' in legacy[0].getMessage()
    rows = dm.datasets["train"].rows
    joined = np.concatenate([rows[i] for i in range(len(rows))])
    separated = [tokenizer.encode(t) + old_separator for t in corpus]
    assert joined.tolist() == [i for ids in separated for i in ids][: -len(old_separator)]


MASKED = "How <mask> doing? <extra_id_0> fills </s> and <pad> <s> stay text"


def test_a_corpus_line_holding_mask_round_trips_as_text(tokenizer, tok_file, tmp_path):
    corpus = [*texts(20, seed=3), MASKED]
    path = jsonl(tmp_path / "m.jsonl", corpus)
    special = set(tokenizer.special_ids) - {tokenizer.eos_id}  # EOS: the boundaries only
    prepare([str(path)], tmp_path / "text", tokenizer=str(tok_file), progress=False)
    text = open_prepared(tmp_path / "text")
    doc = text.streams["text"].document(20, trim=len(text.manifest.separator))
    assert not special & set(doc.tolist()) and tokenizer.eos_id not in doc
    assert tokenizer.decode(doc.tolist()) == MASKED
    assert not text.manifest.pre_masked
    # --pre-masked: the corpus holds them as tokens
    prepare([str(path)], tmp_path / "masked", tokenizer=str(tok_file), pre_masked=True)
    masked = open_prepared(tmp_path / "masked")
    ids = masked.streams["text"].document(20, trim=1).tolist()
    assert masked.manifest.pre_masked and {tokenizer.mask_id, tokenizer.sentinel_ids[0]} <= set(ids)
    # in memory: {"Text"} records read them as text, {"Input", "Target"} pairs as tokens
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"Text": MASKED}]), encoding="utf-8")
    ids = tokenize_file(records, tokenizer, tmp_path / "cache").inputs[0].tolist()
    assert not special & set(ids) and tokenizer.decode(ids) == MASKED
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"Input": MASKED, "Target": "x"}]), encoding="utf-8")
    assert tokenizer.mask_id in tokenize_file(pairs, tokenizer, None).inputs[0].tolist()


def test_the_fingerprint_sees_a_same_size_edit_and_the_format_version(
    tokenizer, tok_file, tmp_path, monkeypatch
):
    path = jsonl(tmp_path / "c.jsonl", ["the cat sat on the mat", "a dog ran"])
    out = tmp_path / "out"
    first = prepare([str(path)], out, tokenizer=str(tok_file), progress=False)
    stat = path.stat()
    edited = path.read_text().replace("cat", "rat")  # same size
    path.write_text(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` / `rsync -t` keep it
    assert path.stat().st_size == stat.st_size
    second = prepare([str(path)], out, tokenizer=str(tok_file), progress=False)
    assert second.fingerprint != first.fingerprint
    doc = open_prepared(out).streams["text"].document(0, trim=1)
    assert tokenizer.decode(doc.tolist()) == "the rat sat on the mat"
    monkeypatch.setattr(s2s.prepare, "VERSION", s2s.prepare.VERSION + 1)  # a newer format
    third = prepare([str(path)], tmp_path / "again", tokenizer=str(tok_file), progress=False)
    assert third.fingerprint != second.fingerprint


def epoch_batches(sampler_type, n: int, m: int, ranks: int) -> list[list[list[int]]]:
    """Every rank's batches (of rows) of epoch 0."""
    out = []
    for rank in range(ranks):
        if sampler_type is StreamBatchSampler:
            sampler = StreamBatchSampler(n, m, shuffle=True, seed=3, num_replicas=ranks, rank=rank)
        else:
            lengths = np.arange(n) % 17
            sampler = BucketBatchSampler(
                lengths, m, shuffle=True, seed=3, num_replicas=ranks, rank=rank
            )
        out.append([[i for _, i in batch] for batch in sampler])
    return out


@pytest.mark.parametrize("sampler_type", [StreamBatchSampler, BucketBatchSampler])
def test_ddp_wrap_around_repeats_the_rows_the_docs_say(sampler_type):
    """docs/data.md states the count for its example; the samplers give exactly that."""
    page = (DOCS / "data.md").read_text(encoding="utf-8")
    said = re.search(
        r"(\d+) rows, micro-batch (\d+), (\d+) ranks: (\d+) batches a rank, (\d+) rows seen twice",
        page,
    )
    assert said, "docs/data.md no longer states the wrap-around example"
    n, m, ranks, batches, twice = map(int, said.groups())
    batches_of = epoch_batches(sampler_type, n, m, ranks)
    assert [len(b) for b in batches_of] == [batches] * ranks  # equal counts: DDP needs them
    rows = [i for rank in batches_of for batch in rank for i in batch]
    assert len(rows) == n + twice
    seen = np.bincount(rows, minlength=n)
    assert seen.min() == 1  # every row once an epoch...
    assert int((seen == 2).sum()) == twice and seen.max() == 2  # ...and these twice
    sampler = StreamBatchSampler(n, m, shuffle=False, num_replicas=ranks, rank=0)
    assert sampler.wrapped_rows == twice
