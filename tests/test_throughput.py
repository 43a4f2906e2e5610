"""Model FLOPs against torch's FLOP counter, the device peaks, and MFU in a run's logs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.train import REPO, compose_train, overrides_for
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.utils.flop_counter import FlopCounterMode

from s2s.config import ModelConfig
from s2s.model import Seq2SeqTransformer
from s2s.pipeline import train
from s2s.throughput import compute_dtype, gpu_peak_flops, peak_flops, train_flops
from s2s.trainer import peak_tflops


def preset(name: str) -> ModelConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name=f"model/{name}")
    return ModelConfig.from_dict(dict(cfg.model))


def counted_train_flops(config: ModelConfig, batch: int, source_len: int, target_len: int):
    """FLOPs torch counts in one forward + backward of the plain model (on the meta device:
    shapes only, nothing computed)."""
    with torch.device("meta"):
        model = Seq2SeqTransformer(config)
        source = torch.zeros(batch, source_len, dtype=torch.long)
        target = torch.zeros(batch, target_len, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(source, target).float().sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "name, batch, source_len, target_len",
    [("tiny", 16, 128, 128), ("tiny", 4, 64, 16), ("t5_small", 4, 512, 114)],
)
def test_train_flops_equal_torch_flop_counter(name, batch, source_len, target_len):
    config = dataclasses.replace(preset(name), dropout=0.0, attention_dropout=0.0)
    counted = counted_train_flops(config, batch, source_len, target_len)
    assert train_flops(config, batch, source_len, target_len) == pytest.approx(counted, rel=0.05)


def test_train_flops_grow_with_each_term():
    config = preset("tiny")
    base = train_flops(config, 2, 32, 16)
    assert train_flops(config, 4, 32, 16) == pytest.approx(2 * base)  # linear in the batch
    assert train_flops(config, 2, 64, 16) > base  # the encoder and cross-attention
    wider = dataclasses.replace(config, vocab_size=2 * config.vocab_size)
    # the LM head: 3 (train) x 2 (FLOPs per multiply-add) x B T D V more
    assert train_flops(wider, 2, 32, 16) - base == pytest.approx(6 * 2 * 16 * 256 * 8192)


def test_gpu_peaks_from_the_table_by_name():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.5e12
    assert gpu_peak_flops("NVIDIA H100 PCIe", torch.bfloat16) == 756.5e12
    assert gpu_peak_flops("NVIDIA L40S", torch.bfloat16) == 362.05e12  # not the L40, not L4
    assert gpu_peak_flops("NVIDIA L4", torch.bfloat16) == 121e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", torch.float32) == 156e12  # TF32
    assert gpu_peak_flops("NVIDIA H800", torch.bfloat16) == 989.5e12
    assert gpu_peak_flops("NVIDIA A800-SXM4-80GB", torch.bfloat16) == 312e12
    assert gpu_peak_flops("NVIDIA H20", torch.bfloat16) == 148e12
    assert gpu_peak_flops("NVIDIA RTX 6000 Ada Generation", torch.bfloat16) == 182.2e12
    assert gpu_peak_flops("NVIDIA RTX A6000", torch.bfloat16) == 154.8e12
    # no TF32 before Ampere: float32 is its own (data-sheet) peak, not half the fp16 one
    assert gpu_peak_flops("Tesla V100-SXM2-16GB", torch.float32) == 15.7e12
    assert gpu_peak_flops("Tesla T4", torch.float16) == 65e12
    assert gpu_peak_flops("Some Future GPU", torch.bfloat16) is None


def test_peak_on_cpu_is_a_measured_matmul_unless_overridden():
    peak, source = peak_flops(torch.device("cpu"), torch.float32)
    assert peak > 1e8 and "matmul" in source
    assert peak_flops(torch.device("cpu"), torch.float32) == (peak, source)  # cached
    assert peak_flops(torch.device("cpu"), torch.float32, 2.5) == (2.5e12, "trainer.peak_tflops")
    assert compute_dtype("bf16-mixed") == torch.bfloat16
    assert compute_dtype("32-true") == torch.float32


def scalars(event_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.slow  # a whole training run
def test_mfu_and_tflops_in_the_tensorboard_events(tiny_data, tmp_path):
    overrides = [*overrides_for(tiny_data, tmp_path), "logger=tensorboard"]
    train(compose_train([*overrides, "trainer.max_steps=4", "trainer.peak_tflops=0.5"]))
    logged = scalars(tmp_path / "run" / "tensorboard")
    for key in ("train/mfu", "train/tflops", "train/tokens_per_sec"):
        assert len(logged[key]) >= 3, key
    tflops = dict(logged["train/tflops"])
    for step, mfu in logged["train/mfu"]:  # against trainer.peak_tflops=0.5
        assert 0 < mfu == pytest.approx(tflops[step] / 0.5, rel=1e-5)


@pytest.mark.parametrize("value", ["0", "-1", "fast", "true"])
def test_bad_peak_tflops_is_refused_naming_the_key(value, tmp_path):
    cfg = compose_train([f"trainer.peak_tflops={value}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"trainer\.peak_tflops=.* must be a number > 0"):
        peak_tflops(cfg.trainer)
