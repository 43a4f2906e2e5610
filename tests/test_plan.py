"""s2s.plan: parameter counts, FLOPs, states under DDP / FSDP, the largest micro-batch, the CLI.

The activation memory against measured CPU steps is tests/test_plan_memory.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.train import REPO, compose_train

from s2s.config import ModelConfig
from s2s.model import Seq2SeqTransformer
from s2s.plan import count_parameters, make_plan
from s2s.plan.devices import device, parse_memory
from s2s.plan.job import job_from_config
from s2s.plan.planner import max_micro_batch
from s2s.plan.states import Sizes, states
from s2s.throughput import train_flops

PRESETS = sorted(path.stem for path in (REPO / "conf" / "model").glob("*.yaml"))


def _plan_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s2s.plan", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_parameters_equal_the_models_own_for_every_preset(preset):
    job = job_from_config(compose_train([f"model={preset}"]))
    counted = count_parameters(job.model)  # on the meta device
    small = dataclasses.replace(job.model, vocab_size=512, max_positions=64)
    model = Seq2SeqTransformer(small)  # a real model at a small vocabulary: same layers
    real = sum(p.numel() for p in model.parameters())
    embedding_rows = job.model.vocab_size - 512
    per_row = job.model.d_model * (1 if job.model.tie_embeddings else 2)
    learned = 2 * (job.model.max_positions - 64) * job.model.d_model
    learned *= job.model.positions == "learned"
    assert counted.total == real + embedding_rows * per_row + learned
    assert counted.encoder_layer == sum(p.numel() for p in model.encoder.layers[0].parameters())
    assert counted.decoder_layer == sum(p.numel() for p in model.decoder.layers[0].parameters())


def test_t5_base_c4_counts_t5_v1_1_base_on_an_h200():
    done = _plan_cli("experiment=t5_base_c4", "--device", "h200", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["parameters"] == 247_577_856  # HF google/t5-v1_1-base
    assert plan["tokens_per_step"] == 128 * (512 + 114)
    memory = plan["memory_bytes"]
    parts = ("weights", "gradients", "optimizer", "activations")
    assert memory["total"] == sum(memory[k] for k in parts)
    assert plan["max_micro_batch"] >= 1 and plan["step_seconds"] > 0


def test_flops_equal_s2s_throughput():
    job = job_from_config(compose_train(["experiment=t5_base_c4"]))
    plan = make_plan(job, device("h100-80gb"), 0.4)
    expected = train_flops(job.model, 128, 512, 114)
    assert plan.flops_per_step == expected
    assert plan.step_seconds == pytest.approx(expected / (989.5e12 * 0.4))


def test_largest_micro_batch_grows_with_device_memory():
    job = job_from_config(compose_train(["experiment=t5_base_c4"]))
    parameters = count_parameters(job.model)
    found = [
        max_micro_batch(job, device("h100-80gb", f"{gib}GiB"), parameters)
        for gib in (4, 8, 16, 32, 64, 128, 256)
    ]
    assert found == sorted(found) and found[0] < found[-1] == 128
    # and it is the largest divisor of 128 whose total fits
    plan = make_plan(job, device("h100-80gb", "16GiB"), 0.4)
    assert plan.max_micro_batch == found[2]


def test_fsdp_divides_the_states_by_the_device_count():
    sizes = Sizes(total=8_000_000, root=0, largest_layer=0, largest_tensor=1_000_000)
    one = states(sizes, precision="32-true", strategy="fsdp", world=1, optimizer="adamw")
    eight = states(sizes, precision="32-true", strategy="fsdp", world=8, optimizer="adamw")
    assert (eight.weights, eight.gradients, eight.optimizer) == (
        one.weights // 8,
        one.gradients // 8,
        one.optimizer // 8,
    )
    ddp = states(sizes, precision="32-true", strategy="ddp", world=8, optimizer="adamw")
    assert ddp.weights == one.weights and ddp.optimizer == one.optimizer  # replicated


def test_mixed_precision_keeps_float32_master_weights_and_adamw_scale_its_float32_state():
    sizes = Sizes(total=1000, root=0, largest_layer=0, largest_tensor=100)
    mixed = states(sizes, precision="bf16-mixed", strategy="single", world=1, optimizer="adamw")
    true = states(sizes, precision="bf16-true", strategy="single", world=1, optimizer="adamw")
    scale = states(
        sizes, precision="bf16-true", strategy="single", world=1, optimizer="adamw_scale"
    )
    assert (mixed.weights, mixed.gradients, mixed.optimizer) == (6000, 4000, 8000)
    assert (true.weights, true.gradients, true.optimizer) == (2000, 2000, 4000)
    assert scale.optimizer == 8000 and scale.optimizer_step > 0


def test_the_text_plan_names_both_strategies():
    done = _plan_cli(
        "experiment=t5_base_c4", "trainer=fsdp", "trainer.devices=8", "--device", "h100-80gb"
    )
    assert done.returncode == 0, done.stderr
    assert "fsdp" in done.stdout and "ddp" in done.stdout and "65,536 steps" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu-v9"], "--device 'tpu-v9' is not known"),
        (["--memory", "lots"], "--memory 'lots' must be a size"),
        (["experiment=t5_base_c4", "--device", "l4", "--memory", "2GB"], "does not fit"),
        (["--mfu", "1.5"], "--mfu 1.5 must be in (0, 1]"),
        (["model=nope"], "Could not find 'model/nope'"),
    ],
)
def test_bad_devices_and_impossible_configs_give_one_line(args, message):
    done = _plan_cli(*args)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert message in done.stderr


def test_mfu_from_a_run_report(tmp_path: Path):
    report = tmp_path / "report.md"
    report.write_text("throughput: 1.2e5 tokens/s, MFU 31.0% of 312 TFLOP/s (A100 data sheet)\n")
    done = _plan_cli(
        "experiment=t5_base_c4", "--device", "a100-80gb", "--mfu", str(report), "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mfu"] == pytest.approx(0.31)


def test_memory_sizes():
    assert parse_memory("80GB") == 80 * 10**9
    assert parse_memory("40GiB") == parse_memory("40G") == 40 * 2**30
    assert device("h200", "1GiB").memory == 2**30


def test_a_model_config_left_at_defaults_plans_on_the_cpu():
    job = job_from_config(compose_train([]))
    plan = make_plan(job, device("cpu"), 0.4)
    assert plan.parameters.total == sum(
        p.numel()
        for p in Seq2SeqTransformer(ModelConfig.from_dict(dict(job.model.to_dict()))).parameters()
    )
    assert plan.max_micro_batch == 16  # the whole default batch fits this machine


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_the_cpu(tmp_path: Path):
    """benchmarks/gpu_check.py --dry-run: every step of the GPU acceptance run, tiny, on CPU."""
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout.split("| check | status | s | result |")[1]
    assert table.count("| ok |") == 7 and "FAIL" not in table


def test_the_scaling_page_numbers_are_the_planners():
    """docs/scaling.md: nanoT5's 0.56 s/step on an A100 is 31% MFU by this FLOP count."""
    page = (REPO / "docs" / "scaling.md").read_text(encoding="utf-8")
    assert "python benchmarks/gpu_check.py" in page and (REPO / "benchmarks/gpu_check.py").is_file()
    job = job_from_config(compose_train(["experiment=t5_base_c4"]))
    a100 = make_plan(job, device("a100-40gb"), 0.31)
    assert f"{a100.step_seconds:.3f} s/step" in page
    h100 = make_plan(job, device("h100-80gb"), 0.4)
    assert f"{h100.step_seconds:.3f} s/step" in page and f"{h100.memory.total / 2**30:.2f}" in page
