"""A model with the right shapes and no storage: for loading weights into (`assign=True`)
and for counting parameters, without initialising what the loaded weights replace.

Building on the meta device alone still runs every `reset_parameters`; on meta tensors
torch routes `normal_` / `uniform_` through its Python reference implementations, whose
first call imports `torch._dynamo` (~2 s, measured on T5-base in benchmarks/hf_load.py).
Under `SkipInit` those in-place initialisers return their tensor untouched.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.overrides import TorchFunctionMode

from s2s.config import ModelConfig
from s2s.model.transformer import Seq2SeqTransformer


class SkipInit(TorchFunctionMode):
    """In-place random / constant initialisers do nothing (meant for meta tensors)."""

    SKIPPED: ClassVar[set[Any]] = {
        torch.Tensor.normal_,
        torch.Tensor.uniform_,
        torch.Tensor.fill_,
        torch.Tensor.zero_,
        # nn.init's functions dispatch as themselves when a mode is active
        torch.nn.init.normal_,
        torch.nn.init.uniform_,
        torch.nn.init.kaiming_uniform_,
        torch.nn.init.trunc_normal_,
        torch.nn.init.zeros_,
        torch.nn.init.ones_,
        torch.nn.init.constant_,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def meta_model(config: ModelConfig) -> Seq2SeqTransformer:
    """`Seq2SeqTransformer(config)` on the meta device, uninitialised."""
    with torch.device("meta"), SkipInit():
        return Seq2SeqTransformer(config)
