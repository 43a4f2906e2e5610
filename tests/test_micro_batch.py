"""data.micro_batch_size caps what one device takes per forward; the global batch holds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers.train import compose_train

from s2s.data.config import DataConfig
from s2s.trainer import make_trainer


@pytest.mark.parametrize(
    "devices, cap, micro, accumulation",
    [(1, None, 128, 1), (1, 64, 64, 2), (8, 64, 16, 1), (2, 32, 32, 2), (8, None, 16, 1)],
)
def test_micro_batch_is_the_share_of_a_device_capped(tmp_path, devices, cap, micro, accumulation):
    cfg = compose_train(
        ["trainer=ddp_cpu", f"trainer.devices={devices}", f"paths.output_dir={tmp_path}"]
    )
    data = DataConfig(train_path="x", val_path="y", batch_size=128, micro_batch_size=cap)
    datamodule = SimpleNamespace(config=data, micro_batch_size=None)
    trainer = make_trainer(cfg, datamodule)
    assert trainer.world_size == devices
    assert (datamodule.micro_batch_size, trainer.accumulate_grad_batches) == (micro, accumulation)
    assert micro * devices * accumulation == 128
