"""Training end to end on tiny data: smoke runs, configs, resume, fine-tuning, DDP, sweeps."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.recording import read_records
from helpers.train import REPO, compose_train, overrides_for, record, run_cli, run_ddp_records

from s2s.checkpoint import Framing, read_checkpoint
from s2s.pipeline import train
from s2s.tokenizer import Tokenizer
from s2s.trainer import trainer_arguments


def test_debug_smoke_pretraining(tmp_path, cfg_train):
    cfg = cfg_train("trainer.fast_dev_run=2")
    metrics = {k: float(v) for k, v in train(cfg)["metrics"].items()}
    # an untrained model predicts about uniformly over the 600-token vocabulary: a mean
    # cross-entropy near ln(600) = 6.4 nats, on training and validation batches alike (7.1
    # here: the initial logits' spread adds about their variance / 2)
    for key in ("train/loss", "val/loss"):
        assert abs(metrics[key] - math.log(600)) < 1.0, (key, metrics[key])
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)
    assert 0 <= metrics["val/token_acc"] < 0.2 and 0 <= metrics["train/padding_fraction"] < 1
    # the overrides reached the files generate.py builds the model from
    config = json.loads((tmp_path / "run" / "model_config.json").read_text())
    assert (config["d_model"], config["n_encoder_layers"], config["vocab_size"]) == (32, 1, 600)
    assert Tokenizer.load(tmp_path / "run" / "tokenizer.json").vocab_size == 600


@pytest.mark.slow  # a whole training run
def test_bf16_mixed_precision_is_a_trainer_override(cfg_train):
    cfg = cfg_train("trainer.fast_dev_run=2", "trainer.precision=bf16-mixed")
    result = train(cfg)
    assert 0 < result["metrics"]["train/loss"] < 20


def test_pretraining_run_writes_checkpoints_and_logs(tmp_path, cfg_train):
    result = train(cfg_train())
    metrics = result["metrics"]
    for key in ("val/loss", "val/ppl", "val/token_acc", "train/loss", "train/lr"):
        assert key in metrics, key
    # Text validation data: the masked-line probe ran (s2s.evaluation)
    for key in ("val/copy_rate", "val/fill_rate", "val/chrf"):
        assert 0 <= metrics[key] <= (100 if key == "val/chrf" else 1), key
    assert Path(result["last_checkpoint"]).name == "last.ckpt"
    # how training framed inputs, for generate.py (data.max_source_length=48, no <s>)
    assert read_checkpoint(result["last_checkpoint"]).framing == Framing(48, False)
    assert Path(result["best_checkpoint"]).name.startswith("best-step")
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/tokens_per_sec" in header and "train/padding_fraction" in header


@pytest.mark.slow  # a whole training run
def test_finetuning_from_a_pretrained_checkpoint(tmp_path, cfg_train):
    pretrained = train(cfg_train(out=tmp_path / "pre"))
    cfg = cfg_train(
        "experiment=finetune_bible_modern",
        f"init_from={pretrained['last_checkpoint']}",
        kind="pairs",
        out=tmp_path / "fine",
    )
    result = train(cfg)
    assert "val/bleu" in result["metrics"] and "val/chrf" in result["metrics"]
    # The fine-tuned run uses the pre-trained tokenizer, not a new one trained on the pairs.
    pre_tok = (tmp_path / "pre" / "run" / "tokenizer.json").read_text()
    assert (tmp_path / "fine" / "run" / "tokenizer.json").read_text() == pre_tok


@pytest.mark.slow  # a whole training run
def test_init_from_a_different_architecture_is_refused(tmp_path, cfg_train):
    pretrained = train(cfg_train(out=tmp_path / "pre"))
    cfg = cfg_train(
        "model.d_model=64", f"init_from={pretrained['last_checkpoint']}", out=tmp_path / "fine"
    )
    with pytest.raises(ValueError, match=r"model\.d_model=64 but the checkpoint has 32"):
        train(cfg)


def test_max_time_stops_a_run(cfg_train, monkeypatch):
    # trainer.max_time is a key of the trainer group (no `+`). Each step here takes at least
    # 0.25 s, so the 40 steps asked for cannot finish within the 1-second budget: the run
    # ends early (Lightning's Timer checks after every batch), not after its 40 steps.
    from s2s.lit_module import Seq2SeqLitModule

    steps = []
    step = Seq2SeqLitModule.training_step

    def slow_step(self, batch, batch_idx):
        steps.append(self.global_step)
        time.sleep(0.25)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(Seq2SeqLitModule, "training_step", slow_step)
    cfg = cfg_train(
        "trainer.max_steps=40",
        "trainer.max_time=00:00:00:01",
        "trainer.val_check_interval=100000",
        "eval.num_samples=0",
        "eval.denoise_lines=0",
    )
    train(cfg)
    assert 0 < len(steps) < 40


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_time=10", "trainer.max_time=10 must be a positive duration"),
        ("trainer.max_time=2h", "trainer.max_time='2h' must be"),
        ("trainer.max_time={weeks:0}", "trainer.max_time={'weeks': 0} must be"),
        ("trainer.max_time={hour:1}", "trainer.max_time={'hour': 1} must be"),
        ("+trainer.accumulate_grad_batches=2", "accumulate_grad_batches is derived"),
    ],
)
def test_bad_trainer_keys_are_refused_naming_the_key(override, message, tmp_path):
    cfg = compose_train([override, f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer_arguments(cfg.trainer)


def test_common_trainer_keys_need_no_plus(tmp_path):
    overrides = ["trainer.max_time={hours:1,minutes:30}", "trainer.min_steps=5"]
    cfg = compose_train([*overrides, f"paths.output_dir={tmp_path}"])
    arguments = trainer_arguments(cfg.trainer)
    assert arguments["max_time"] == {"hours": 1, "minutes": 30} and arguments["min_steps"] == 5
    # every key of the group is a Trainer argument (a typo would reach Lightning as a TypeError)
    assert set(arguments) - {"_target_"} <= set(inspect.signature(L.Trainer).parameters)


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (REPO / "conf/experiment").glob("*.yaml"))
)
def test_every_experiment_composes(experiment):
    cfg = compose_train([f"experiment={experiment}"])
    assert cfg.task_name == experiment
    assert cfg.model.d_model > 0
    if "data.train_path" in cfg.required:  # a user's model and files (finetune_hf)
        assert cfg.data.train_path is None and cfg.copy_warmup.steps == 0
    elif cfg.data.train_path is None:  # streams a prepared directory, given on the command line
        assert cfg.data.train_dir is None and cfg.data.objective == "t5"
    else:
        assert cfg.data.train_dir is None


@pytest.mark.slow  # a whole training run
def test_resume_continues_exactly(tiny_data, tmp_path):
    common = [
        *overrides_for(tiny_data, tmp_path),
        "trainer.max_steps=10",
        "scheduler.total_steps=10",
        "callbacks.last_checkpoint.every_n_train_steps=4",
        "trainer.val_check_interval=5",
    ]
    full = tmp_path / "full.json"
    train(compose_train([*common, *record(full), f"paths.output_dir={tmp_path / 'a'}"]))
    # An interrupted run: stops after step 4 (its last checkpoint), then resumes from it.
    part = tmp_path / "part.json"
    first = [*common, *record(part), f"paths.output_dir={tmp_path / 'b'}"]
    train(compose_train([*first, "trainer.max_steps=4"]))
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    train(compose_train([*first, f"ckpt_path={last}"]))
    uninterrupted = {r["step"]: r for r in read_records(full)}
    resumed = {r["step"]: r for r in read_records(part)}
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, 11))
    for step in range(1, 11):  # same data, same dropout, same optimiser state: same losses
        assert resumed[step]["rows"] == uninterrupted[step]["rows"], step
        assert resumed[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-5), step
    # the tokens seen so far carry over the resume (the run report's "tokens seen")
    a, b = (read_checkpoint(tmp_path / d / "checkpoints" / "last.ckpt").raw for d in "ab")
    assert a["global_step"] == b["global_step"]
    assert a["s2s_tokens_seen"] == b["s2s_tokens_seen"] > 0


@pytest.mark.slow  # a long training loop
def test_every_epoch_reshuffles_and_renoises_the_same_texts(tiny_data, tmp_path):
    path = tmp_path / "epochs.json"
    overrides = [*overrides_for(tiny_data, tmp_path), *record(path), "data.batch_size=8"]
    cfg = compose_train(
        [*overrides, "trainer.max_steps=-1", "trainer.max_epochs=2", "scheduler=constant"]
    )
    train(cfg)
    steps = read_records(path)
    by_epoch = [[s for s in steps if s["epoch"] == e] for e in (0, 1)]
    assert by_epoch[0] and len(by_epoch[0]) == len(by_epoch[1])
    rows = [[r for s in epoch for r in s["rows"]] for epoch in by_epoch]
    inputs = [{r for s in epoch for r in s["inputs"]} for epoch in by_epoch]
    assert sorted(rows[0]) == sorted(rows[1])  # the same texts (targets) every epoch...
    assert rows[0] != rows[1]  # ...in another order...
    assert not inputs[0] & inputs[1]  # ...with fresh noise on every one of them


@pytest.mark.slow  # a whole training run
def test_same_seed_same_losses_other_seed_other_losses(tiny_data, tmp_path):
    runs = {}
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        path = tmp_path / f"{name}.json"
        overrides = [*overrides_for(tiny_data, tmp_path / name), *record(path), f"seed={seed}"]
        train(compose_train([*overrides, "trainer.max_steps=3"]))
        runs[name] = [r["loss"] for r in read_records(path)]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


@pytest.mark.slow  # spawns processes
def test_ddp_cpu_runs_two_ranks_on_different_data(tiny_data, tmp_path):
    ranks = run_ddp_records(overrides_for(tiny_data, tmp_path), tmp_path)
    assert [len(r) for r in ranks] == [3, 3]
    rows = [{row for step in r for row in step["rows"]} for r in ranks]
    assert rows[0] and rows[1] and not rows[0] & rows[1]
    # The global batch (4) is split: 2 rows per rank per step, no accumulation.
    assert all(len(step["rows"]) == 2 for r in ranks for step in r)


@pytest.mark.slow  # spawns processes
def test_multirun_makes_one_run_per_value(tiny_data, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        *[o for o in overrides_for(tiny_data, tmp_path) if not o.startswith("paths.output_dir")],
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "optimizer.lr=1e-3,2e-3",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert runs == ["0", "1"]
    for run in runs:
        assert (sweep_dir / run / "checkpoints" / "last.ckpt").is_file()
        assert "optimizer.lr" in (sweep_dir / run / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=huge", "model/huge"),
        ("optimizer.lr=-1", "error: optimizer.lr=-1 must be > 0"),
        ("data.train_path=/nonexistent.json", "error: /nonexistent.json: file not found"),
    ],
)
@pytest.mark.slow  # spawns processes
def test_bad_overrides_fail_with_one_clear_line(tiny_data, tmp_path, override, message):
    done = run_cli([*overrides_for(tiny_data, tmp_path), override], cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # spawns processes
def test_sigkill_loses_only_steps_since_the_last_checkpoint(tiny_data, tmp_path, cfg_train):
    import signal
    import time

    from s2s.checkpoint import read_checkpoint

    path = tmp_path / "killed.json"
    run = tmp_path / "run"
    args = [
        *overrides_for(tiny_data, tmp_path),
        *record(path),
        "trainer.max_steps=100000",
        "trainer.val_check_interval=1000",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        log = path.with_name(f"{path.stem}.rank0.jsonl")
        while time.monotonic() < deadline:  # let it write a few checkpoints, then kill it
            if log.exists() and len(log.read_text().splitlines()) >= 9:
                break
            time.sleep(0.05)
        else:
            pytest.fail("training did not reach step 9")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    # Only last.ckpt is a checkpoint; a kill during a write may leave last.ckpt.tmp-<pid>
    # (never a .ckpt), which the next save removes.
    assert [f for f in files if f.endswith(".ckpt")] == ["last.ckpt"]
    assert all(f.startswith("last.ckpt.tmp-") for f in files if f != "last.ckpt")
    saved = read_checkpoint(run / "checkpoints" / "last.ckpt")  # complete and readable
    saved_step = saved.raw["global_step"]
    done = len(log.read_text().splitlines())
    assert saved_step % 2 == 0 and done - 2 <= saved_step <= done
    # ...and the run resumes from it.
    resumed = tmp_path / "resumed.json"
    cfg = cfg_train(
        *record(resumed),
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"trainer.max_steps={saved_step + 2}",
        "scheduler.total_steps=100000",
        out=tmp_path / "b",
    )
    train(cfg)
    assert [r["step"] for r in read_records(resumed)] == [saved_step + 1, saved_step + 2]


def test_label_smoothing_is_the_loss_setting(tokenizer):
    """loss.label_smoothing smooths the training and validation cross-entropy exactly as
    torch's does; values outside [0, 1) and non-numbers are refused by name."""
    from helpers.generation import tiny_model

    from s2s.lit_module import Seq2SeqLitModule
    from s2s.optim import adamw
    from s2s.settings import number

    model = tiny_model(tokenizer.vocab_size)
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 1]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "labels": torch.tensor([[8, 9, 1, -100]]),
    }
    module = Seq2SeqLitModule(model, tokenizer, optimizer=adamw, label_smoothing=0.2)
    loss, logits = module.loss(batch)
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, label_smoothing=0.2
    )
    plain = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, plain)  # the setting changes the loss
    with pytest.raises(ValueError, match=r"loss\.label_smoothing=1\.0 must be in \[0, 1\)"):
        Seq2SeqLitModule(model, tokenizer, optimizer=adamw, label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"loss\.label_smoothing='abc' must be a number"):
        number("loss.label_smoothing", "abc")
