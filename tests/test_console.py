"""A first run prints what a user acts on, not noise: no advertisement for Lightning's cloud
logger, no "Epoch 0/-2" progress bar, no model-summary table naming the kernel twin with a
FLOPs column of zeros, no absl line after every validation on pair data."""

from __future__ import annotations

import pytest
from helpers.train import overrides_for, run_cli

NOISE = ("litlogger", "Epoch 0/-", "Seq2SeqTransformerKernel", "Total FLOPs", "default tokenizer")


@pytest.mark.slow  # spawns train.py
@pytest.mark.parametrize("kind", ["text", "pairs"])
def test_first_run_console_has_no_noise(tiny_data, tmp_path, kind):
    args = [
        *(
            o
            for o in overrides_for(tiny_data, tmp_path, kind)
            if o != "callbacks.progress_bar=null"
        ),
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
    ]
    done = run_cli(args, cwd=tmp_path)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    for noise in NOISE:
        assert noise not in console, f"{noise!r} in the console output:\n{console[-3000:]}"
    # what stays: the model line, the progress bar by step, validation, the summary
    assert "model: Seq2SeqTransformer, " in console
    assert "step 4/4" in console
    assert "val/loss" in console and "run directory:" in console
    if kind == "pairs":
        assert "val/rouge1" in console  # ROUGE ran (the absl line came from it)
