"""Beam search against a second implementation written for reading, not speed: one input at a
time, a Python list of hypotheses, the whole decoder run again for every hypothesis (no KV
cache, no batching, no tensor bookkeeping), and the same rules as `transformers`' beam search
(top 2K candidates, only the top K may finish, scores sum(log p) / length ** length_penalty,
the "best running cannot beat the worst finished" stop, or stop when K are finished with
early_stopping). The model is biased towards EOS so hypotheses finish at different steps and
inputs close early; the decoder start id differs from pad, so a misplaced start token shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from helpers.model import tiny_model

from s2s.generation import GenerationConfig, generate

PAD, EOS, START, VOCAB = 0, 1, 2, 40


@dataclass
class Hyp:
    tokens: list[int]
    logp: float  # summed log-probability


def _next_logp(model, input_ids, mask, tokens: list[int], step: int, min_new: int) -> list[float]:
    decoder_input = torch.tensor([[START, *tokens]])
    with torch.no_grad():
        logits = model(input_ids, decoder_input, mask)[0, -1].float()  # (V,)
    logp = torch.log_softmax(logits, dim=-1)
    if step < min_new:
        logp[EOS] = -math.inf
    return logp.tolist()


def reference_beam(model, input_ids, mask, config: GenerationConfig) -> tuple[list[int], int]:
    """The best finished hypothesis for one input (1, S): its new tokens, EOS included; and
    the number of decoding steps the input needed before nothing could change its result."""
    k, t, lp = config.num_beams, config.max_new_tokens, config.length_penalty
    running = [Hyp([], 0.0)]
    finished: list[tuple[float, list[int]]] = []  # (normalised score, tokens), best first
    closed = False
    for step in range(t):
        length = step + 1
        candidates = []
        for hyp in running:
            logp = _next_logp(model, input_ids, mask, hyp.tokens, step, config.min_new_tokens)
            candidates += [Hyp([*hyp.tokens, v], hyp.logp + p) for v, p in enumerate(logp)]
        candidates = sorted(candidates, key=lambda h: -h.logp)[: 2 * k]
        full_before = len(finished) == k
        for rank, hyp in enumerate(candidates):
            ends = hyp.tokens[-1] == EOS or length == t
            blocked = closed or (config.early_stopping and full_before)
            if ends and rank < k and not blocked:
                finished.append((hyp.logp / length**lp, hyp.tokens))
        finished = sorted(finished, key=lambda f: -f[0])[:k]
        if length == t:
            return finished[0][1], length
        running = [h for h in candidates if h.tokens[-1] != EOS][:k]
        if len(finished) == k:
            # early stopping: K finished is enough; otherwise the transformers heuristic
            closed = config.early_stopping or running[0].logp / length**lp <= finished[-1][0]
        if closed:  # nothing this input does later can change its finished list
            return finished[0][1], length
    raise AssertionError("unreachable: the last step always returns")


def eos_biased_model(seed: int, eos_bias: float):
    model = tiny_model(
        seed,
        vocab_size=VOCAB,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=START,
        final_logits_bias=True,
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)  # peaked distributions: beams diverge from greedy
        model.final_logits_bias[EOS] = eos_bias
    return model


def random_cases(n: int, seed: int) -> list[tuple]:
    """More settings drawn at random (seeded): long-favouring penalties with early stopping
    are where the batch's inputs close at different steps."""
    gen = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    return [
        (
            100 + i,
            pick([1.0, 2.0, 3.0]),
            pick([2, 3, 4]),
            pick([5, 7, 9]),
            pick([0.0, 1.0, 2.0, 3.0]),
            pick([False, True]),
            pick([0, 0, 2]),
        )
        for i in range(n)
    ]


CASES = [
    # seed, eos bias, beams, max new, length penalty, early stopping, min new
    (0, 2.0, 3, 8, 1.0, False, 0),
    (1, 3.0, 4, 7, 2.0, False, 0),
    (2, 2.5, 3, 9, 0.0, False, 0),
    (3, 1.5, 2, 8, -1.0, False, 0),
    (4, 3.0, 4, 8, 1.0, True, 0),
    (5, 2.0, 3, 8, 0.5, True, 0),
    (6, 4.0, 3, 6, 1.0, False, 3),
    (7, -10.0, 3, 5, 1.0, False, 0),  # no EOS ever: every hypothesis cut at max_new_tokens
    *random_cases(12, seed=31),
]


@pytest.mark.parametrize("seed,bias,beams,max_new,penalty,early,min_new", CASES)
def test_beam_search_equals_the_reference(seed, bias, beams, max_new, penalty, early, min_new):
    model = eos_biased_model(seed, bias)
    gen = torch.Generator().manual_seed(seed)
    lengths = [9, 5, 7]
    input_ids = torch.full((3, 9), PAD)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        input_ids[i, : n - 1] = torch.randint(3, VOCAB, (n - 1,), generator=gen)
        input_ids[i, n - 1] = EOS
        mask[i, :n] = 1
    config = GenerationConfig(
        strategy="beam",
        num_beams=beams,
        max_new_tokens=max_new,
        length_penalty=penalty,
        early_stopping=early,
        min_new_tokens=min_new,
    )
    results = [
        reference_beam(model, input_ids[i : i + 1], mask[i : i + 1], config) for i in range(3)
    ]
    expected = [tokens for tokens, _ in results]
    calls = []
    decode = model.decode
    model.decode = lambda *a, **k: calls.append(1) or decode(*a, **k)
    out = generate(model, input_ids, mask, config=config)  # (B, L)
    # the search stops as soon as every input is closed, not later
    assert len(calls) == max(steps for _, steps in results)
    width = max(len(e) for e in expected)
    assert out.shape == (3, width)  # L is the longest row's length, no more
    for row, tokens in zip(out.tolist(), expected, strict=True):
        assert row == tokens + [PAD] * (width - len(tokens))


def test_the_cases_finish_at_different_steps():
    """The comparison means something: outputs of different lengths, some short of
    max_new_tokens (ended by EOS, so the stopping rules were exercised)."""
    lengths = set()
    for seed, bias, beams, max_new, penalty, *_ in CASES[:3]:
        model = eos_biased_model(seed, bias)
        config = GenerationConfig(
            strategy="beam", num_beams=beams, max_new_tokens=max_new, length_penalty=penalty
        )
        source = torch.randint(3, VOCAB, (4, 6), generator=torch.Generator().manual_seed(seed))
        out = generate(model, source, config=config)
        lengths |= {int((row != PAD).sum()) for row in out}
    assert len(lengths) >= 3 and min(lengths) < 7
