"""Greedy decoding and sampling: one token per row per step over the decoder's KV cache.

Notation: B batch, S source length, D model dim, V vocab, L generated length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from s2s.generation.config import GenerationConfig
from s2s.generation.processors import process
from s2s.generation.sampling import choose
from s2s.generation.source import EncodedSource
from s2s.model.transformer import Seq2SeqTransformer


def token_by_token(
    model: Seq2SeqTransformer,
    source: EncodedSource,
    config: GenerationConfig,
    generator: torch.Generator | None,
) -> Tensor:
    """New tokens (B, L), L <= max_new_tokens, pad after each row's EOS.

    The decoder sees only the newest token at each step; earlier positions live in the cache.
    A row that has produced EOS keeps being fed pad (its outputs are discarded), so the batch
    never changes shape; the loop ends when every row is finished.
    """
    ids = model.config
    b = source.memory.shape[0]
    history = torch.full(
        (b, 1 + config.max_new_tokens), ids.pad_token_id, dtype=torch.long, device=source.device
    )  # (B, 1 + max_new): decoder start, then the tokens chosen so far
    history[:, 0] = ids.decoder_start_token_id
    finished = torch.zeros(b, dtype=torch.bool, device=source.device)
    cache = model.new_cache(capacity=config.max_new_tokens)  # one position per step
    length = 0
    for step in range(config.max_new_tokens):
        out = model.decode(history[:, step : step + 1], source.memory, source.mask, cache=cache)
        logits = process(out.logits[:, -1], history[:, : step + 1], step, config, ids.eos_token_id)
        token = choose(logits, config, generator).masked_fill(finished, ids.pad_token_id)  # (B,)
        history[:, step + 1] = token
        finished |= token == ids.eos_token_id
        length = step + 1
        if bool(finished.all()):
            break
    return history[:, 1 : 1 + length]
