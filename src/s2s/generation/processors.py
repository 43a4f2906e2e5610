"""Logits processors: pure functions that edit next-token scores before a token is chosen.

Notation: N rows (batch, or batch * beams), V vocab, L tokens so far (decoder start included).

Each takes scores (N, V) and returns new scores (N, V); `history` (N, L) holds the decoder
start token followed by the tokens generated so far. Greedy and sampling apply them to raw
logits, beam search to log-probabilities (as `transformers` does, so results match it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from s2s.generation.config import GenerationConfig


def repetition_penalty(scores: Tensor, history: Tensor, penalty: float) -> Tensor:
    """Make every token already in `history` less likely (CTRL, Keskar et al. 2019, Sec. 4.1).

    Positive scores are divided by `penalty`, negative ones multiplied, so a penalty > 1 always
    lowers them. Each token is penalised once however often it occurred.
    """
    seen = scores.gather(1, history)  # (N, L)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, history, seen)


def no_repeat_ngram(scores: Tensor, history: Tensor, n: int) -> Tensor:
    """Forbid any token that would repeat an n-gram already in `history` (Paulus et al. 2018,
    Sec. 2.5, "intra-decoder ... trigram avoidance"; fairseq's `no_repeat_ngram_size`)."""
    length = history.shape[1]
    if length < n:
        return scores
    windows = history.unfold(1, n, 1)  # (N, L - n + 1, n): every n-gram so far
    prefix = history[:, length - n + 1 :]  # (N, n - 1): the n-1 tokens the next one extends
    matches = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (N, L - n + 1)
    banned = torch.zeros_like(scores).scatter_add_(1, windows[:, :, -1], matches.to(scores.dtype))
    return scores.masked_fill(banned > 0, float("-inf"))


def forbid_eos(scores: Tensor, eos_id: int) -> Tensor:
    """Make EOS impossible (used while fewer than `min_new_tokens` tokens exist)."""
    scores = scores.clone()
    scores[:, eos_id] = float("-inf")
    return scores


def force(scores: Tensor, token_id: int) -> Tensor:
    """Make `token_id` the only possible token (score 0, every other -inf), as Hugging Face's
    forced BOS / EOS processors do."""
    forced = torch.full_like(scores, float("-inf"))
    forced[:, token_id] = 0.0
    return forced


def process(
    scores: Tensor, history: Tensor, step: int, config: GenerationConfig, eos_id: int
) -> Tensor:
    """Apply every enabled processor; `step` is the 0-based index of the token being chosen."""
    if config.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, history, config.repetition_penalty)
    if config.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(scores, history, config.no_repeat_ngram_size)
    if step < config.min_new_tokens:
        scores = forbid_eos(scores, eos_id)
    if step == 0 and config.forced_bos_token_id is not None:
        scores = force(scores, config.forced_bos_token_id)
    if step == config.max_new_tokens - 1 and config.forced_eos_token_id is not None:
        scores = force(scores, config.forced_eos_token_id)
    return scores
