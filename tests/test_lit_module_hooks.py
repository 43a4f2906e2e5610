"""Seq2SeqLitModule's hooks driven by hand, with a stand-in for the Trainer: the loss against a
cross-entropy written out here, the copy warm-up's start, end and report, what each logging
step logs, validation's numbers and log line, the checkpoint entries, the optimiser and
schedule it configures, and the settings it refuses. Seconds, no training run (the runs are in
test_lit_module.py, test_train.py and test_synthetic.py)."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from helpers.generation import tiny_model
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from s2s.data.synthetic import CopyWarmup
from s2s.lit_module import (
    SOURCE_PADDED,
    TOKENS_KEY,
    WARMUP_KEY,
    EvalConfig,
    Seq2SeqLitModule,
    _cell,
    copy_accuracy,
)
from s2s.optim import adamw
from s2s.throughput import Reading

P = -100  # IGNORE_INDEX


def module_for(tokenizer, **kwargs) -> Seq2SeqLitModule:
    return Seq2SeqLitModule(tiny_model(tokenizer.vocab_size), tokenizer, optimizer=adamw, **kwargs)


def attach(module: Seq2SeqLitModule, **state) -> SimpleNamespace:
    """A stand-in Trainer with what the hooks read (one device, training, step 0)."""
    trainer = SimpleNamespace(
        global_step=0,
        global_rank=0,
        world_size=1,
        training=True,
        sanity_checking=False,
        is_global_zero=True,
        log_every_n_steps=1,
        callback_metrics={},
        model=module,
        gradient_clip_val=None,
        precision_plugin=Precision(),
        strategy=SimpleNamespace(reduce=lambda value, reduce_op: value),
    )
    vars(trainer).update(state)
    module._trainer = trainer
    return trainer


class Logged(dict):
    """What `module.log` received: key -> value, and `.kwargs[key]` the options it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.kwargs: dict[str, dict] = {}


def logged_by(module: Seq2SeqLitModule, monkeypatch) -> Logged:
    """What `module.log` receives, key -> value (and key + "/batch_size" when one is given)."""
    logged = Logged()

    def log(key, value, **kwargs):
        logged[key] = float(value.detach() if isinstance(value, torch.Tensor) else value)
        logged.kwargs[key] = kwargs
        if "batch_size" in kwargs:
            logged[key + "/batch_size"] = kwargs["batch_size"]

    monkeypatch.setattr(module, "log", log)
    return logged


def batch() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        "labels": torch.tensor([[12, 13, 1], [14, 1, P]]),
    }


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["num_samples", "generation_examples", "denoise_lines"])
def test_eval_counts_must_not_be_negative(name):
    assert getattr(EvalConfig(**{name: 0}), name) == 0
    with pytest.raises(ValueError, match=rf"^eval\.{name}=-1 must be >= 0$"):
        EvalConfig(**{name: -1})


def test_eval_attention_maps_and_max_new_tokens_are_checked():
    assert EvalConfig(attention_maps=0).attention_maps == 0
    with pytest.raises(ValueError, match=r"^eval\.attention_maps=-2 must be >= 0$"):
        EvalConfig(attention_maps=-2)
    assert EvalConfig(max_new_tokens=1).max_new_tokens == 1
    with pytest.raises(ValueError, match=r"^eval\.max_new_tokens=0 must be >= 1$"):
        EvalConfig(max_new_tokens=0)


def test_eval_metrics_are_checked_and_named():
    assert EvalConfig(metrics=["bleu"]).metrics == ("bleu",)
    with pytest.raises(ValueError, match=r"^eval\.metrics: unknown metric 'meteor'"):
        EvalConfig(metrics=["bleu", "meteor"])


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_label_smoothing_outside_0_1_is_refused(tokenizer, smoothing):
    with pytest.raises(
        ValueError, match=rf"^loss\.label_smoothing={smoothing} must be in \[0, 1\)$"
    ):
        module_for(tokenizer, label_smoothing=smoothing)


# -- the loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_the_loss_is_the_mean_cross_entropy_of_the_real_target_tokens(tokenizer, smoothing):
    """Written out: -log p(label) over the real labels, mixed with the mean -log p over the
    vocabulary by the smoothing (Szegedy et al. 2016), averaged over the 5 real tokens."""
    module = module_for(tokenizer, label_smoothing=smoothing)
    loss, logits = module.loss(batch())
    labels = batch()["labels"]
    assert logits.shape == (2, 3, tokenizer.vocab_size)
    logp = torch.log_softmax(logits.double(), dim=-1)
    terms = []
    for b, t in zip(*torch.nonzero(labels != P, as_tuple=True), strict=True):
        nll = -logp[b, t, labels[b, t]]
        terms.append((1 - smoothing) * nll - smoothing * logp[b, t].mean())
    assert len(terms) == 5
    torch.testing.assert_close(loss.double(), torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)


def test_the_model_gets_no_mask_for_a_batch_noted_unpadded(tokenizer):
    module = module_for(tokenizer)
    calls = []
    model = module.model

    def recording(ids, decoder_ids, mask):
        calls.append((decoder_ids, mask))
        return model(ids, decoder_ids, mask)

    object.__setattr__(module, "_forward", recording)  # as `compile` sets it
    module.loss(batch())  # not noted: the mask goes in
    module.loss({**batch(), SOURCE_PADDED: True})
    module.loss({**batch(), SOURCE_PADDED: False})
    masks = [mask for _, mask in calls]
    assert masks[0] is not None and masks[1] is not None and masks[2] is None
    # the decoder reads the labels shifted right, from the decoder start
    assert torch.equal(calls[0][0], model.shift_right(batch()["labels"]))


def test_before_transfer_notes_padding_on_training_batches_only(tokenizer):
    module = module_for(tokenizer)
    assert SOURCE_PADDED not in module.on_before_batch_transfer(batch(), 0)
    trainer = attach(module)
    assert module.on_before_batch_transfer(batch(), 0)[SOURCE_PADDED] is True
    full = {**batch(), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    assert module.on_before_batch_transfer(full, 0)[SOURCE_PADDED] is False
    trainer.training = False  # validation batches are left alone
    assert SOURCE_PADDED not in module.on_before_batch_transfer(batch(), 0)
    trainer.training = True
    assert module.on_before_batch_transfer([1, 2], 0) == [1, 2]  # not a dict: as is
    assert SOURCE_PADDED not in module.on_before_batch_transfer({"input_ids": 1}, 0)


# -- the copy warm-up -----------------------------------------------------------------------


def test_the_warmup_runs_its_steps_or_until_it_ended(tokenizer):
    module = module_for(tokenizer, copy_warmup=CopyWarmup(steps=3))
    trainer = attach(module)
    assert [module.in_copy_warmup for trainer.global_step in range(5)] == [1, 1, 1, 0, 0]
    module._warmup_end = 1  # it copied: ended after step 0
    assert [module.in_copy_warmup for trainer.global_step in range(3)] == [1, 0, 0]
    assert not module_for(tokenizer).in_copy_warmup  # steps=0: off


def test_the_warmup_ends_once_the_window_averages_until(tokenizer, monkeypatch):
    module = module_for(tokenizer, copy_warmup=CopyWarmup(steps=100, until=0.5, window=2))
    trainer = attach(module)
    logged = logged_by(module, monkeypatch)
    labels = torch.tensor([[3, 4]])

    def step(right: int) -> None:  # a batch with `right` of its 2 tokens predicted right
        predicted = torch.tensor([[3, 4]])
        predicted[0, right:] = 9
        module._track_copying(torch.nn.functional.one_hot(predicted, 12).float(), labels)
        trainer.global_step += 1

    step(2)  # 1.0, but the window is not full yet
    assert module._warmup_end is None and logged["train/copy_acc"] == 1.0
    step(0)  # (1.0 + 0.0) / 2 = 0.5 >= until: ends after this step (step 1)
    assert module._warmup_end == 2 and module._copy_scores == [1.0, 0.0]
    module._warmup_end = None
    step(0)  # (0 + 0) / 2: the window keeps the last 2 only
    assert module._copy_scores == [0.0, 0.0] and module._warmup_end is None
    step(1)  # (0 + 0.5) / 2 = 0.25
    assert module._warmup_end is None and logged["train/copy_acc"] == 0.5


def test_the_warmup_score_is_the_mean_over_ranks(tokenizer, monkeypatch):
    module = module_for(tokenizer, copy_warmup=CopyWarmup(steps=100, until=0.7, window=1))
    seen = []

    def reduce(value, reduce_op):
        seen.append((float(value), reduce_op))
        return torch.tensor(0.75)  # the other ranks copy better

    attach(module, strategy=SimpleNamespace(reduce=reduce))
    logged = logged_by(module, monkeypatch)
    logits = torch.nn.functional.one_hot(torch.tensor([[3, 9]]), 12).float()
    module._track_copying(logits, torch.tensor([[3, 4]]))
    assert seen == [(0.5, "mean")] and logged["train/copy_acc"] == 0.75
    assert module._warmup_end == 1


def test_without_until_the_warmup_runs_all_its_steps(tokenizer, monkeypatch):
    module = module_for(tokenizer, copy_warmup=CopyWarmup(steps=100, window=1))
    attach(module)
    logged_by(module, monkeypatch)
    logits = torch.nn.functional.one_hot(torch.tensor([[3, 4]]), 12).float()
    module._track_copying(logits, torch.tensor([[3, 4]]))
    assert module._copy_scores == [1.0] and module._warmup_end is None


@pytest.mark.parametrize(
    ("until", "scores", "end", "level", "words"),
    [
        (0.8, [0.7, 0.9], 7, logging.INFO, "copy warm-up done after 7 steps: copies 80%"),
        (0.9, [0.7, 0.9], None, logging.WARNING, "copy warm-up: 30 steps (copy_warmup.steps)"),
        (None, [0.5], None, logging.INFO, "done after 30 steps: copies 50%"),  # COPYING = 0.5
        (None, [0.4], None, logging.WARNING, "copies only 40% of its tokens (wanted: 50%)"),
    ],
)
def test_the_warmup_report_says_how_it_ended(tokenizer, caplog, until, scores, end, level, words):
    module = module_for(tokenizer, copy_warmup=CopyWarmup(steps=30, until=until))
    module._copy_scores, module._warmup_end = scores, end
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module._report_warmup()
    assert module._warmup_reported
    assert [r.levelno for r in caplog.records] == [level]
    assert words in caplog.records[0].getMessage()


def test_a_resume_after_the_warmup_reports_nothing(tokenizer, caplog):
    module = module_for(tokenizer, copy_warmup=CopyWarmup(steps=30, until=0.9))
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module._report_warmup()  # no scores: nothing to judge by
    assert caplog.records == [] and module._warmup_reported


def test_training_steps_switch_from_the_warmup_rows_to_the_data(tokenizer, monkeypatch):
    """Steps 0-1 train on random rows to copy (their token accuracy logged), step 2 on the
    batch itself, with the report once."""
    module = module_for(tokenizer, copy_warmup=CopyWarmup(steps=2, length=6, noised=0.0))
    trainer = attach(module)
    logged = logged_by(module, monkeypatch)
    reports = []
    monkeypatch.setattr(module, "_report_warmup", lambda: reports.append(trainer.global_step))
    seen = []
    loss = module.loss
    monkeypatch.setattr(module, "loss", lambda b: seen.append(b) or loss(b))
    for trainer.global_step in range(2):
        module.training_step(batch(), 0)
        assert seen[-1]["input_ids"].shape == (2, 7)  # 6 random tokens + EOS per row
        assert "train/copy_acc" in logged
    del logged["train/copy_acc"]
    assert reports == []
    trainer.global_step = 2
    module.training_step(batch(), 0)
    assert seen[-1] is not None and torch.equal(seen[-1]["labels"], batch()["labels"])
    assert reports == [2] and "train/copy_acc" not in logged
    # without a warm-up there is nothing to report
    plain = module_for(tokenizer)
    attach(plain)
    logged_by(plain, monkeypatch)
    monkeypatch.setattr(plain, "_report_warmup", lambda: reports.append("plain"))
    plain.training_step(batch(), 0)
    assert reports == [2]


def test_warmup_rows_are_noised_from_noise_from(tokenizer):
    calls = []

    def noise(ids, rng):  # records the step's noising
        calls.append(len(ids))
        from s2s.data.noising import NoisedExample

        return NoisedExample(input_ids=ids, target_ids=ids)

    warmup = CopyWarmup(steps=10, length=4, noised=1.0, noise_from=3)
    module = module_for(tokenizer, copy_warmup=warmup, warmup_noise=noise)
    trainer = attach(module)
    for trainer.global_step in range(5):
        before = len(calls)
        module._warmup_batch(batch(), 0)
        assert (len(calls) > before) == (trainer.global_step >= 3), trainer.global_step


# -- logging steps --------------------------------------------------------------------------


def reading(module, monkeypatch, **values) -> None:
    monkeypatch.setattr(module, "_read_meter", lambda: Reading(**values))


def test_a_logging_step_logs_rates_of_the_interval(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    trainer = attach(module, log_every_n_steps=4, global_step=8)
    logged = logged_by(module, monkeypatch)
    reading(module, monkeypatch, tokens=600, positions=800, flops=3e12, seconds=2.0, loss=1.5)
    module.peak_flops = 6e12
    module._lr = 0.25
    module.on_train_batch_end(None, batch(), 0)
    assert logged == {
        "train/tokens_per_sec": 300.0,
        "train/tflops": 1.5,
        "train/mfu": 0.25,
        "train/padding_fraction": 0.25,
        "train/lr": 0.25,
    }
    assert module.progress == {"train/lr": 0.25, "train/loss": 1.5}
    logged.clear()
    module.on_train_batch_end(None, batch(), 1)  # the same step again (accumulation): nothing
    trainer.global_step = 9  # not a logging step
    module.on_train_batch_end(None, batch(), 2)
    trainer.global_step, trainer.log_every_n_steps = 12, 0  # logging off
    module.on_train_batch_end(None, batch(), 3)
    assert logged == {}


def test_a_logging_step_without_peak_positions_or_lr_logs_what_it_has(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    attach(module, log_every_n_steps=1, global_step=3)
    logged = logged_by(module, monkeypatch)
    reading(module, monkeypatch, tokens=10, positions=0, flops=0.0, seconds=0.0, loss=None)
    module.on_train_batch_end(None, batch(), 0)
    assert logged == {"train/tokens_per_sec": 10 / 1e-9, "train/tflops": 0.0}
    assert module.progress == {}


def test_the_meter_reading_adds_to_the_runs_totals(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    attach(module)
    logged_by(module, monkeypatch)
    module.training_step(batch(), 0)  # 7 source + 5 target tokens, 8 + 6 positions
    first = module._read_meter()
    assert (first.tokens, first.positions) == (12, 14)
    module.training_step(batch(), 1)
    module._read_meter()
    assert module.throughput.tokens == 24
    assert module.throughput.flops == 2 * first.flops > 0
    assert module.throughput.seconds >= first.seconds >= 0


def test_tokens_seen_counts_every_device_and_the_runs_before(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    attach(module, world_size=4)
    logged_by(module, monkeypatch)
    module.tokens_before = 1000
    module.throughput.tokens = 50
    module.training_step(batch(), 0)  # 12 pending, not yet read
    assert module.tokens_seen == 1000 + (50 + 12) * 4


# -- validation -----------------------------------------------------------------------------


def test_validation_logs_token_weighted_loss_and_accuracy(tokenizer, monkeypatch):
    module = module_for(tokenizer, eval_config=EvalConfig(num_samples=1, generation_examples=3))
    attach(module, training=False)
    logged = logged_by(module, monkeypatch)
    module.validation_step(batch(), 0)
    loss, logits = module.loss(batch())
    labels = batch()["labels"]
    right = int(((logits.argmax(-1) == labels) & (labels != P)).sum())
    assert logged["val/loss"] == pytest.approx(float(loss.detach()))
    assert logged["val/token_acc"] == pytest.approx(right / 5)
    assert logged["val/loss/batch_size"] == logged["val/token_acc/batch_size"] == 5
    # batches are kept for decoding until they hold max(num_samples, generation_examples) rows
    module.validation_step(batch(), 1)
    module.validation_step(batch(), 2)
    assert len(module._val_batches) == 2


@pytest.mark.parametrize(
    ("step", "sanity", "when"),
    [(5, False, "step 5: "), (0, True, "step 0 (before training): "), (7, True, "(sanity check)")],
)
def test_validation_end_logs_perplexity_and_a_line(
    tokenizer, monkeypatch, caplog, step, sanity, when
):
    module = module_for(tokenizer)
    metrics = {"val/loss": torch.tensor(1.25), "val/token_acc": torch.tensor(0.5)}
    attach(module, global_step=step, sanity_checking=sanity, callback_metrics=metrics)
    logged = logged_by(module, monkeypatch)
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module.on_validation_epoch_end()
    assert logged["val/ppl"] == pytest.approx(math.exp(1.25))
    assert when in caplog.text and "val/loss 1.2500, val/token_acc 0.5000" in caplog.text


def test_perplexity_is_capped_and_only_rank_zero_writes_the_line(tokenizer, monkeypatch, caplog):
    module = module_for(tokenizer)
    attach(module, callback_metrics={"val/loss": torch.tensor(80.0)}, is_global_zero=False)
    logged = logged_by(module, monkeypatch)
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module.on_validation_epoch_end()
    assert logged["val/ppl"] == pytest.approx(math.exp(50.0))
    assert caplog.records == []
    attach(module, callback_metrics={})
    logged.clear()
    module.on_validation_epoch_end()
    assert logged == {}


def test_samples_are_written_as_a_markdown_table(tokenizer):
    module = module_for(tokenizer, eval_config=EvalConfig(num_samples=2))
    texts = []
    experiment = SimpleNamespace(add_text=lambda *args: texts.append(args))
    attach(module, global_step=4, logger=SimpleNamespace(experiment=experiment))
    outputs = {
        "inputs": ["a|b", "c", "d"],
        "predictions": ["x", "y<pad>", "z"],
        "targets": list("tuv"),
    }
    module._write_samples(outputs)
    assert texts == [
        (
            "val/samples",
            "| input | prediction | target |\n|---|---|---|\n| a\\|b | x | t |\n| c | y | u |",
            4,
        )
    ]


def test_a_cell_is_one_line_of_at_most_300_characters():
    assert _cell("a<pad>|b\nc") == "a\\|b / c"
    assert _cell("x" * 400) == "x" * 300


# -- checkpoints and the optimiser ----------------------------------------------------------


def test_checkpoints_carry_the_tokens_seen_and_the_warmups_state(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    attach(module, world_size=2)
    module.throughput.tokens, module.tokens_before = 10, 5
    module._warmup_end, module._copy_scores = 40, [0.5, 0.75]
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[TOKENS_KEY] == 25
    assert checkpoint[WARMUP_KEY] == {"end": 40, "scores": [0.5, 0.75]}
    assert checkpoint["s2s"]["model_config"]["d_model"] == module.model.config.d_model
    resumed = module_for(tokenizer)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.tokens_before == 25
    assert (resumed._warmup_end, resumed._copy_scores) == (40, [0.5, 0.75])
    old = module_for(tokenizer)  # a checkpoint from before these entries
    old._warmup_end = 3
    old.on_load_checkpoint({})
    assert (old.tokens_before, old._warmup_end, old._copy_scores) == (0, None, [])


def test_the_schedule_steps_every_optimiser_step(tokenizer):
    schedule = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)  # noqa: E731
    configured = module_for(tokenizer, scheduler=schedule).configure_optimizers()
    assert isinstance(configured["optimizer"], torch.optim.AdamW)
    assert configured["lr_scheduler"]["interval"] == "step"
    assert configured["lr_scheduler"]["scheduler"].optimizer is configured["optimizer"]
    assert isinstance(module_for(tokenizer).configure_optimizers(), torch.optim.AdamW)


@pytest.mark.parametrize(
    ("clip", "plugin", "fused"),
    [
        (1.0, MixedPrecision("bf16-mixed", "cpu"), False),
        (None, MixedPrecision("bf16-mixed", "cpu"), True),
        (1.0, Precision(), True),
    ],
)
def test_fused_adamw_gives_way_only_to_clipping_under_mixed_precision(
    tokenizer, clip, plugin, fused
):
    module = module_for(tokenizer)
    attach(module, gradient_clip_val=clip, precision_plugin=plugin)
    optimizer = module.configure_optimizers()
    assert optimizer.defaults["fused"] is fused


# -- the other hooks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "dtype"), [("32-true", "float32"), ("bf16-mixed", "bfloat16")]
)
def test_training_starts_with_the_peak_of_the_devices_compute_dtype(
    tokenizer, monkeypatch, precision, dtype
):
    asked = []

    def peak(device, compute, override):
        asked.append((device.type, str(compute), override))
        return 2e12, "here"

    monkeypatch.setattr("s2s.lit_module.peak_flops", peak)
    module = module_for(tokenizer, peak_tflops=7.0)
    attach(module, precision=precision)
    module.on_train_start()
    assert asked == [("cpu", f"torch.{dtype}", 7.0)]
    assert (module.peak_flops, module.peak_source) == (2e12, "here")


def test_each_batch_starts_the_clock_and_notes_the_learning_rate(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    attach(module)
    started = []
    monkeypatch.setattr(module.meter, "start", lambda: started.append(True))
    monkeypatch.setattr(module, "lr_schedulers", lambda: None)
    module.on_train_batch_start(batch(), 0)
    assert started == [True] and module._lr is None
    schedule = SimpleNamespace(get_last_lr=lambda: [0.125, 0.5])  # the first group's
    monkeypatch.setattr(module, "lr_schedulers", lambda: schedule)
    module.on_train_batch_start(batch(), 1)
    assert module._lr == 0.125 and len(started) == 2


def test_validation_time_is_not_training_time(tokenizer, monkeypatch):
    """Validation reads the interval so far, then stops the clock; the end of training reads
    the last interval."""
    module = module_for(tokenizer)
    attach(module)
    order = []
    monkeypatch.setattr(module, "_read_meter", lambda: order.append("read"))
    monkeypatch.setattr(module.meter, "stop", lambda: order.append("stop"))
    module.on_validation_start()
    assert order == ["read", "stop"]
    module.on_train_end()
    assert order == ["read", "stop", "read"]


def test_clipping_goes_to_lightning_off_fsdp(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    attach(module)
    calls = []
    monkeypatch.setattr(module, "clip_gradients", lambda *args: calls.append(args))
    optimizer = module.configure_optimizers()
    module.configure_gradient_clipping(optimizer, 0.5, "value")
    module.configure_gradient_clipping(optimizer)
    assert calls == [(optimizer, 0.5, "value"), (optimizer, None, None)]


@pytest.mark.parametrize(("pairs", "decoded"), [(True, 5), (False, 2)])
def test_validation_decodes_as_many_examples_as_its_use_needs(tokenizer, pairs, decoded):
    """Pair data decode max(num_samples, generation_examples) examples (for BLEU); Text data
    only the samples shown. Inputs come back without padding, outputs cut at EOS."""
    settings = EvalConfig(num_samples=2, generation_examples=5, max_new_tokens=3)
    module = module_for(tokenizer, eval_config=settings, pairs=pairs)
    batches = [batch(), batch(), batch()]  # 6 rows
    out = module._decode_examples(batches)
    assert {len(v) for v in out.values()} == {decoded}
    assert out["input_ids"][0] == [5, 6, 7] and out["input_ids"][1] == [8, 9, 10, 11]
    assert all(len(ids) <= 3 and tokenizer.eos_id not in ids for ids in out["prediction_ids"])
    assert out["targets"][1] == tokenizer.decode([14, 1])  # the ignored label left out
    assert out["inputs"][0] == tokenizer.decode([5, 6, 7, 0], skip_special_tokens=False)


def test_the_probe_shows_its_first_lines_as_a_table(tokenizer, monkeypatch):
    from s2s.evaluation.masked_lines import MaskedLine

    lines = [MaskedLine("the quick brown fox", 1, 2), MaskedLine("a b|c d", 0, 1)] * 2
    monkeypatch.setattr(
        "s2s.evaluation.denoise.denoise_outputs", lambda *_, **__: ["the fox", "x", "y", "z"]
    )
    module = module_for(tokenizer, denoise_lines=lines, eval_config=EvalConfig(num_samples=2))
    texts = []
    experiment = SimpleNamespace(add_text=lambda *args: texts.append(args))
    attach(module, global_step=6, logger=SimpleNamespace(experiment=experiment))
    logged_by(module, monkeypatch)
    module._denoise_probe()
    assert len(texts) == 1 and texts[0][0] == "val/masked_lines" and texts[0][2] == 6
    rows = texts[0][1].split("\n")
    assert rows[:2] == ["| masked | output | original |", "|---|---|---|"]
    assert rows[2] == f"| {lines[0].masked} | the fox | the quick brown fox |"
    assert rows[3].endswith("| x | a b\\|c d |") and len(rows) == 4


# -- what each log is given -----------------------------------------------------------------


def one_hot_loss(module, monkeypatch, predicted: torch.Tensor) -> None:
    """`module.loss` answers a fixed loss and logits whose argmax is `predicted` (B, T)."""
    logits = torch.nn.functional.one_hot(predicted, 20).float()
    monkeypatch.setattr(module, "loss", lambda batch: (torch.tensor(0.75), logits))


def test_validation_accuracy_hand_worked_and_synced_over_devices(tokenizer, monkeypatch):
    """Labels [[12, 13, 1], [14, 1, P]]: predictions right on 12, 1 and 14 -> 3 of 5 real
    tokens. Both values are token-weighted means over every device (sync_dist); the loss is
    also on the progress bar."""
    module = module_for(tokenizer)
    attach(module, training=False)
    logged = logged_by(module, monkeypatch)
    one_hot_loss(module, monkeypatch, torch.tensor([[12, 0, 1], [14, 0, 5]]))
    module.validation_step(batch(), 0)
    assert logged["val/loss"] == 0.75 and logged["val/token_acc"] == pytest.approx(3 / 5)
    assert logged.kwargs["val/loss"] == {"batch_size": 5, "sync_dist": True, "prog_bar": True}
    assert logged.kwargs["val/token_acc"] == {"batch_size": 5, "sync_dist": True}


def test_validation_keeps_batches_until_they_hold_the_rows_to_decode(tokenizer, monkeypatch):
    settings = EvalConfig(num_samples=1, generation_examples=4)  # 2 batches of 2 rows
    module = module_for(tokenizer, eval_config=settings)
    attach(module, training=False)
    logged_by(module, monkeypatch)
    for index in range(4):
        module.validation_step(batch(), index)
    assert len(module._val_batches) == 2
    assert torch.equal(module._val_batches[1]["labels"], batch()["labels"])


def test_the_training_loss_is_logged_as_computed(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    attach(module)
    logged = logged_by(module, monkeypatch)
    loss = module.training_step(batch(), 0)
    assert logged["train/loss"] == float(loss.detach())


def test_the_first_step_is_a_logging_step(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    attach(module, log_every_n_steps=1, global_step=1)
    logged = logged_by(module, monkeypatch)
    reading(module, monkeypatch, tokens=8, positions=8, flops=1.0, seconds=1.0, loss=2.0)
    module.on_train_batch_end(None, batch(), 0)
    assert logged["train/tokens_per_sec"] == 8.0


def test_reading_the_meter_adds_the_seconds(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    interval = Reading(tokens=3, positions=4, flops=5.0, seconds=1.5, loss=None)
    monkeypatch.setattr(module.meter, "read", lambda device: interval)
    module._read_meter()
    module._read_meter()
    assert (module.throughput.tokens, module.throughput.flops) == (6, 10.0)
    assert module.throughput.seconds == 3.0


def test_copy_accuracy_of_one_real_token():
    logits = torch.nn.functional.one_hot(torch.tensor([[4, 0]]), 6).float()
    assert float(copy_accuracy(logits, torch.tensor([[4, P]]))) == 1.0


def test_warmup_reports_are_worded_for_the_log(tokenizer, caplog):
    module = module_for(tokenizer, copy_warmup=CopyWarmup(steps=30, until=0.8))
    module._copy_scores, module._warmup_end = [0.7, 0.9], 7
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module._report_warmup()
        module._copy_scores, module._warmup_end, module._warmup_reported = [0.7], None, False
        module._report_warmup()
    assert [r.getMessage() for r in caplog.records] == [
        "copy warm-up done after 7 steps: copies 80% of its tokens; training on the data from "
        "now on",
        "copy warm-up: 30 steps (copy_warmup.steps) and the model copies only 70% of its tokens "
        "(wanted: 80%): it may not learn to copy its input; more copy_warmup.steps, another seed "
        "or a larger model.init_std may",
    ]


# -- the end of a validation: decoding, scores, samples, pictures, the probe -----------------


def validation_end(tokenizer, monkeypatch, *, pairs=True, step=3, **state):
    """A module after a validation pass of 3 batches, with its logs and a writer recording
    text and figures."""
    settings = EvalConfig(num_samples=2, generation_examples=3, max_new_tokens=3)
    module = module_for(tokenizer, eval_config=settings, pairs=pairs, **state.pop("module", {}))
    written = []
    experiment = SimpleNamespace(
        add_text=lambda tag, text, step: written.append(("text", tag, step)),
        # figures are pyplot-free: nothing for TensorBoard to close (close=False)
        add_figure=lambda tag, figure, step, close: written.append(
            ("figure", tag, step) if (figure == "a figure" and close is False) else (figure, close)
        ),
    )
    metrics = {"val/loss": torch.tensor(1.0), "val/token_acc": torch.tensor(0.5)}
    defaults = {"callback_metrics": metrics, "logger": SimpleNamespace(experiment=experiment)}
    attach(module, global_step=step, **(defaults | state))
    module._val_batches = [batch(), batch(), batch()]
    monkeypatch.setattr("s2s.evaluation.attention_maps.attention_figure", lambda *args: "a figure")
    return module, logged_by(module, monkeypatch), written


def test_pairs_are_scored_on_the_decoded_examples(tokenizer, monkeypatch):
    """The asked metrics of the first generation_examples outputs against their targets,
    logged from rank zero; the samples table and the cross-attention picture written."""
    from s2s.metrics import corpus_scores

    module, logged, written = validation_end(tokenizer, monkeypatch)
    outputs = module._decode_examples([batch(), batch()])
    expected = corpus_scores(outputs["predictions"][:3], outputs["targets"][:3])
    module.on_validation_epoch_end()
    for key, score in expected.items():
        assert logged[f"val/{key}"] == pytest.approx(score), key
        assert logged.kwargs[f"val/{key}"] == {"rank_zero_only": True}
    assert logged.kwargs["val/ppl"] == {"sync_dist": True}
    assert written == [("text", "val/samples", 3), ("figure", "val/cross_attention/0", 3)]
    assert module._val_batches == []


def test_pair_scores_are_of_the_first_examples_against_their_targets(tokenizer, monkeypatch):
    """Outputs with partial overlap, so the scores depend on which is the output and which
    the reference (BLEU's brevity penalty, chrF's recall weight) and on how many are scored:
    4 decoded for the samples, the first 2 scored, bleu and chrf only."""
    from s2s.metrics import corpus_scores

    module, logged, _ = validation_end(tokenizer, monkeypatch)
    module.eval_config = EvalConfig(num_samples=4, generation_examples=2, metrics=["bleu", "chrf"])
    outputs = {
        "inputs": ["a"] * 4,
        "predictions": ["the cat sat", "a dog ran far away", "no", "no"],
        "targets": ["the cat sat on the mat", "a dog ran far", "yes", "yes"],
        "input_ids": [[5]] * 4,
        "prediction_ids": [[6]] * 4,
    }
    monkeypatch.setattr(module, "_decode_examples", lambda batches: outputs)
    module.on_validation_epoch_end()
    expected = corpus_scores(outputs["predictions"][:2], outputs["targets"][:2], ["bleu", "chrf"])
    swapped = corpus_scores(outputs["targets"][:2], outputs["predictions"][:2], ["bleu", "chrf"])
    every = corpus_scores(outputs["predictions"], outputs["targets"], ["bleu", "chrf"])
    assert expected != swapped and expected != every and expected["bleu"] > 0
    assert {k: logged[k] for k in logged if k.startswith("val/") and k != "val/ppl"} == {
        f"val/{key}": pytest.approx(score) for key, score in expected.items()
    }


def test_text_data_get_no_pair_scores(tokenizer, monkeypatch):
    module, logged, written = validation_end(tokenizer, monkeypatch, pairs=False)
    module.on_validation_epoch_end()
    assert "val/bleu" not in logged and written[0] == ("text", "val/samples", 3)


def test_the_sanity_check_decodes_nothing(tokenizer, monkeypatch):
    module, logged, written = validation_end(tokenizer, monkeypatch, sanity_checking=True)
    module.on_validation_epoch_end()
    assert written == [] and "val/bleu" not in logged and "val/ppl" in logged


def test_only_rank_zero_runs_the_probe(tokenizer, monkeypatch):
    from s2s.evaluation.masked_lines import MaskedLine

    lines = [MaskedLine("the quick brown fox", 1, 2)]
    for zero in (True, False):
        module, _, _ = validation_end(
            tokenizer,
            monkeypatch,
            pairs=False,
            is_global_zero=zero,
            module={"denoise_lines": lines},
        )
        probes = []
        monkeypatch.setattr(module, "_denoise_probe", lambda probes=probes: probes.append(1))
        module.on_validation_epoch_end()
        assert probes == ([1] if zero else [])
    module, _, _ = validation_end(tokenizer, monkeypatch, pairs=False)  # no masked lines
    monkeypatch.setattr(module, "_denoise_probe", lambda: probes.append(2))
    module.on_validation_epoch_end()
    assert 2 not in probes


def test_under_fsdp_validation_decodes_nothing_and_says_so_once(tokenizer, monkeypatch, caplog):
    module, logged, written = validation_end(tokenizer, monkeypatch)
    monkeypatch.setattr("s2s.lit_module.fsdp_root", lambda model: model)  # a root FSDP unit
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module.on_validation_epoch_end()
        module._val_batches = [batch()]
        module.on_validation_epoch_end()
    assert written == [] and "val/bleu" not in logged
    said = [r.getMessage() for r in caplog.records if "trainer=fsdp" in r.getMessage()]
    assert said == [
        "trainer=fsdp: validation computes val/loss, val/ppl and val/token_acc only (no "
        "samples, BLEU / chrF / ROUGE, attention maps or masked-line probe: the weights are "
        "sharded); evaluate the saved checkpoint for those"
    ]
    module._trainer.is_global_zero = False
    assert module._can_decode() is False


@pytest.mark.parametrize(
    ("step", "sanity", "line"),
    [
        (7, True, "step 7 (sanity check): val/loss 1.2500, val/token_acc nan"),
        (0, True, "step 0 (before training): val/loss 1.2500, val/token_acc nan"),
        (9, False, "step 9: val/loss 1.2500, val/token_acc nan"),
    ],
)
def test_the_validation_line_word_for_word(tokenizer, monkeypatch, caplog, step, sanity, line):
    module = module_for(tokenizer)
    metrics = {"val/loss": torch.tensor(1.25)}  # no token accuracy: nan
    attach(module, global_step=step, sanity_checking=sanity, callback_metrics=metrics)
    logged_by(module, monkeypatch)
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module.on_validation_epoch_end()
    assert [r.getMessage() for r in caplog.records] == [line]


def test_attention_pictures_skip_empty_examples_and_stop_without_matplotlib(
    tokenizer, monkeypatch, caplog
):
    from s2s.evaluation.attention_maps import MissingMatplotlib

    module, _, written = validation_end(tokenizer, monkeypatch)
    module.eval_config = EvalConfig(attention_maps=4)
    made = []

    def figure(model, tok, source, output):
        assert model is module.model and tok is tokenizer
        made.append((source, output))
        return "a figure"

    monkeypatch.setattr("s2s.evaluation.attention_maps.attention_figure", figure)
    outputs = {
        "input_ids": [[5, 6], [], [7], [8], [12]],
        "prediction_ids": [[9], [9], [], [10, 11], [13]],
    }
    module._write_attention_maps(outputs)
    assert made == [([5, 6], [9]), ([8], [10, 11])]  # the 2nd and 3rd empty, the 5th past 4
    assert written == [
        ("figure", "val/cross_attention/0", 3),
        ("figure", "val/cross_attention/3", 3),
    ]
    made.clear()

    def missing(*args):
        raise MissingMatplotlib("matplotlib is not installed")

    monkeypatch.setattr("s2s.evaluation.attention_maps.attention_figure", missing)
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module._write_attention_maps(outputs)
    assert module.eval_config.attention_maps == 0
    assert caplog.records[0].getMessage() == (
        "no cross-attention pictures in TensorBoard: matplotlib is not installed"
    )
    # off rank zero, or with no figure writer, or none asked for: nothing drawn
    module.eval_config = EvalConfig(attention_maps=3)
    monkeypatch.setattr(
        "s2s.evaluation.attention_maps.attention_figure", lambda *args: made.append(1)
    )
    module._trainer.logger = None  # no logger at all
    module._write_attention_maps(outputs)
    module._trainer.logger = SimpleNamespace(experiment=SimpleNamespace(add_figure=print))
    module._trainer.is_global_zero = False
    module._write_attention_maps(outputs)
    module._trainer.is_global_zero = True
    module._trainer.logger = SimpleNamespace(experiment=SimpleNamespace())
    module._write_attention_maps(outputs)
    module.eval_config = EvalConfig(attention_maps=0)
    module._trainer.logger = SimpleNamespace(experiment=SimpleNamespace(add_figure=print))
    module._write_attention_maps(outputs)
    assert made == []


def test_samples_need_a_text_writer_and_a_count(tokenizer):
    outputs = {"inputs": ["a"], "predictions": ["b"], "targets": ["c"]}
    module = module_for(tokenizer, eval_config=EvalConfig(num_samples=2))
    attach(module, logger=None)
    module._write_samples(outputs)  # no logger: nothing, no error
    module._trainer.logger = SimpleNamespace(experiment=SimpleNamespace())  # no add_text
    module._write_samples(outputs)
    texts = []
    experiment = SimpleNamespace(add_text=lambda *args: texts.append(args))
    module._trainer.logger = SimpleNamespace(experiment=experiment)
    module.eval_config = EvalConfig(num_samples=0)
    module._write_samples(outputs)
    assert texts == []


def test_the_probe_scores_this_model_with_the_framings_bos(tokenizer, monkeypatch, caplog):
    from s2s.checkpoint import Framing
    from s2s.evaluation.masked_lines import DenoiseScores, MaskedLine

    lines = [MaskedLine("the quick brown fox", 1, 2)]
    asked = []

    def evaluate(model, tok, probe_lines, *, add_bos):
        asked.append((model, tok, probe_lines, add_bos))
        return DenoiseScores(copy_rate=0.5, fill_rate=0.25, chrf=61.04, lines=1), ["the fox"]

    monkeypatch.setattr("s2s.evaluation.denoise.evaluate_denoising", evaluate)
    for framing, bos in (
        (None, False),
        (Framing(add_bos=False), False),
        (Framing(add_bos=True), True),
    ):
        module = module_for(
            tokenizer, denoise_lines=lines, framing=framing, eval_config=EvalConfig(num_samples=0)
        )
        texts = []
        experiment = SimpleNamespace(add_text=lambda *args, texts=texts: texts.append(args))
        attach(module, global_step=12, logger=SimpleNamespace(experiment=experiment))
        logged = logged_by(module, monkeypatch)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
            module._denoise_probe()
        assert asked[-1] == (module.model, tokenizer, lines, bos)
        assert texts == []  # num_samples=0: no table
    assert {k: logged.kwargs[k] for k in ("val/copy_rate", "val/fill_rate", "val/chrf")} == {
        k: {"rank_zero_only": True} for k in ("val/copy_rate", "val/fill_rate", "val/chrf")
    }
    assert [r.getMessage() for r in caplog.records] == [
        "step 12: masked lines: copy 50.0%, fill 25.0%, chrF 61.0"
    ]


# -- optimiser, clipping and checkpoints under FSDP and the rest ------------------------------


class Root:
    """A stand-in for the root FSDP unit: it clips the norm over every rank's shard itself."""

    def __init__(self, model) -> None:
        self.model = model
        self.clipped: list[float] = []

    def clip_grad_norm_(self, value: float) -> None:
        self.clipped.append(value)


def test_under_fsdp_norm_clipping_is_fsdps_own(tokenizer, monkeypatch):
    module = module_for(tokenizer)
    root = Root(module)
    attach(module, model=root)
    monkeypatch.setattr("s2s.lit_module.fsdp_root", lambda model: model if model is root else None)
    lightning = []
    monkeypatch.setattr(module, "clip_gradients", lambda *args: lightning.append(args))
    module.configure_gradient_clipping("opt", 0.5, None)  # the default algorithm: norm
    module.configure_gradient_clipping("opt", 0.25, "norm")
    assert root.clipped == [0.5, 0.25] and lightning == []
    module.configure_gradient_clipping("opt", 0.5, "value")
    module.configure_gradient_clipping("opt", None, None)  # no clipping asked
    assert lightning == [("opt", 0.5, "value"), ("opt", None, None)]
    assert root.clipped == [0.5, 0.25]


def test_under_fsdp_the_optimiser_sees_the_root_unit(tokenizer, monkeypatch):
    seen = []

    def factory(model, **kwargs):
        seen.append(model)
        return torch.optim.SGD(module.model.parameters(), lr=0.1)

    module = Seq2SeqLitModule(tiny_model(tokenizer.vocab_size), tokenizer, optimizer=factory)
    root = Root(module)
    attach(module, model=root)
    monkeypatch.setattr("s2s.lit_module.fsdp_root", lambda model: model if model is root else None)
    module.configure_optimizers()
    attach(module)  # not FSDP: the model itself
    module.configure_optimizers()
    assert seen == [root, module.model]


def test_an_optimiser_without_amp_scaling_is_built_once(tokenizer):
    """Only an optimizer that unscales gradients itself (fused AdamW) is rebuilt for clipping
    under mixed precision; plain SGD is kept as the factory made it."""
    calls = []

    def factory(model, **kwargs):
        calls.append(kwargs)
        return torch.optim.SGD(model.parameters(), lr=0.1)

    module = Seq2SeqLitModule(tiny_model(tokenizer.vocab_size), tokenizer, optimizer=factory)
    attach(module, gradient_clip_val=1.0, precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    module.configure_optimizers()
    assert calls == [{}]


def test_the_fused_kernel_gives_way_with_a_message(tokenizer, caplog):
    module = module_for(tokenizer)
    attach(module, gradient_clip_val=1.0, precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    with caplog.at_level(logging.INFO, logger="s2s.lit_module"):
        module.configure_optimizers()
    assert [r.getMessage() for r in caplog.records] == [
        "mixed precision with gradient clipping: AdamW without its fused kernel"
    ]
    assert module_for(tokenizer).configure_optimizers().defaults["fused"] is True  # no trainer


def test_checkpoints_record_the_framing(tokenizer):
    from s2s.checkpoint import Framing

    module = module_for(tokenizer, framing=Framing(max_source_length=64, add_bos=True))
    attach(module)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["s2s"]["framing"]["max_source_length"] == 64
    assert checkpoint["s2s"]["framing"]["add_bos"] is True


def test_the_constructor_keeps_what_it_is_given(tokenizer):
    from s2s.data.synthetic import copyable_ids

    module = module_for(tokenizer)
    assert module.pairs is False and module.seed == 0 and module.framing is None
    assert (module.tokens_before, module.peak_source, module._said_no_decoding) == (0, "", False)
    assert module._forward is module.model
    limited = module_for(tokenizer, copy_warmup=CopyWarmup(steps=1, vocab=5))
    assert limited._copyable.tolist() == copyable_ids(tokenizer, 5).tolist()
    assert len(limited._copyable) == 5
    compiled = module_for(tokenizer, compile=True)
    assert compiled._forward is not compiled.model
    assert compiled._forward._orig_mod is compiled.model  # torch.compile's wrapper
    assert list(compiled.state_dict()) == list(module.state_dict())  # plain model.* keys
