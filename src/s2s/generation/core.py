"""`generate`: encode once, then decode with the chosen strategy over the KV cache.

Notation: B batch, S source length, L generated length.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from s2s import kernels
from s2s.generation.beam import beam_search
from s2s.generation.config import GenerationConfig
from s2s.generation.search import token_by_token
from s2s.generation.source import encode
from s2s.model.transformer import Seq2SeqTransformer


def generate(
    model: Seq2SeqTransformer,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    config: GenerationConfig | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate continuations for a batch of sources.

    input_ids (B, S) and attention_mask (B, S) (1 at real tokens; rows may be right-padded to
    different lengths). `config` holds every knob (greedy by default); `max_new_tokens`, when
    given, overrides `config.max_new_tokens`. Sampling draws from `generator` if given, else
    from a fresh generator seeded with `config.seed`, so equal seeds give equal outputs.

    Returns a (B, L) long tensor of NEW tokens only: no decoder start token (Hugging Face's
    `generate` output starts with it), each row's EOS included, and pad after it.
    L <= max_new_tokens is the longest row; a row without EOS was cut at max_new_tokens. With
    learned positions, max_new_tokens is at most the position table's size.
    Beam search returns the best hypothesis per input; with num_beams=1 it is greedy search
    (as in `transformers`).

    Runs under `torch.inference_mode`, in eval mode (each module's mode is restored afterwards).
    """
    config = config or GenerationConfig()
    if max_new_tokens is not None:
        config = dataclasses.replace(config, max_new_tokens=max_new_tokens)
    if model.config.positions == "learned" and config.max_new_tokens > model.config.max_positions:
        # the decoder reads the start token and each new token but the last at positions
        # 0 .. max_new_tokens - 1: a learned table has no row past max_positions - 1
        limit = model.config.max_positions
        config = dataclasses.replace(
            config, max_new_tokens=limit, min_new_tokens=min(config.min_new_tokens, limit)
        )
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be a non-empty (B, S) tensor, got {tuple(input_ids.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
            f"{tuple(input_ids.shape)}"
        )
    if generator is None and config.strategy == "sample":
        generator = torch.Generator(device=input_ids.device).manual_seed(config.seed)
    # eval() and train() would set every module's mode at every call (a visible share of a
    # short call): only when some module is training, and each one's own mode is restored
    training = [m for m in model.modules() if m.training]
    if training:
        model.eval()
    try:
        # inference_mode skips autograd's version counting (a few % per step); the result is
        # cloned outside it so callers get an ordinary tensor they may modify.
        beam = config.strategy == "beam" and config.num_beams > 1
        rows = input_ids.shape[0] * (config.num_beams if beam else 1)  # rows of every step
        with torch.inference_mode(), kernels.decoding_layout(model, rows):
            source = encode(model, input_ids, attention_mask)
            if beam:
                tokens = beam_search(model, source, config)
            else:
                tokens = token_by_token(model, source, config, generator)
    finally:
        for module in training:
            module.training = True
    return tokens.clone()
