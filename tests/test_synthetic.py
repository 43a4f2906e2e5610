"""Copy warm-up: random rows to copy, keyed by step, and the training loop that uses them."""

from __future__ import annotations

import pytest
import torch
from helpers.train import compose_train, overrides_for

from s2s.data.examples import IGNORE_INDEX
from s2s.data.objectives import build_objective
from s2s.data.synthetic import CopyWarmup, copyable_ids, random_copy_batch, warmup_rng
from s2s.lit_module import Seq2SeqLitModule
from s2s.pipeline import train

MASK_ID = 3  # s2s.tokenizer: <mask> is always id 3


def batch_of(tokenizer, key, noised=0.0, rows=6, length=7, noise=None):
    return random_copy_batch(
        rows,
        CopyWarmup(steps=1, length=length, noised=noised),
        copyable_ids(tokenizer),
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        rng=warmup_rng(*key),
        noise=noise,
    )


def test_random_rows_are_their_own_target_and_hold_no_special_token(tokenizer):
    batch = batch_of(tokenizer, (0, 3, 0, 0), rows=5)
    assert batch["input_ids"].shape == (5, 8)
    assert torch.equal(batch["input_ids"], batch["labels"])
    assert bool(batch["attention_mask"].all())
    assert bool((batch["input_ids"][:, -1] == tokenizer.eos_id).all())
    body = batch["input_ids"][:, :-1]
    assert not set(body.flatten().tolist()) & set(tokenizer.special_ids)
    assert len(copyable_ids(tokenizer)) == tokenizer.vocab_size - len(tokenizer.special_ids)


def test_noised_rows_go_through_the_objective_and_keep_their_clean_target(tokenizer):
    from s2s.data.config import DataConfig

    bart = build_objective(DataConfig(train_path="x"), tokenizer)
    batch = batch_of(tokenizer, (0, 1, 0, 0), noised=1.0, rows=8, length=20, noise=bart)
    labels, inputs = batch["labels"], batch["input_ids"]
    assert bool((labels[:, 20] == tokenizer.eos_id).all()) and labels.shape[1] == 21
    assert bool((inputs == tokenizer.mask_id).any(dim=1).all())  # every row has a mask
    assert not bool((labels == tokenizer.mask_id).any())
    half = batch_of(tokenizer, (0, 1, 0, 0), noised=0.5, rows=40, length=20, noise=bart)
    masked_rows = int((half["input_ids"] == tokenizer.mask_id).any(dim=1).sum())
    assert 8 < masked_rows < 32


def test_rows_depend_only_on_seed_step_micro_batch_and_rank(tokenizer):
    def rows(*key):
        return batch_of(tokenizer, key)["labels"]

    assert torch.equal(rows(1, 2, 0, 0), rows(1, 2, 0, 0))
    for other in [(2, 2, 0, 0), (1, 3, 0, 0), (1, 2, 1, 0), (1, 2, 0, 1)]:
        assert not torch.equal(rows(1, 2, 0, 0), rows(*other)), other


@pytest.mark.parametrize(
    "values", [dict(steps=-1), dict(length=0), dict(noised=1.5), dict(noise_from=-1)]
)
def test_bad_warmup_settings_are_refused(values):
    with pytest.raises(ValueError, match="copy_warmup"):
        CopyWarmup(**values)


def spy_training_rows(monkeypatch) -> list[tuple[int, list[int], list[int]]]:
    """A list that fills, as training runs, with (step, input ids, real label ids) of the first
    row of every training batch the loss sees (after any warm-up replacement)."""
    seen = []
    original = Seq2SeqLitModule.loss

    def spy(self, batch):
        if self.training:
            labels = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
            seen.append((self.global_step, batch["input_ids"][0].tolist(), labels))
        return original(self, batch)

    monkeypatch.setattr(Seq2SeqLitModule, "loss", spy)
    return seen


def copy_rows(seen) -> list[bool]:
    """Which of the spied rows are plain copies (input == target)."""
    return [inputs == labels for _, inputs, labels in seen]


@pytest.mark.slow  # a whole training run
def test_warmup_steps_train_on_random_rows_then_on_the_data(tiny_data, tmp_path, monkeypatch):
    """Steps before copy_warmup.steps see random copy rows; later steps see the data's rows."""
    seen = spy_training_rows(monkeypatch)
    overrides = [
        *overrides_for(tiny_data, tmp_path),
        "copy_warmup.steps=3",
        "copy_warmup.length=8",
        "copy_warmup.noised=1.0",
        "copy_warmup.noise_from=2",
        "trainer.max_steps=5",
    ]
    train(compose_train(overrides))
    assert [step for step, _, _ in seen] == [0, 1, 2, 3, 4]
    for _, inputs, labels in seen[:2]:  # plain copies of random rows
        assert inputs == labels and len(inputs) == 9  # 8 random tokens + EOS
    _, inputs, labels = seen[2]  # a noised random row: the clean row is still the target
    assert inputs != labels and len(labels) == 9 and MASK_ID in inputs
    for _, inputs, labels in seen[3:]:
        assert inputs != labels and len(labels) > 9  # noised text rows


@pytest.mark.slow  # a whole training run
def test_init_from_skips_the_warmup(tiny_data, tmp_path, monkeypatch, cfg_train):
    pretrain = tmp_path / "pretrain"
    first = train(cfg_train("trainer.max_steps=2", out=pretrain))
    seen = spy_training_rows(monkeypatch)
    tuned = [
        *overrides_for(tiny_data, tmp_path / "tuned"),
        f"init_from={first['last_checkpoint']}",
        "copy_warmup.steps=5",
        "copy_warmup.noised=0.0",
        "trainer.max_steps=2",
    ]
    train(compose_train(tuned))
    assert copy_rows(seen) == [False, False]  # data rows


def test_vocab_limits_warmup_rows_to_the_first_copyable_ids(tokenizer):
    ids = copyable_ids(tokenizer, 50)
    assert ids.tolist() == copyable_ids(tokenizer)[:50].tolist()
    assert not set(ids.tolist()) & set(tokenizer.special_ids)
    warmup = CopyWarmup(steps=1, length=40, vocab=50)
    batch = random_copy_batch(
        8, warmup, ids, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, rng=warmup_rng(0, 0, 0, 0)
    )
    rows = batch["input_ids"][:, :-1]
    assert set(rows.flatten().tolist()) <= set(ids.tolist())
    with pytest.raises(ValueError, match=r"copy_warmup\.vocab"):
        CopyWarmup(vocab=1)


@pytest.mark.slow  # a whole training run
def test_warmup_ends_once_the_model_copies_and_a_resume_keeps_that_end(
    tiny_data, tmp_path, monkeypatch, caplog
):
    """copy_warmup.until ends the warm-up after the first step whose last `window` batches
    average at least `until`; the step it ended at travels in the checkpoint."""
    scores = iter([0.2, 0.9, 0.95, 0.99])  # what the model "copies" on warm-up steps 0, 1, ...
    monkeypatch.setattr("s2s.lit_module.copy_accuracy", lambda *_: torch.tensor(next(scores)))
    seen = spy_training_rows(monkeypatch)
    run = [
        *overrides_for(tiny_data, tmp_path),
        "copy_warmup.steps=10",
        "copy_warmup.noised=0.0",
        "copy_warmup.until=0.9",
        "copy_warmup.window=2",
    ]
    with caplog.at_level("INFO", logger="s2s.lit_module"):
        first = train(compose_train([*run, "trainer.max_steps=4"]))
    # mean(0.2, 0.9) < 0.9; mean(0.9, 0.95) >= 0.9 after step 2: data from step 3 on
    assert copy_rows(seen) == [True, True, True, False]
    assert "copy warm-up done after 3 steps: copies 92% of its tokens" in caplog.text
    state = torch.load(first["last_checkpoint"], weights_only=False)["s2s_copy_warmup"]
    assert state["end"] == 3 and state["scores"] == pytest.approx([0.9, 0.95])

    seen.clear()  # resumed past the end: data rows only, although 4 < copy_warmup.steps
    train(compose_train([*run, "trainer.max_steps=6", f"ckpt_path={first['last_checkpoint']}"]))
    assert copy_rows(seen) == [False, False]


@pytest.mark.slow  # a whole training run
def test_a_warmup_that_never_copies_says_so(tiny_data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("s2s.lit_module.copy_accuracy", lambda *_: torch.tensor(0.1))
    run = [
        *overrides_for(tiny_data, tmp_path),
        "copy_warmup.steps=2",
        "copy_warmup.until=0.9",
        "copy_warmup.window=1",
        "trainer.max_steps=3",
    ]
    with caplog.at_level("INFO", logger="s2s.lit_module"):
        train(compose_train(run))
    wanted = "2 steps (copy_warmup.steps) and the model copies only 10% of its tokens (wanted: 90%)"
    assert wanted in caplog.text


@pytest.mark.parametrize("values", [{"until": 0.0}, {"until": 1.5}, {"window": 0}])
def test_bad_until_or_window_is_refused(values):
    with pytest.raises(ValueError, match="copy_warmup"):
        CopyWarmup(**values)


@pytest.mark.slow  # a whole training run
def test_a_fixed_warmup_says_how_much_it_copies(tiny_data, tmp_path, monkeypatch, caplog):
    """Without copy_warmup.until the warm-up runs its steps, then reports its copying, with a
    warning below half (the usual sign of a plateau that never ended)."""
    shares = {"good": 0.8, "bad": 0.3}
    for name, share in shares.items():
        monkeypatch.setattr("s2s.lit_module.copy_accuracy", lambda *_, s=share: torch.tensor(s))
        run = [*overrides_for(tiny_data, tmp_path / name), "copy_warmup.steps=2",
               "copy_warmup.window=1", "trainer.max_steps=3"]  # fmt: skip
        caplog.clear()
        with caplog.at_level("INFO", logger="s2s.lit_module"):
            train(compose_train(run))
        warned = [r for r in caplog.records if r.levelname == "WARNING"]
        if name == "good":
            assert "copy warm-up done after 2 steps: copies 80% of its tokens" in caplog.text
            assert not warned
        else:
            assert len(warned) == 1 and "copies only 30% of its tokens (wanted: 50%)" in caplog.text
