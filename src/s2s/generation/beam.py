"""Beam search over the decoder's KV cache, scoring and stopping like `transformers`.

Notation: B batch, K beams, V vocab, T max_new_tokens, C = 2K candidates per input.

Algorithm (Graves 2012; Sutskever et al. 2014; the batched "top 2K" form of fairseq's
`BeamSearch` and Hugging Face's beam search): every step, each of the K running hypotheses of
an input proposes all V continuations scored by their summed log-probability; the best C of
the K * V are kept. Those ending in EOS (or reaching T tokens) among the first K become
finished hypotheses, scored sum(log p) / length**length_penalty (length counts new tokens,
EOS included), and compete for K "finished" slots; the best K that do not end keep running.
Taking 2K candidates guarantees K running ones even if K of them end.

An input stops accepting hypotheses ("closed") once all K slots are full and
  - early_stopping=True: immediately;
  - early_stopping=False: when the best running hypothesis, normalised at its current
    length, no longer beats the worst finished one (the heuristic `transformers` uses).
The search ends when every input is closed or T tokens were generated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from s2s.generation.config import GenerationConfig
from s2s.generation.processors import process
from s2s.generation.source import EncodedSource
from s2s.model.cache import DecoderCache
from s2s.model.transformer import Seq2SeqTransformer

# A finite "impossible" score: sums and divisions stay finite, unlike -inf.
IMPOSSIBLE = -1.0e9


class _Finished:
    """The K best finished hypotheses per input, best first."""

    def __init__(self, b: int, k: int, t: int, pad: int, device: torch.device) -> None:
        self.tokens = torch.full((b, k, t), pad, dtype=torch.long, device=device)  # (B, K, T)
        self.scores = torch.full((b, k), IMPOSSIBLE, device=device)  # (B, K)
        self.lengths = torch.zeros(b, k, dtype=torch.long, device=device)  # (B, K)
        self.filled = torch.zeros(b, k, dtype=torch.bool, device=device)  # (B, K)

    def merge(self, tokens: Tensor, scores: Tensor, length: int, accept: Tensor) -> None:
        """Offer candidates tokens (B, C, T) with normalised scores (B, C); only `accept`ed
        ones (B, C) compete with the current K, and the best K of all stay."""
        k = self.scores.shape[1]
        offered = scores.masked_fill(~accept, IMPOSSIBLE)
        pool_scores = torch.cat((self.scores, offered), dim=1)  # (B, K + C)
        best = torch.topk(pool_scores, k, dim=1).indices  # (B, K)
        lengths = torch.full_like(accept, length, dtype=torch.long)
        self.scores = pool_scores.gather(1, best)
        self.filled = torch.cat((self.filled, accept), dim=1).gather(1, best)
        self.lengths = torch.cat((self.lengths, lengths), dim=1).gather(1, best)
        pool_tokens = torch.cat((self.tokens, tokens), dim=1)  # (B, K + C, T)
        self.tokens = pool_tokens.gather(1, best[:, :, None].expand(-1, -1, tokens.shape[2]))


def reorder_self_attention(cache: DecoderCache, rows: Tensor) -> None:
    """Select rows (B * K,) of the self-attention keys/values of every layer.

    `DecoderCache.reorder` also copies the cross-attention keys/values, but those depend only
    on the source, and a beam step only moves rows among the K beams of the same input, whose
    cross-attention entries are identical: copying them would change nothing but the time it
    takes (benchmarks/README.md).
    """
    for layer in cache.layers:
        layer.reorder_self(rows)


def beam_search(
    model: Seq2SeqTransformer, source: EncodedSource, config: GenerationConfig
) -> Tensor:
    """Best hypothesis per input as new tokens (B, L): EOS included, pad after it."""
    ids = model.config
    b, k, t = source.memory.shape[0], config.num_beams, config.max_new_tokens
    device = source.device
    beams = source.repeat_rows(k)  # (B * K, S, D): beam j of input i is row i * K + j
    history = torch.full((b * k, 1 + t), ids.pad_token_id, dtype=torch.long, device=device)
    history[:, 0] = ids.decoder_start_token_id  # (B * K, 1 + T)
    # All beams start identical: only beam 0 may propose, or the K beams would be K copies.
    running = torch.full((b, k), IMPOSSIBLE, device=device)  # (B, K) summed log-probs
    running[:, 0] = 0.0
    finished = _Finished(b, k, t, ids.pad_token_id, device)
    closed = torch.zeros(b, dtype=torch.bool, device=device)
    first_row = torch.arange(b, device=device)[:, None] * k  # (B, 1)
    cache = model.new_cache(capacity=t)  # one position per step
    for step in range(t):
        length = step + 1  # new tokens per hypothesis after this step
        out = model.decode(history[:, step : step + 1], beams.memory, beams.mask, cache=cache)
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B * K, V)
        logp = process(logp, history[:, :length], step, config, ids.eos_token_id)
        v = logp.shape[-1]
        total = (logp.view(b, k, v) + running[:, :, None]).view(b, k * v)
        scores, index = torch.topk(total, 2 * k, dim=1)  # (B, C), best first
        parent, token = index // v, index % v  # (B, C) beam of origin, next token
        ends = (token == ids.eos_token_id) | (length == t)  # (B, C)

        accept = ends.clone()
        accept[:, k:] = False  # only the top K candidates may finish (see module doc)
        accept &= ~closed[:, None]
        if config.early_stopping:
            accept &= ~finished.filled.all(dim=1, keepdim=True)
        if bool(accept.any()):
            prefix = history.view(b, k, 1 + t)[:, :, 1:].gather(
                1, parent[:, :, None].expand(-1, -1, t)
            )  # (B, C, T): each candidate's parent tokens
            prefix[:, :, step] = token
            finished.merge(prefix, scores / length**config.length_penalty, length, accept)
        if length == t:
            break

        live, pick = torch.topk(scores + ends.float() * IMPOSSIBLE, k, dim=1)  # (B, K)
        rows = (first_row + parent.gather(1, pick)).view(-1)  # (B * K,) rows to continue
        history = history.index_select(0, rows)
        history[:, length] = token.gather(1, pick).view(-1)
        reorder_self_attention(cache, rows)
        running = live

        all_filled = finished.filled.all(dim=1)  # (B,)
        best_running = running[:, 0] / length**config.length_penalty
        closed |= all_filled & (best_running <= finished.scores.min(dim=1).values)
        if bool(closed.all()) or (config.early_stopping and bool(all_filled.all())):
            break
    best_length = int(finished.lengths[:, 0].max())
    return finished.tokens[:, 0, :best_length]
