"""The end-of-run summary and report.md: config diff, time, steps, tokens, speed, metrics."""

from __future__ import annotations

import re

import pytest
from helpers.train import compose_train

from s2s.pipeline import train
from s2s.report import ValidationHistory, config_diff


def test_report_after_a_tiny_run(tmp_path, capsys, cfg_train):
    result = train(cfg_train(kind="pairs"))
    run = tmp_path / "run"
    report = (run / "report.md").read_text()
    assert result["report"] == str(run / "report.md")
    for section in ("# Run report", "## Config diff from the defaults", "## Validation"):
        assert section in report, section
    assert re.search(r"wall time: +\d+m \d\ds \(training batches \d+m \d\ds\)", report)
    assert "steps:           6 (optimiser steps)" in report
    tokens = int(re.search(r"tokens seen: +([\d,]+)", report).group(1).replace(",", ""))
    assert tokens > 6 * 4 * 2  # 6 steps of 4 pairs, source and target
    assert re.search(r"throughput: +[\d,]+ tokens/s, [\d.e+-]+ TFLOP/s per device, MFU", report)
    assert re.search(rf"last checkpoint +{run / 'checkpoints' / 'last.ckpt'}", report)
    assert re.search(rf"csv: +{run / 'csv' / 'metrics.csv'}", report)
    # the overrides, as differences from conf/train.yaml
    assert "| `model.d_model` | `256` | `32` |" in report
    assert "| `trainer.max_steps` | `750` | `6` |" in report
    assert "`optimizer.lr`" not in report  # not overridden
    # two validations (steps 3 and 6): best and final of each metric
    rows = dict(re.findall(r"^\| (val/\w+) \| (.*) \|$", report, flags=re.M))
    assert {"val/loss", "val/bleu", "val/chrf", "val/rouge1", "val/rougeLsum"} <= set(rows)
    best, step, final = rows["val/loss"].split(" | ")
    assert step in ("3", "6") and float(best) <= float(final)
    assert f"{float(final):.4g}" == f"{result['metrics']['val/loss']:.4g}"
    printed = capsys.readouterr().out
    assert "tokens seen:" in printed and re.search(rf"report: +{run / 'report.md'}", printed)


def test_the_default_config_has_no_diff(tmp_path):
    assert config_diff(compose_train([])) == []
    diff = config_diff(compose_train(["model=t5_small", "seed=7"]))
    assert ("seed", 1234, 7) in diff and ("model.d_model", 256, 512) in diff


def test_best_is_lowest_loss_and_highest_score():
    history = ValidationHistory()
    history.history = [
        (10, {"val/loss": 3.0, "val/bleu": 20.0}),
        (20, {"val/loss": 2.0, "val/bleu": 25.0}),
        (30, {"val/loss": 2.5, "val/bleu": 22.0}),
    ]
    assert history.best_and_final() == {
        "val/bleu": (25.0, 20, 22.0),
        "val/loss": (2.0, 20, 2.5),
    }


@pytest.mark.parametrize("key", ["val/ppl", "val/loss"])
def test_perplexity_and_loss_are_lower_is_better(key):
    history = ValidationHistory()
    history.history = [(1, {key: 5.0}), (2, {key: 4.0})]
    assert history.best_and_final()[key] == (4.0, 2, 4.0)
