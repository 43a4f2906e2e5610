"""A resume knows the batch geometry (issue 29): checkpoints record rows of the epoch's order
consumed, so a resume with another micro-batch, accumulation, device count or global batch
sees every row of the epoch once; another corpus or seed is refused in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from helpers.recording import read_records
from helpers.train import compose_train, record, run_ddp_records
from test_stream_train import prepared, stream_overrides  # noqa: F401 (a fixture)

from s2s.data.position import DataPosition, resume_point
from s2s.data.sampler import BucketBatchSampler, StreamBatchSampler
from s2s.pipeline import train

# -- the samplers: positions, not batches ------------------------------------------------------


def samplers(kind: str, n: int, micro: int, world: int, batch: int):
    lengths = np.random.default_rng(0).integers(1, 50, size=n)
    common = {"shuffle": True, "seed": 3, "num_replicas": world, "global_batch_size": batch}
    if kind == "bucket":
        return [
            BucketBatchSampler(lengths, micro, bucket_size=2, rank=r, **common)
            for r in range(world)
        ]
    return [StreamBatchSampler(n, micro, rank=r, **common) for r in range(world)]


def rows_in_order(ranks, count: int) -> list[int]:
    """The rows of all ranks in micro-batch order (j -> rank j % W), wrap-around dropped."""
    passes = [list(s) for s in ranks]
    batches = [b for k in range(len(passes[0])) for p in passes for b in p[k : k + 1]]
    return [i for b in batches for _, i in b][:count]


@pytest.mark.parametrize("kind", ["bucket", "stream"])
@pytest.mark.parametrize(("micro", "world"), [(8, 1), (2, 1), (4, 2), (2, 4)])
def test_another_split_of_the_global_batch_continues_at_the_same_row(kind, micro, world):
    n, batch, done = 103, 8, 24  # 3 steps of 8 rows were consumed at micro 4 on one device
    whole = rows_in_order(samplers(kind, n, 4, 1, batch), n)
    assert sorted(whole) == list(range(n))
    resumed = samplers(kind, n, micro, world, batch)
    for s in resumed:
        s.resume(0, done)
    assert rows_in_order(resumed, n - done) == whole[done:]  # same rows, same order
    # rows_done turns Lightning's batch count back into rows: the pass started at
    # len - remaining batches, and each batch of every rank is `micro` rows
    s = resumed[0]
    start = len(s) - s.remaining()
    assert s.rows_done(start) == done and s.rows_done(start + 2) == done + 2 * micro * world


@pytest.mark.parametrize("kind", ["bucket", "stream"])
def test_another_global_batch_still_sees_every_row_of_the_epoch_once(kind):
    n, done = 103, 24
    whole = rows_in_order(samplers(kind, n, 4, 1, 8), n)
    resumed = samplers(kind, n, 16, 1, 16)
    resumed[0].resume(0, done, 8)  # the order of the checkpoint's global batch, this epoch
    assert sorted(whole[:done] + rows_in_order(resumed, n - done)) == list(range(n))
    fresh = samplers(kind, n, 16, 1, 16)
    for s in (resumed[0], fresh[0]):
        s.set_epoch(1)  # the next epoch: cut with the new global batch, from its first row
    assert rows_in_order(resumed, n) == rows_in_order(fresh, n)


# -- what a resume says about changes ----------------------------------------------------------

NOW = DataPosition(0, 0, 8, 4, 2, 1, seed=3, corpus="abc", num_rows=103)


def saved(**changes) -> dict:
    values = {"epoch": 1, "rows": 40, "global_batch": 8, "micro_batch_size": 4}
    values |= {"accumulation": 2, "world_size": 1, "seed": 3, "corpus": "abc", "num_rows": 103}
    return values | changes | {"batches_done": 10}


def test_resume_point_is_exact_for_another_split_and_warns_for_another_batch(caplog):
    with caplog.at_level(logging.INFO, "s2s.data.position"):
        start = resume_point(saved(micro_batch_size=8, accumulation=1), NOW, force=False)
    assert (start.epoch, start.row, start.global_batch) == (1, 40, 8)
    assert "exact" in caplog.text and "WARNING" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "s2s.data.position"):
        start = resume_point(saved(global_batch=16, micro_batch_size=16), NOW, force=False)
    assert (start.row, start.global_batch) == (40, 16)  # the checkpoint's order this epoch
    assert "data.batch_size changed since the checkpoint (16 -> 8): continuing at row 40" in (
        caplog.text
    )


@pytest.mark.parametrize("change", [{"corpus": "xyz"}, {"num_rows": 99}, {"seed": 4}])
def test_another_corpus_or_seed_is_refused_unless_forced(change, caplog):
    with pytest.raises(ValueError, match=r"another corpus or data seed .*data.force_resume=true"):
        resume_point(saved(**change), NOW, force=False)
    with caplog.at_level(logging.WARNING, "s2s.data.position"):
        assert resume_point(saved(**change), NOW, force=True).row == 40
    assert "data.force_resume=true" in caplog.text


def test_checkpoints_without_rows_resume_as_before():
    old = {"epoch": 2, "batches_done": 5}  # batches of this run's micro-batch x devices
    assert resume_point(old, NOW, force=False).row == 5 * 4 * 1


# -- training runs: the rows an epoch trains on ------------------------------------------------


def trained_rows(path: Path, ranks: int = 1) -> list[str]:
    """The target rows trained on, in order (micro-batches of all ranks interleaved)."""
    records = [read_records(path, r) for r in range(ranks)]
    return [row for k in range(len(records[0])) for r in records for row in r[k]["rows"]]


def epoch_runs(tiny_data, prepared, tmp_path, parts: list[list[str]], **kwargs) -> tuple:  # noqa: F811
    """One epoch uninterrupted (global batch 8 as 2 x 4), and the same epoch in `parts`, each
    resumed from the last checkpoint of the part before; their trained rows."""
    common = [
        *stream_overrides(tiny_data, prepared, tmp_path),
        "data.batch_size=8",
        "data.micro_batch_size=4",
        "trainer.max_steps=-1",
        "trainer.max_epochs=1",
        "scheduler=constant",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "trainer.val_check_interval=1000",  # no validation: the rows are the point
    ]
    full = tmp_path / "full.json"
    train(compose_train([*common, *record(full), f"paths.output_dir={tmp_path / 'a'}"]))
    part = tmp_path / "part.json"
    run = [*common, *record(part), f"paths.output_dir={tmp_path / 'b'}"]
    last = f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"
    train(compose_train([*run, "trainer.max_steps=2"]))
    for overrides in parts:
        train(compose_train([*run, *overrides, last]))
    return trained_rows(full), trained_rows(part)


@pytest.mark.slow  # four training runs
def test_resume_with_another_micro_batch_and_accumulation_trains_the_same_rows(
    tiny_data,
    prepared,  # noqa: F811
    tmp_path,
):
    whole, parts = epoch_runs(
        tiny_data,
        prepared,
        tmp_path,
        [
            ["data.micro_batch_size=8", "trainer.max_steps=4"],  # accumulation 2 -> 1
            ["data.micro_batch_size=2"],  # ... -> 4, to the end of the epoch
        ],
    )
    assert parts == whole  # the same rows in the same order: nothing skipped or repeated


@pytest.mark.slow  # two training runs
def test_resume_with_another_global_batch_trains_every_row_once(
    tiny_data,
    prepared,  # noqa: F811
    tmp_path,
    caplog,
):
    with caplog.at_level(logging.WARNING, "s2s.data.position"):
        whole, parts = epoch_runs(
            tiny_data, prepared, tmp_path, [["data.batch_size=16", "data.micro_batch_size=8"]]
        )
    assert sorted(parts) == sorted(whole) and len(set(whole)) == len(whole)
    assert "data.batch_size changed since the checkpoint (8 -> 16)" in caplog.text


@pytest.mark.slow  # a training run and a refused resume
def test_resume_on_another_corpus_is_refused_in_one_line(
    tiny_data,
    prepared,  # noqa: F811
    tmp_path,
):
    run = [
        *stream_overrides(tiny_data, prepared, tmp_path),
        "trainer.max_steps=2",
        "callbacks.last_checkpoint.every_n_train_steps=2",
    ]
    train(compose_train(run))
    last = f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(ValueError, match=r"another corpus or data seed \(corpus "):
        train(
            compose_train([*run, "trainer.max_steps=3", f"data.train_dir={prepared['val']}", last])
        )


@pytest.mark.slow  # spawns two processes
def test_resume_on_two_devices_trains_the_same_rows(tiny_data, prepared, tmp_path):  # noqa: F811
    whole, first = epoch_runs(tiny_data, prepared, tmp_path, [])
    # the rest of the epoch on two CPU processes: 2 devices x micro 4, no accumulation
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    overrides = [
        *stream_overrides(tiny_data, prepared, tmp_path),
        "data.batch_size=8",
        "data.micro_batch_size=4",
        "trainer.max_epochs=1",
        "scheduler=constant",
        f"paths.output_dir={tmp_path / 'b'}",
        f"ckpt_path={last}",
    ]
    steps = -(-len(whole) // 8)
    run_ddp_records(overrides, tmp_path, steps=steps)
    rest = trained_rows(tmp_path / "ddp.json", ranks=2)
    assert first + rest[: len(whole) - len(first)] == whole
