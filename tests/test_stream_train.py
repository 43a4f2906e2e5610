"""Training on a prepared (streamed) corpus: data=stream, exact resume (twice, across an epoch
boundary, with another num_workers), and DDP ranks on disjoint blocks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers.recording import read_records
from helpers.train import TINY_MODEL, compose_train, overrides_for, record, run_ddp_records
from omegaconf import OmegaConf

from s2s.checkpoint import read_checkpoint
from s2s.data.config import DataConfig
from s2s.pipeline import train
from s2s.prepare import prepare

PATHS = {"train_dir": "x", "val_dir": "x"}


@pytest.fixture(scope="module")
def prepared(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """The tiny text data prepared: train with its own tokenizer, val sharing it."""
    out = tmp_path_factory.mktemp("prepared")
    prepare(
        [str(tiny_data["text_train"])],
        out / "train",
        vocab_size=600,
        num_sentinels=16,
        shard_tokens=700,
        progress=False,
    )
    prepare([str(tiny_data["text_val"])], out / "val", tokenizer=str(out / "train"), progress=False)
    return {"train": out / "train", "val": out / "val"}


def stream_overrides(tiny_data, prepared, tmp_path: Path) -> list[str]:
    return [
        *overrides_for(tiny_data, tmp_path),
        "data=stream",
        "data.train_path=null",
        "data.val_path=null",
        f"data.train_dir={prepared['train']}",
        f"data.val_dir={prepared['val']}",
    ]


@pytest.mark.slow  # three training runs
def test_stream_training_resumes_exactly_twice_and_across_an_epoch(
    tiny_data,
    prepared,
    tmp_path,
):
    common = [
        *stream_overrides(tiny_data, prepared, tmp_path),
        "data.batch_size=16",  # 9 batches an epoch: the run crosses into the second
        "trainer.max_steps=16",
        "scheduler.total_steps=16",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "trainer.val_check_interval=5",
    ]
    full = tmp_path / "full.json"
    train(compose_train([*common, *record(full), f"paths.output_dir={tmp_path / 'a'}"]))
    uninterrupted = {r["step"]: r for r in read_records(full)}
    epochs = {r["epoch"] for r in uninterrupted.values()}
    assert len(epochs) >= 2  # the run crosses an epoch boundary
    # Interrupted at step 5, resumed to 10 with a worker process, resumed again with none.
    part = tmp_path / "part.json"
    run = [*common, *record(part), f"paths.output_dir={tmp_path / 'b'}"]
    last = f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"
    train(compose_train([*run, "trainer.max_steps=5"]))
    train(compose_train([*run, "trainer.max_steps=10", "data.num_workers=1", last]))
    train(compose_train([*run, last]))
    resumed = {r["step"]: r for r in read_records(part)}
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, 17))
    for step in range(1, 17):
        assert resumed[step]["rows"] == uninterrupted[step]["rows"], step
        assert resumed[step]["inputs"] == uninterrupted[step]["inputs"], step  # same noise
        assert resumed[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-5), step
    # ...and the last checkpoints of both runs (step 15: saved every 5 steps) hold the same weights.
    last_ckpts = (tmp_path / d / "checkpoints" / "last.ckpt" for d in "ab")
    a, b = (torch.load(path, weights_only=False) for path in last_ckpts)
    assert a["global_step"] == b["global_step"] == 15
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, weight in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], weight, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow  # spawns processes
def test_stream_ddp_ranks_read_disjoint_blocks_in_equal_numbers(
    tiny_data,
    prepared,
    tmp_path,
):
    ranks = run_ddp_records(stream_overrides(tiny_data, prepared, tmp_path), tmp_path)
    assert [len(r) for r in ranks] == [3, 3]
    rows = [{row for step in r for row in step["rows"]} for r in ranks]
    assert rows[0] and rows[1] and not rows[0] & rows[1]


def test_stream_without_directories_is_one_clear_error(tiny_data, tmp_path):
    overrides = [*overrides_for(tiny_data, tmp_path), "data=stream", "data.train_path=null"]
    with pytest.raises(ValueError, match=r"data.train_path is not set \(nor data.train_dir\)"):
        train(compose_train(overrides))


@pytest.mark.slow  # prepares a corpus, then a whole training run
def test_t5_base_c4_is_nanot5s_recipe_and_runs_on_a_prepared_corpus(
    tiny_data,
    prepared,
    tmp_path,
):
    cfg = compose_train(["experiment=t5_base_c4"])
    data = DataConfig.from_dict(OmegaConf.to_container(cfg.data, resolve=True) | PATHS)
    assert data.t5_lengths == (568, 114)  # 568 raw tokens -> 512 inputs, 114 targets
    assert (data.batch_size, cfg.trainer.max_steps, cfg.trainer.precision) == (
        128,
        65536,
        "bf16-mixed",
    )
    assert (cfg.optimizer.lr, cfg.scheduler.warmup_steps) == (2e-2, 10000)
    assert cfg.optimizer._target_ == "s2s.optim.adamw_scale" and cfg.model.dropout == 0.0
    assert (cfg.model.d_model, cfg.model.n_encoder_layers, cfg.model.tie_embeddings) == (
        768,
        12,
        False,
    )
    # The CPU smoke variant: the same experiment, shrunk, on the tiny prepared corpus.
    smoke = [
        "experiment=t5_base_c4",
        *stream_overrides(tiny_data, prepared, tmp_path)[len(TINY_MODEL) :],
        *TINY_MODEL,
        "model.d_head=16",
        "trainer=cpu",
        "data.max_source_length=32",
        "data.max_target_length=16",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "scheduler.warmup_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=3",
    ]
    result = train(compose_train(smoke))
    metrics = {k: float(v) for k, v in result["metrics"].items()}
    # 3 steps from initialisation: about a uniform guess over the vocabulary (ln V nats;
    # 6.39 for V = 600 here)
    ckpt = read_checkpoint(result["last_checkpoint"])
    vocab = ckpt.config.vocab_size
    assert abs(metrics["val/loss"] - math.log(vocab)) < 1.0, (metrics["val/loss"], vocab)
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)
    # the experiment's architecture and optimiser, shrunk by the overrides, are what trained
    assert ckpt.raw["global_step"] == 3
    assert (ckpt.config.d_model, ckpt.config.d_head, ckpt.config.tie_embeddings) == (32, 16, False)
    assert ckpt.config.positions == "t5_relative" and ckpt.config.dropout == 0.1
    assert "min_scale" in ckpt.raw["optimizer_states"][0]["param_groups"][0]  # adamw_scale's
