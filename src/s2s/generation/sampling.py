"""Choosing the next token from (processed) logits: argmax, or a seeded random draw.

Notation: N rows, V vocab. Filters set excluded logits to -inf; they never renormalise,
softmax does that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from s2s.generation.config import GenerationConfig


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row (Fan et al. 2018, "Hierarchical Neural Story
    Generation", Sec. 5.3); k=0 or k >= V keeps everything."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (N, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability sum reaches p (nucleus
    sampling, Holtzman et al. 2020, Sec. 3.1); the most likely token is always kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (N, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # (N, V); column 0 has mass_before 0, so it is kept
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """Next token ids (N,) from logits (N, V): argmax for greedy, a draw for sample."""
    if config.strategy != "sample":
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    logits = top_p_filter(top_k_filter(logits, config.top_k), config.top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
