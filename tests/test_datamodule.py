"""Data module: packing, truncation, per-epoch noise, DDP sharding, the on-disk cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from s2s.data.cache import Ragged, tokenize_file
from s2s.data.config import DataConfig
from s2s.data.datamodule import S2SDataModule
from s2s.data.examples import IGNORE_INDEX, Example, collate, pack, truncate
from s2s.data.noising import t5_reconstruct
from s2s.data.sampler import BucketBatchSampler

SENTENCES = [
    "To be, or not to be, that is the question.",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune.",
    "Or to take arms against a sea of troubles, and by opposing end them.",
    "To die, to sleep; no more.",
    "And by a sleep to say we end the heart-ache and the thousand natural shocks.",
]


@pytest.fixture
def text_file(write):
    texts = [" ".join(SENTENCES[i % 5 :] + SENTENCES[: i % 5]) for i in range(40)]
    return write("text.json", json.dumps([{"Text": t} for t in texts]))


@pytest.fixture
def pair_file(write):
    pairs = [{"Input": s.upper(), "Target": s} for s in SENTENCES * 4]
    return write("pairs.jsonl", "\n".join(json.dumps(p) for p in pairs))


def make(train, tokenizer, tmp_path, **overrides) -> S2SDataModule:
    settings = dict(
        train_path=str(train),
        val_path=str(train),
        max_source_length=32,
        max_target_length=32,
        batch_size=4,
        num_workers=0,
        cache_dir=str(tmp_path / "cache"),
    )
    dm = S2SDataModule(DataConfig(**(settings | overrides)), tokenizer=tokenizer)
    dm.setup("fit")
    return dm


def test_pack_joins_rows_with_separator_and_cuts_full_blocks():
    rows = Ragged.from_rows([[1, 2, 3], [4], [5, 6, 7, 8]])
    packed = pack(rows, block_length=3, separator=[0])
    assert [packed[i].tolist() for i in range(len(packed))] == [
        [1, 2, 3],
        [0, 4, 0],
        [5, 6, 7],
        [8],
    ]


def test_pack_with_min_length_cuts_random_lengths_in_range_and_keeps_every_token():
    rows = Ragged.from_rows([list(range(2, 40)), list(range(40, 90))])
    packed = pack(rows, 10, [0], min_length=3, rng=np.random.default_rng(0))
    lengths = packed.lengths
    assert lengths[:-1].min() >= 3 and lengths.max() <= 10
    assert len(set(lengths[:-1].tolist())) > 2  # not all one length
    assert packed.ids.tolist() == list(range(2, 40)) + [0] + list(range(40, 90))
    again = pack(rows, 10, [0], min_length=3, rng=np.random.default_rng(0))
    assert again.offsets.tolist() == packed.offsets.tolist()  # seeded: same cuts every run
    with pytest.raises(ValueError, match="min_length"):
        pack(rows, 10, [0], min_length=11, rng=np.random.default_rng(0))


def test_min_row_length_shortens_training_rows_only(text_file, tokenizer, tmp_path):
    dm = make(text_file, tokenizer, tmp_path, min_row_length=4, max_target_length=32)
    train, val = dm.datasets["train"].lengths, dm.datasets["val"].lengths
    assert train[:-1].min() >= 4 and train.max() <= 31 and train[:-1].mean() < 25
    assert (val[:-1] == 31).all()  # validation rows stay full: val/loss comparable
    with pytest.raises(ValueError, match=r"data\.min_row_length"):
        DataConfig(train_path="x", max_source_length=32, min_row_length=32)


def test_truncate_cuts_long_rows_and_counts_them():
    rows = Ragged.from_rows([[1, 2, 3, 4], [5], [6, 7, 8]])
    cut, n = truncate(rows, 2)
    assert [cut[i].tolist() for i in range(3)] == [[1, 2], [5], [6, 7]]
    assert n == 2


def test_collate_pads_inputs_and_ignores_padded_labels():
    batch = collate(
        [Example(np.array([5, 6, 1]), np.array([7, 1])), Example(np.array([8, 1]), np.array([1]))],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 1], [8, 1, 0]]
    assert batch["attention_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["labels"].tolist() == [[7, 1], [1, IGNORE_INDEX]]
    assert batch["input_ids"].dtype == torch.long


@pytest.mark.parametrize("objective", ["bart", "t5", "none"])
def test_text_rows_are_packed_and_noised(text_file, tokenizer, tmp_path, objective):
    dm = make(text_file, tokenizer, tmp_path, objective=objective, max_target_length=32)
    train = dm.datasets["train"]
    lengths = train.lengths
    assert (lengths[:-1] == lengths[0]).all()  # packed: all rows full but the last
    example = train[(0, 3)]
    assert example.input_ids[-1] == tokenizer.eos_id and example.labels[-1] == tokenizer.eos_id
    assert len(example.input_ids) <= 32 and len(example.labels) <= 32
    row = train.rows[3]
    if objective == "t5":
        assert len(example.input_ids) == 32  # T5 lengths make inputs exactly max_source_length
        rebuilt = t5_reconstruct(example.input_ids, example.labels, tokenizer.sentinel_ids, 1)
        assert rebuilt.tolist() == row.tolist()
    else:
        assert example.labels[:-1].tolist() == row.tolist()  # target = the whole text
    if objective == "bart":
        assert tokenizer.mask_id in example.input_ids.tolist()
    if objective == "none":
        assert example.input_ids.tolist() == example.labels.tolist()


def test_noise_changes_every_epoch_but_not_for_validation(text_file, tokenizer, tmp_path):
    dm = make(text_file, tokenizer, tmp_path)
    train, val = dm.datasets["train"], dm.datasets["val"]
    epoch0 = [train[(0, i)].input_ids.tolist() for i in range(len(train))]
    epoch1 = [train[(1, i)].input_ids.tolist() for i in range(len(train))]
    assert epoch0 != epoch1
    assert epoch0 == [train[(0, i)].input_ids.tolist() for i in range(len(train))]
    assert val[(0, 2)].input_ids.tolist() == val[(7, 2)].input_ids.tolist()
    # A second data module (another DDP rank, or a resumed run) makes the same noise.
    again = make(text_file, tokenizer, tmp_path).datasets["train"]
    assert again[(1, 2)].input_ids.tolist() == epoch1[2]


def test_pairs_pass_through_untouched(pair_file, tokenizer, tmp_path):
    dm = make(pair_file, tokenizer, tmp_path, objective="bart", max_source_length=128)
    example = dm.datasets["train"][(5, 0)]
    assert example.input_ids.tolist() == tokenizer.encode(SENTENCES[0].upper()) + [1]
    assert example.labels.tolist() == tokenizer.encode(SENTENCES[0]) + [1]
    assert tokenizer.mask_id not in example.input_ids.tolist()


def test_long_pairs_are_truncated_with_a_counted_warning(pair_file, tokenizer, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dm = make(pair_file, tokenizer, tmp_path, max_source_length=8, max_target_length=8)
    assert dm.truncated["train/Input"] > 0
    assert "truncated" in caplog.text and "Input" in caplog.text
    example = dm.datasets["train"][0]
    assert len(example.input_ids) == 8 and example.input_ids[-1] == tokenizer.eos_id


def test_unpacked_text_is_truncated_with_a_warning(text_file, tokenizer, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dm = make(text_file, tokenizer, tmp_path, pack=False)
    assert dm.truncated["train/Text"] == 40
    assert len(dm.datasets["train"]) == 40


def test_sampler_shards_ranks_disjointly_and_equally():
    lengths = np.random.default_rng(0).integers(1, 100, size=103)
    samplers = [
        BucketBatchSampler(lengths, 4, shuffle=True, seed=1, bucket_size=3, num_replicas=2, rank=r)
        for r in range(2)
    ]
    for epoch in range(2):
        seen = []
        for s in samplers:
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s) == 13
            assert all(key[0] == epoch for batch in batches for key in batch)
            seen.append({key[1] for batch in batches for key in batch})
        assert len(seen[0] & seen[1]) <= 4  # only the wrap-around batch may repeat
        assert seen[0] | seen[1] == set(range(103))


def test_sampler_order_depends_on_epoch_and_batches_group_lengths():
    lengths = np.arange(200)
    s = BucketBatchSampler(lengths, 10, shuffle=True, seed=0, bucket_size=20)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first
    # Within one bucket (all 200 rows here) batches hold neighbours in length.
    spreads = [np.ptp([lengths[i] for _, i in batch]) for batch in first]
    assert max(spreads) == 9


def test_sampler_resumes_at_a_row_of_its_epoch_only():
    s = BucketBatchSampler(np.ones(40), 4, shuffle=True, seed=0)
    full = list(s)
    s.resume(epoch=0, row=12)
    assert list(s) == full[3:]
    assert list(s) == full[3:]  # every pass over the resumed epoch (a worker restart)
    s.set_epoch(1)
    epoch_1 = list(s)
    assert len(epoch_1) == len(full) and epoch_1 != full  # another epoch starts at row 0


def test_tokenized_files_are_cached(pair_file, tokenizer, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = tokenize_file(pair_file, tokenizer, cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenised despite the cache")

    monkeypatch.setattr(tokenizer, "encode_batch", fail)
    second = tokenize_file(pair_file, tokenizer, cache)
    assert np.array_equal(first.inputs.ids, second.inputs.ids)
    assert np.array_equal(first.targets.offsets, second.targets.offsets)


def test_tokenizer_is_trained_once_and_cached(text_file, tmp_path):
    cfg = DataConfig.from_dict(
        {
            "train_path": str(text_file),
            "cache_dir": str(tmp_path / "c"),
            "tokenizer": {"vocab_size": 600, "num_sentinels": 4},
        }
    )
    first = S2SDataModule(cfg).tokenizer
    assert len(list((tmp_path / "c").glob("tokenizer-*.json"))) == 1
    second = S2SDataModule(cfg).tokenizer
    assert second.encode(SENTENCES[1]) == first.encode(SENTENCES[1])


def test_missing_split_gives_a_clear_error(text_file, tokenizer, tmp_path):
    dm = make(text_file, tokenizer, tmp_path)
    with pytest.raises(ValueError, match=r"data\.test_path is not set"):
        dm.test_dataloader()


def test_t5_with_too_few_sentinels_names_the_key(text_file, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"data\.tokenizer\.num_sentinels"):
        make(
            text_file,
            tokenizer,
            tmp_path,
            objective="t5",
            max_source_length=512,
            max_target_length=512,
        )


def test_loader_batches(text_file, tokenizer, tmp_path):
    dm = make(text_file, tokenizer, tmp_path)
    batches = list(dm.train_dataloader())
    assert sum(len(b["input_ids"]) for b in batches) == len(dm.datasets["train"])
    assert all(b["input_ids"].shape[0] <= 4 for b in batches)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"noise": {"t5": {"noise_density": 1.5}}}, "data.noise.t5.noise_density=1.5"),
        ({"noise": {"t5": {"mean_noise_span_length": 0}}}, "data.noise.t5.mean_noise_span_length"),
        ({"noise": {"bart": {"mask_ratio": -0.1}}}, "data.noise.bart.mask_ratio"),
        ({"noise": {"bart": {"poisson_lambda": 0}}}, "data.noise.bart.poisson_lambda"),
        ({"max_source_length": 1}, "data.max_source_length=1 must be >= 2"),
        ({"max_target_length": "long"}, "data.max_target_length='long' must be int"),
        ({"objective": "gpt"}, "data.objective='gpt'"),
        ({"batchsize": 8}, "unknown key data.batchsize"),
        ({"noise": {"bert": {}}}, "unknown key data.noise.bert"),
        ({"tokenizer": {"vocab_size": 10}}, "data.tokenizer.vocab_size=10"),
    ],
)
def test_bad_config_values_name_the_key(values, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        DataConfig.from_dict({"train_path": "x.json"} | values)


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_batches_are_page_locked_only_for_a_gpu(text_file, tokenizer, tmp_path, device, pinned):
    from types import SimpleNamespace

    dm = make(text_file, tokenizer, tmp_path)
    root = SimpleNamespace(type=device)
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=root), world_size=1,
                              global_rank=0, current_epoch=0)  # fmt: skip
    dm.trainer = trainer
    assert dm.val_dataloader().pin_memory is pinned
