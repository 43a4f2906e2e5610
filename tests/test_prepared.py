"""Prepared (sharded, streamed) datasets: `python -m s2s.prepare`, the format, the reader, the
stream sampler and the data module over a prepared directory."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
from helpers.corpus import data_module
from helpers.corpus import texts as seeded_texts

from s2s.data.cache import tokenize_file
from s2s.data.config import DataConfig
from s2s.data.datamodule import S2SDataModule
from s2s.data.examples import pack
from s2s.data.permutation import permuted
from s2s.data.prepared import PreparedError, open_prepared
from s2s.data.records import RecordError
from s2s.data.sampler import StreamBatchSampler
from s2s.prepare import main, prepare

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "that",
    "is",
    "was",
    "he",
    "for",
    "it",
    "with",
    "as",
    "his",
    "on",
    "be",
    "at",
    "by",
    "i",
]


def texts(n: int, seed: int = 0) -> list[str]:
    return seeded_texts(n, seed, words=WORDS, lengths=(3, 40))


@pytest.fixture
def text_json(write):
    return write("train.json", json.dumps([{"Text": t} for t in texts(300)]))


def test_prepared_rows_equal_the_in_memory_rows(tokenizer, tok_file, text_json, tmp_path):
    out = tmp_path / "prepared"
    manifest = prepare(
        [str(text_json)], out, tokenizer=str(tok_file), shard_tokens=500, progress=False
    )
    assert len(manifest.shards["text"]) > 3  # several shards: blocks cross shard boundaries
    assert manifest.documents == 300
    streamed = data_module(tokenizer, tmp_path, train_dir=str(out), val_dir=str(out))
    loaded = data_module(tokenizer, tmp_path, train_path=str(text_json), val_path=str(text_json))
    a, b = streamed.datasets["train"], loaded.datasets["train"]
    assert len(a) == len(b) > 100
    for i in range(len(a)):
        assert a.rows[i].tolist() == b.rows[i].tolist(), i
        assert a[(3, i)].input_ids.tolist() == b[(3, i)].input_ids.tolist()  # same noise
    # the same stream as `pack` of the tokenised file
    rows = pack(tokenize_file(text_json, tokenizer, None).inputs, 23, [tokenizer.eos_id])
    assert [a.rows[i].tolist() for i in range(len(a))] == [rows[i].tolist() for i in range(len(a))]


def test_pairs_round_trip_and_workers_give_the_same_shards(tokenizer, tok_file, write, tmp_path):
    pairs = [{"Input": t.upper(), "Target": t} for t in texts(120, seed=1)]
    path = write("pairs.jsonl", "\n".join(json.dumps(p) for p in pairs))
    one = prepare([str(path)], tmp_path / "one", tokenizer=str(tok_file), progress=False)
    two = prepare([str(path)], tmp_path / "two", tokenizer=str(tok_file), workers=2, progress=False)
    assert one.kind == "pairs" and one.documents == 120
    for shard in one.shards["input"] + one.shards["target"]:
        for suffix in (".bin", ".idx"):
            left = (tmp_path / "one" / f"{shard.name}{suffix}").read_bytes()
            assert left == (tmp_path / "two" / f"{shard.name}{suffix}").read_bytes()
    dm = data_module(tokenizer, tmp_path, train_dir=str(tmp_path / "one"), val_path=str(path))
    example = dm.datasets["train"][(0, 7)]
    assert example.labels[:-1].tolist() == tokenizer.encode(pairs[7]["Target"])[:23]
    assert dm.truncated["train/Target"] == dm.truncated["val/Target"] > 0  # counted alike
    assert two.fingerprint != "" and dm.kinds["train"] == "pairs"


def test_sources_jsonl_gz_text_and_directories(tokenizer, tok_file, write, tmp_path):
    corpus = texts(30, seed=2)
    gz = tmp_path / "in" / "a.jsonl.gz"
    gz.parent.mkdir()
    with gzip.open(gz, "wt") as handle:
        handle.write("\n".join(json.dumps({"text": t}) for t in corpus[:10]))
    write("in/b.txt", "\n\n".join(corpus[10:]) + "\n")
    manifest = prepare(
        [str(tmp_path / "in")], tmp_path / "out", tokenizer=str(tok_file), progress=False
    )
    assert manifest.documents == 30
    prepared = open_prepared(tmp_path / "out")
    dm = data_module(
        tokenizer, tmp_path, train_dir=str(tmp_path / "out"), val_dir=str(tmp_path / "out")
    )
    assert dm.document_texts("val", 30) == corpus
    assert prepared.manifest.sources[0]["bytes"] > 0


def test_bad_records_name_the_file_and_line(tok_file, write, tmp_path):
    path = write("bad.jsonl", '{"Text": "fine"}\n{"Txet": "typo"}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl: line 2: no text field"):
        prepare([str(path)], tmp_path / "out", tokenizer=str(tok_file), progress=False)
    mixed = write("mixed.jsonl", '{"Text": "a b"}\n{"Input": "a", "Target": "b"}\n')
    with pytest.raises(ValueError, match="pairs records after text records"):
        prepare([str(mixed)], tmp_path / "out2", tokenizer=str(tok_file), progress=False)
    with pytest.raises(RecordError, match="not found"):
        prepare([str(tmp_path / "nope.jsonl")], tmp_path / "out3", progress=False)


def test_rerun_is_a_noop_and_a_changed_input_is_prepared_again(tok_file, text_json, tmp_path):
    out = tmp_path / "prepared"
    first = prepare([str(text_json)], out, tokenizer=str(tok_file), progress=False)
    shard = out / f"{first.shards['text'][0].name}.bin"
    stamp = shard.stat().st_mtime_ns
    again = prepare([str(text_json)], out, tokenizer=str(tok_file), progress=False)
    assert again == first and shard.stat().st_mtime_ns == stamp  # nothing rewritten
    text_json.write_text(json.dumps([{"Text": t} for t in texts(50, seed=9)]))
    changed = prepare([str(text_json)], out, tokenizer=str(tok_file), progress=False)
    assert changed.fingerprint != first.fingerprint and changed.documents == 50


def test_incomplete_or_damaged_directories_are_refused_by_name(tok_file, text_json, tmp_path):
    out = tmp_path / "prepared"
    manifest = prepare([str(text_json)], out, tokenizer=str(tok_file), progress=False)
    shard = out / f"{manifest.shards['text'][0].name}.bin"
    shard.write_bytes(shard.read_bytes()[:-4])  # truncated
    with pytest.raises(PreparedError, match=f"{shard.name}: .* bytes, the manifest says"):
        open_prepared(out)
    (out / "manifest.json").unlink()  # what a killed run leaves: shards, no manifest
    with pytest.raises(PreparedError, match="did not finish"):
        open_prepared(out)
    # preparing again repairs it (the damaged directory is not mistaken for up to date)
    prepare([str(text_json)], out, tokenizer=str(tok_file), progress=False)
    assert open_prepared(out).manifest.documents == 300


def test_validation_data_must_share_the_training_tokenizer(tokenizer, corpus, text_json, tmp_path):
    other = tokenizer.train(corpus[:40], vocab_size=520, num_sentinels=8, min_frequency=1)
    prepare(
        [str(text_json)],
        tmp_path / "train",
        tokenizer=None,
        vocab_size=600,
        sample_documents=300,
        progress=False,
    )
    prepare(
        [str(text_json)],
        tmp_path / "val",
        tokenizer=str(other.save(tmp_path / "o.json")),
        progress=False,
    )
    config = DataConfig(
        train_dir=str(tmp_path / "train"),
        val_dir=str(tmp_path / "val"),
        num_workers=0,
        max_source_length=24,
        max_target_length=24,
    )
    with pytest.raises(PreparedError, match="another tokenizer"):
        S2SDataModule(config).setup("fit")
    # --tokenizer DIR shares the training directory's tokenizer: accepted
    prepare([str(text_json)], tmp_path / "val", tokenizer=str(tmp_path / "train"), progress=False)
    dm = S2SDataModule(config)
    dm.setup("fit")
    assert len(dm.datasets["val"]) == len(dm.datasets["train"]) > 0


def test_cli_prints_one_line_on_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.json"), "--output", str(tmp_path / "o"), "--no-progress"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "missing.json" in err and "Traceback" not in err


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000, 4097])
def test_permutation_is_a_permutation_keyed_by_seed_and_epoch(n):
    order = permuted(np.arange(n), n, key=(0, 1))
    assert sorted(order.tolist()) == list(range(n))
    part = np.arange(n)[n // 3 : n // 3 + 4]  # any slice is the same values asked alone
    assert len(part) and order[part].tolist() == permuted(part, n, key=(0, 1)).tolist()
    if n >= 64:
        assert order.tolist() != list(range(n))
        assert order.tolist() != permuted(np.arange(n), n, key=(0, 2)).tolist()


def test_stream_sampler_shards_disjointly_with_equal_counts_and_resumes():
    ranks = [
        StreamBatchSampler(103, 4, shuffle=True, seed=3, num_replicas=2, rank=r) for r in (0, 1)
    ]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == 13  # ceil(ceil(103 / 4) / 2)
    seen = [i for rank in batches for batch in rank for _, i in batch]
    assert set(seen) == set(range(103))  # everything, one wrapped batch seen twice
    assert len(seen) - len(set(seen)) <= 4
    first = {i for b in batches[0][:12] for _, i in b}
    assert not first & {i for b in batches[1][:12] for _, i in b}
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != batches[0]
    resumed = StreamBatchSampler(103, 4, shuffle=True, seed=3, num_replicas=2, rank=0)
    resumed.set_epoch(1)
    resumed.resume(1, 5 * 4 * 2)  # 5 batches of 4 rows on each of 2 ranks
    assert list(resumed) == list(ranks[0])[5:]
    plain = StreamBatchSampler(10, 4, shuffle=False)
    assert [[i for _, i in b] for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_reader_opens_shards_lazily_and_pickles_without_descriptors(
    tokenizer, tok_file, write, tmp_path
):
    corpus = texts(400, seed=4)
    path = write("big.jsonl", "\n".join(json.dumps({"Text": t}) for t in corpus))
    prepare(
        [str(path)], tmp_path / "big", tokenizer=str(tok_file), shard_tokens=512, progress=False
    )
    text = open_prepared(tmp_path / "big").streams["text"]
    assert len(text.shards) > 10 and not len(text.files)  # nothing opened until a read
    doc = text.document(200, trim=1)  # its end-of-document id
    assert tokenizer.decode(doc.tolist()) == corpus[200]
    assert len(text.files) == 2  # one .idx and one .bin: not every shard
    clone = pickle.loads(pickle.dumps(text))  # what a DataLoader worker receives
    assert not len(clone.files) and clone.document(200, trim=1).tolist() == doc.tolist()


@pytest.mark.slow  # imports datasets and pyarrow (seconds)
def test_parquet_and_hugging_face_folders_are_inputs(tokenizer, tok_file, tmp_path):
    datasets = pytest.importorskip("datasets")  # a dev dependency: present in CI
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = texts(40, seed=5)
    pq.write_table(pa.table({"text": corpus[:20], "id": list(range(20))}), tmp_path / "a.parquet")
    datasets.Dataset.from_dict({"Text": corpus[20:]}).save_to_disk(str(tmp_path / "hf"))
    inputs = [str(tmp_path / "a.parquet"), str(tmp_path / "hf")]
    manifest = prepare(inputs, tmp_path / "out", tokenizer=str(tok_file), progress=False)
    assert manifest.documents == 40
    assert [s["kind"] for s in manifest.sources] == ["file", "hf_folder"]
    dm = data_module(
        tokenizer, tmp_path, train_dir=str(tmp_path / "out"), val_dir=str(tmp_path / "out")
    )
    assert dm.document_texts("val", 40) == corpus
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(RecordError, match=r"b.parquet: no column Text/text"):
        prepare([str(tmp_path / "b.parquet")], tmp_path / "o2", tokenizer=str(tok_file))


def test_tokenizer_sample_covers_every_input(write, tmp_path):
    """A prose file sorted before a code file: the tokenizer is trained on both (the first
    N/2 documents of each), the manifest says so, and code is encoded in far fewer tokens
    than by a tokenizer trained on the prose alone (what taking the first N did)."""
    prose = [{"Text": f"To be, or not to be, that is the question {i}."} for i in range(300)]
    code = [
        {"Text": f"def compute_{i}(self):\n    return self.values[{i}] + offset_parameter"}
        for i in range(300)
    ]
    write("corpus/a_prose.jsonl", "\n".join(json.dumps(r) for r in prose))
    write("corpus/b_code.jsonl", "\n".join(json.dumps(r) for r in code))
    common = {"vocab_size": 600, "num_sentinels": 4, "progress": False}
    both = prepare([str(tmp_path / "corpus")], tmp_path / "both", sample_documents=200, **common)
    assert both.tokenizer_sample == {
        str(tmp_path / "corpus" / "a_prose.jsonl"): 100,
        str(tmp_path / "corpus" / "b_code.jsonl"): 100,
    }
    prose_only = prepare([str(tmp_path / "corpus/a_prose.jsonl")], tmp_path / "p", **common)
    from s2s.tokenizer import Tokenizer

    sample = code[7]["Text"]
    spread = len(Tokenizer.load(tmp_path / "both" / "tokenizer.json").encode(sample))
    narrow = len(Tokenizer.load(tmp_path / "p" / "tokenizer.json").encode(sample))
    assert spread < 0.7 * narrow, (spread, narrow)
    assert prose_only.tokenizer_sample == {str(tmp_path / "corpus/a_prose.jsonl"): 300}
