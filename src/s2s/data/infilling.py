"""BART text infilling and sentence permutation (Lewis et al. 2020, Sec. 2.2), as pure functions.

Same conventions as `s2s.data.noising`: raw ids of one text (1-D, no padding, no EOS), an
explicit `numpy.random.Generator` (seed it with `noise_rng(seed, epoch, index)`).

How infilling spans are sampled (`infilling_spans`); a "unit" is a token, or a whole word when
`word_starts` is given (fairseq `DenoisingDataset.add_whole_word_mask` also counts words):
  1. budget = round(mask_ratio * num_units): exactly this many units get masked.
  2. Span lengths: draw Poisson(poisson_lambda) lengths until their running sum reaches the
     budget, clip the last one so the sum equals the budget, and shuffle them (so the clipped
     span is not always the rightmost). Length-0 spans are kept: each INSERTS one mask token.
  3. Placement: the N = num_units - budget unmasked units and the M spans are put in a uniformly
     random order, i.e. M distinct slots out of N + M. Spans therefore never overlap (two may
     touch, giving two adjacent mask tokens), and every unit, the first and last included, can
     be masked (edge units less often, as with any random-start scheme).
Each span of length > 0 then becomes ONE mask token (fairseq `replace_length=1`); a fraction
`random_ratio` of spans gets a random token from `random_ids` instead (fairseq `mask_random`).

Notation: L text length in tokens, W number of words, M number of spans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2s.data.noising import NoisedExample, as_ids


@dataclass(frozen=True, eq=False)
class Spans:
    """Token spans [starts[k], starts[k] + lengths[k]), sorted, non-overlapping (M,) each.

    A length-0 span inserts its fill token before token starts[k] (starts[k] may equal L).
    """

    starts: np.ndarray
    lengths: np.ndarray


def _sample_span_lengths(
    budget: int, poisson_lambda: float, rng: np.random.Generator
) -> np.ndarray:
    """Poisson span lengths (M,) >= 0 summing exactly to `budget`, in draw order (last clipped)."""
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    chunk = int(budget / poisson_lambda * 1.25) + 8  # usually one draw suffices
    draws = rng.poisson(poisson_lambda, size=chunk)
    while draws.sum() < budget:
        draws = np.concatenate([draws, rng.poisson(poisson_lambda, size=chunk)])
    total = np.cumsum(draws)
    last = int(np.searchsorted(total, budget))  # first index whose running sum reaches budget
    lengths = draws[: last + 1].copy()
    lengths[last] = budget - (total[last - 1] if last else 0)
    return lengths


def _place_spans(num_units: int, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Start unit (M,) of each span, for a uniformly random non-overlapping arrangement."""
    num_spans = len(lengths)
    num_free = num_units - int(lengths.sum())
    slots = np.sort(rng.choice(num_free + num_spans, size=num_spans, replace=False))
    # Span j sits after (slots[j] - j) unmasked units and after the j spans before it.
    return slots - np.arange(num_spans) + np.cumsum(lengths) - lengths


def _word_bounds(word_starts: np.ndarray, num_tokens: int) -> np.ndarray:
    """Token index where each word starts, plus num_tokens at the end: (W + 1,)."""
    word_starts = np.asarray(word_starts, dtype=bool)
    if word_starts.shape != (num_tokens,):
        raise ValueError(f"word_starts shape {word_starts.shape} != ids shape ({num_tokens},)")
    bounds = np.flatnonzero(word_starts)
    if num_tokens and (len(bounds) == 0 or bounds[0] != 0):
        bounds = np.concatenate([[0], bounds])  # a leading word piece counts as a word
    return np.append(bounds, num_tokens)


def infilling_spans(
    num_tokens: int,
    *,
    mask_ratio: float,
    poisson_lambda: float,
    rng: np.random.Generator,
    word_starts: np.ndarray | None = None,
    line_breaks: np.ndarray | None = None,
    per_line: bool = True,
) -> Spans:
    """Sample the infilling spans of a text of `num_tokens` tokens (see the module docstring).

    word_starts: (L,) bool, True where a token begins a word; given, whole words are masked.
    line_breaks: (L,) bool, True on tokens holding a line break; given, those tokens are never
                 masked, so no span crosses a line break (ours: a masked line break teaches a
                 short-line denoiser to answer a mask with a new line). per_line=True: each
                 line between breaks is noised on its own (its own budget, its own spans);
                 False: the spans are drawn over the whole text as without breaks, then each is
                 cut at the first break it reaches (a span starting on breaks starts after
                 them; one holding only breaks is dropped), so slightly fewer tokens are masked.
    """
    if not 0 <= mask_ratio <= 1 or not poisson_lambda > 0:
        raise ValueError(f"need 0 <= mask_ratio={mask_ratio} <= 1 and poisson_lambda > 0")
    if line_breaks is not None:
        breaks = np.asarray(line_breaks, dtype=bool)
        if breaks.shape != (num_tokens,):
            raise ValueError(f"line_breaks shape {breaks.shape} != ids shape ({num_tokens},)")
        if per_line:
            return _spans_per_line(mask_ratio, poisson_lambda, rng, word_starts, breaks)
        spans = infilling_spans(
            num_tokens,
            mask_ratio=mask_ratio,
            poisson_lambda=poisson_lambda,
            rng=rng,
            word_starts=word_starts,
        )
        return _cut_at_breaks(spans, breaks)
    bounds = None if word_starts is None else _word_bounds(word_starts, num_tokens)
    num_units = num_tokens if bounds is None else len(bounds) - 1
    lengths = _sample_span_lengths(round(mask_ratio * num_units), poisson_lambda, rng)
    lengths = rng.permutation(lengths)
    starts = _place_spans(num_units, lengths, rng)
    if bounds is None:
        return Spans(starts=starts, lengths=lengths)
    token_starts = bounds[starts]
    return Spans(starts=token_starts, lengths=bounds[starts + lengths] - token_starts)


def _spans_per_line(
    mask_ratio: float,
    poisson_lambda: float,
    rng: np.random.Generator,
    word_starts: np.ndarray | None,
    breaks: np.ndarray,
) -> Spans:
    """`infilling_spans` run on each maximal run of non-break tokens, offsets added back."""
    edges = np.flatnonzero(np.diff(np.concatenate([[True], breaks, [True]]).astype(np.int8)))
    starts, lengths = [], []
    for begin, end in zip(edges[::2], edges[1::2], strict=True):  # runs [begin, end) of text
        line = infilling_spans(  # a line's first token begins a word (`_word_bounds`)
            int(end - begin),
            mask_ratio=mask_ratio,
            poisson_lambda=poisson_lambda,
            rng=rng,
            word_starts=None if word_starts is None else np.asarray(word_starts)[begin:end],
        )
        starts.append(line.starts + begin)
        lengths.append(line.lengths)
    if not starts:
        return Spans(starts=np.zeros(0, dtype=np.int64), lengths=np.zeros(0, dtype=np.int64))
    return Spans(starts=np.concatenate(starts), lengths=np.concatenate(lengths))


def _cut_at_breaks(spans: Spans, breaks: np.ndarray) -> Spans:
    """`spans` with the break tokens taken out: each span keeps its text up to the first break
    after its start; insertions (length 0) stay; a span of breaks only is dropped."""
    starts, lengths = spans.starts.copy(), spans.lengths.copy()
    keep = np.ones(len(starts), dtype=bool)
    for k, (start, length) in enumerate(zip(spans.starts, spans.lengths, strict=True)):
        if length == 0:
            continue
        text = np.flatnonzero(~breaks[start : start + length])
        if len(text) == 0:
            keep[k] = False
            continue
        starts[k] = start + text[0]
        stop = np.flatnonzero(breaks[starts[k] : start + length])
        lengths[k] = stop[0] if len(stop) else start + length - starts[k]
    return Spans(starts=starts[keep], lengths=lengths[keep])


def bart_apply_spans(ids: np.ndarray, spans: Spans, fill_ids: np.ndarray) -> np.ndarray:
    """Replace span k of ids (L,) by the single token fill_ids[k]; length-0 spans insert it."""
    ids = as_ids(ids)
    starts, lengths = np.asarray(spans.starts), np.asarray(spans.lengths)
    ends = starts + lengths
    if len(starts) and (
        np.any(lengths < 0)
        or np.any(ends[:-1] > starts[1:])
        or starts[0] < 0
        or ends[-1] > len(ids)
    ):
        raise ValueError("spans must be sorted, non-overlapping and inside the text")
    # Coverage count per token: +1 where a span starts, -1 where it ends.
    delta = np.bincount(starts, minlength=len(ids) + 1) - np.bincount(ends, minlength=len(ids) + 1)
    kept = np.cumsum(delta[:-1]) == 0  # (L,)
    kept_before = np.concatenate([[0], np.cumsum(kept)])  # (L + 1,) kept tokens before index i
    is_fill = np.zeros(int(kept.sum()) + len(starts), dtype=bool)
    is_fill[kept_before[starts] + np.arange(len(starts))] = True
    out = np.empty(len(is_fill), dtype=ids.dtype)
    out[is_fill] = fill_ids
    out[~is_fill] = ids[kept]
    return out


def _fill_ids(
    num_spans: int,
    mask_id: int,
    random_ratio: float,
    random_ids: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """The token (M,) that replaces each span: mask_id, or a random id with prob. random_ratio."""
    fill = np.full(num_spans, mask_id, dtype=np.int64)
    if random_ratio > 0:
        if random_ids is None or len(random_ids) == 0:
            raise ValueError("random_ratio > 0 needs a non-empty random_ids array")
        is_random = rng.random(num_spans) < random_ratio
        fill[is_random] = np.asarray(random_ids)[
            rng.integers(len(random_ids), size=is_random.sum())
        ]
    return fill


def _sentence_bounds(sentence_end_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the sentences, (K,) each; the tail after the last end is a sentence.

    A run of end marks ("?!", "...") ends one sentence, as fairseq `permute_sentences` does.
    """
    marks = np.asarray(sentence_end_mask, dtype=bool)
    if marks.ndim != 1:
        raise ValueError(f"sentence_end_mask must be 1-D, got shape {marks.shape}")
    if len(marks) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    last_of_run = marks.copy()
    last_of_run[:-1] &= ~marks[1:]
    ends = np.flatnonzero(last_of_run) + 1
    if len(ends) == 0 or ends[-1] != len(marks):
        ends = np.append(ends, len(marks))
    return np.concatenate([[0], ends[:-1]]).astype(np.int64), ends


def _sentence_order_index(starts: np.ndarray, ends: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Gather index (L,) that lays the sentences out in `order` (K,)."""
    s, n = starts[order], ends[order] - starts[order]
    out_starts = np.cumsum(n) - n
    return np.repeat(s - out_starts, n) + np.arange(int(n.sum()))


def sentence_permutation(sentence_end_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A gather index (L,) that shuffles whole sentences (BART sentence permutation).

    sentence_end_mask: (L,) bool, True on tokens that end a sentence ('.', '!', '?').
    Apply the same index to any per-token array (e.g. word_starts) to keep it aligned.
    """
    starts, ends = _sentence_bounds(sentence_end_mask)
    return _sentence_order_index(starts, ends, rng.permutation(len(starts)))


def permute_sentences(
    ids: np.ndarray, *, sentence_end_mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """ids (L,) with whole sentences shuffled; tokens inside a sentence keep their order."""
    ids = as_ids(ids)
    if np.shape(sentence_end_mask) != ids.shape:
        raise ValueError("sentence_end_mask must have the shape of ids")
    return ids[sentence_permutation(sentence_end_mask, rng)]


def bart_text_infilling(
    ids: np.ndarray,
    *,
    mask_id: int,
    eos_id: int,
    rng: np.random.Generator,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    word_starts: np.ndarray | None = None,
    line_breaks: np.ndarray | None = None,
    per_line: bool = True,
    sentence_end_mask: np.ndarray | None = None,
    random_ratio: float = 0.0,
    random_ids: np.ndarray | None = None,
    bos_id: int | None = None,
) -> NoisedExample:
    """BART noise for one text (L,): optional sentence permutation, then text infilling.

    word_starts:       (L,) bool; given, whole words are masked and mask_ratio counts words.
    line_breaks:       (L,) bool; given, no span crosses or masks a line break; per_line: each
                       line noised on its own, or spans drawn over the text and cut at breaks
                       (`infilling_spans`).
    sentence_end_mask: (L,) bool; given, sentences are shuffled first (the target is not).
    random_ratio:      fraction of spans filled with a token drawn uniformly from random_ids
                       (e.g. every non-special id) instead of mask_id.
    Input: [bos_id] + noised text + [eos_id]. Target: [bos_id] + original ids + [eos_id].
    bos_id=None adds no BOS to either (BART itself uses <s>).
    """
    ids = as_ids(ids)
    per_token = {"word_starts": word_starts, "line_breaks": line_breaks}
    for name, flags in (*per_token.items(), ("sentence_end_mask", sentence_end_mask)):
        if flags is not None and np.shape(flags) != ids.shape:
            raise ValueError(f"{name} shape {np.shape(flags)} != ids shape {ids.shape}")
    source = ids
    if sentence_end_mask is not None:
        order = sentence_permutation(sentence_end_mask, rng)
        source = ids[order]
        word_starts, line_breaks = (
            None if flags is None else np.asarray(flags, dtype=bool)[order]
            for flags in per_token.values()
        )
    spans = infilling_spans(
        len(source),
        mask_ratio=mask_ratio,
        poisson_lambda=poisson_lambda,
        rng=rng,
        word_starts=word_starts,
        line_breaks=line_breaks,
        per_line=per_line,
    )
    fill = _fill_ids(len(spans.starts), mask_id, random_ratio, random_ids, rng)
    noised = bart_apply_spans(source, spans, fill)
    head = np.array([] if bos_id is None else [bos_id], dtype=ids.dtype)
    tail = np.array([eos_id], dtype=ids.dtype)
    return NoisedExample(
        input_ids=np.concatenate([head, noised, tail]),
        target_ids=np.concatenate([head, ids, tail]),
    )
