"""The encoder's output, computed once per `generate` call and shared by every step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from s2s.model.transformer import Seq2SeqTransformer


@dataclass(frozen=True)
class EncodedSource:
    """memory (B, S, D); mask (B, S) bool, True at real tokens, or None when nothing is padded
    (so the decoder can skip masking cross-attention at every step)."""

    memory: Tensor
    mask: Tensor | None

    @property
    def device(self) -> torch.device:
        return self.memory.device

    def repeat_rows(self, n: int) -> EncodedSource:
        """Each row repeated n times in place, (B, ...) -> (B * n, ...): row b's copies are
        rows b * n .. b * n + n - 1 (the beam layout)."""
        mask = None if self.mask is None else self.mask.repeat_interleave(n, dim=0)
        return EncodedSource(self.memory.repeat_interleave(n, dim=0), mask)


def encode(
    model: Seq2SeqTransformer, input_ids: Tensor, attention_mask: Tensor | None
) -> EncodedSource:
    """Run the encoder once: input_ids (B, S), attention_mask (B, S) 1 at real tokens."""
    memory = model.encode(input_ids, attention_mask)  # (B, S, D)
    mask = None
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        mask = attention_mask.bool()
    return EncodedSource(memory, mask)
