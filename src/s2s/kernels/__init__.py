"""CPU speed-ups for the plain model in `s2s.model`, plugged in through one seam.

The seam: a *kernel twin* is a subclass of one of the model's module classes that computes the
same function faster and adds no parameters. `install(model)` turns every module of a class
that has a twin into its twin, in place (its class is switched; parameters, buffers, hooks and
the state_dict stay as they are); `uninstall(model)` switches them back. The twins:

    nn.Linear          -> DecodeLinear             decode weights for few-row products (linear.py)
    nn.Dropout         -> Dropout                  a cheaper CPU dropout mask (dropout.py)
    SelfAttention      -> SelfAttentionKernel      CPU attention: in-place math and backward
    CrossAttention     -> CrossAttentionKernel       (attention.py)
    DecoderLayer       -> FlatDecoderLayer         one-token steps without module calls
                                                     (decode_step.py)
    Seq2SeqTransformer -> Seq2SeqTransformerKernel  the LM head's decode weight (decoding.py)

Decoding weight layouts and flat steps are active only inside `decoding_layout(model, rows)`
(`s2s.generation.generate` opens one per call) and are kept across calls by
`decoding_session(model)`; on a model without the twins both do nothing.

The switch: the environment variable S2S_KERNELS=0 makes `install` leave every model plain, so
training, generation and the tests run the readable model only; unset or 1, s2s installs the
twins where it builds models (training, `s2s.load_pretrained`). Models you build yourself
(`Seq2SeqTransformer(config)`, `s2s.interop.hf.from_hf`) stay plain until you call
`install`. Private torch APIs (oneDNN's packed linear, `madvise` through ctypes) are used only
here, feature-detected, with a plain fallback. Tests: tests/test_kernels*.py hold every twin
equal to the plain module; timings: benchmarks/README.md.
"""

from __future__ import annotations

import os
from typing import TypeVar

from torch import nn

from s2s.kernels.attention import CrossAttentionKernel, SelfAttentionKernel
from s2s.kernels.decode_step import FlatDecoderLayer
from s2s.kernels.decoding import Seq2SeqTransformerKernel, decoding_layout, decoding_session
from s2s.kernels.dropout import Dropout
from s2s.kernels.linear import DecodeLinear
from s2s.model.attention import CrossAttention, SelfAttention
from s2s.model.layers import DecoderLayer
from s2s.model.transformer import Seq2SeqTransformer

__all__ = ["decoding_layout", "decoding_session", "enabled", "install", "uninstall"]

ENV = "S2S_KERNELS"
TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: DecodeLinear,
    nn.Dropout: Dropout,
    SelfAttention: SelfAttentionKernel,
    CrossAttention: CrossAttentionKernel,
    DecoderLayer: FlatDecoderLayer,
    Seq2SeqTransformer: Seq2SeqTransformerKernel,
}
PLAIN = {twin: plain for plain, twin in TWINS.items()}
M = TypeVar("M", bound=nn.Module)


def enabled() -> bool:
    """Whether `install` installs anything: S2S_KERNELS unset or "1" (on), "0" (off)."""
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}={value!r} must be 0 (speed-ups off) or 1 (on)")
    return value == "1"


def install(model: M) -> M:
    """Switch each module of `model` whose class (exactly: not a subclass of it) has a kernel
    twin to that twin, in place, unless S2S_KERNELS=0; returns `model`."""
    if enabled():
        _switch(model, TWINS)
    return model


def uninstall(model: M) -> M:
    """Switch every kernel twin in `model` back to its plain class, in place; returns `model`."""
    _switch(model, PLAIN)
    return model


def _switch(model: nn.Module, classes: dict[type[nn.Module], type[nn.Module]]) -> None:
    for module in model.modules():
        new = classes.get(type(module))
        if new is not None:
            module.__class__ = new  # a twin adds no state: only methods differ
