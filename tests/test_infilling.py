"""BART infilling's edges and errors (s2s.data.infilling), by hand: whole words together with
line breaks, texts of breaks only, sentence bounds of texts without an end mark or of one
token, the span checks and the messages that name the bad argument. The statistics and the
hand-worked main cases are in test_noising.py."""

from __future__ import annotations

import numpy as np
import pytest

from s2s.data.infilling import (
    Spans,
    _fill_ids,
    _sample_span_lengths,
    _sentence_bounds,
    bart_apply_spans,
    bart_text_infilling,
    infilling_spans,
    permute_sentences,
)

EOS, MASK = 1, 3


def words_masked_whole(spans: Spans, word_starts: np.ndarray, breaks: np.ndarray) -> bool:
    """Every span of length > 0 starts at a word start and ends at one, at a line break or
    at the text's end: no word is split."""
    n = len(word_starts)
    for start, length in zip(spans.starts, spans.lengths, strict=True):
        if length == 0:
            continue
        end = start + length
        if not word_starts[start] or not (end == n or word_starts[end] or breaks[end]):
            return False
    return True


@pytest.mark.parametrize("per_line", [True, False])
def test_whole_words_stay_whole_with_line_breaks(per_line):
    """With line breaks, `whole_word` still masks whole words, in both modes (each line noised
    on its own, or spans over the row cut at breaks)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(10, 80))
        word_starts = rng.random(n) < 0.3
        breaks = rng.random(n) < 0.1
        word_starts |= breaks | np.roll(breaks, 1)  # a break is its own word; so is what follows
        word_starts[0] = True
        spans = infilling_spans(
            n,
            mask_ratio=0.5,
            poisson_lambda=2.0,
            rng=rng,
            word_starts=word_starts,
            line_breaks=breaks,
            per_line=per_line,
        )
        assert words_masked_whole(spans, word_starts, breaks)
        assert not any(
            breaks[s : s + k].any() for s, k in zip(spans.starts, spans.lengths, strict=True)
        )


def test_spans_are_per_line_unless_asked_otherwise():
    """The default is per line (`infilling_spans` and `bart_text_infilling`): every line of a
    text of many short lines gets its own mask; spans over the row leave some lines unmasked."""
    ids = np.arange(10, 10 + 12 * 6)
    breaks = np.zeros(len(ids), dtype=bool)
    breaks[5::6] = True  # 12 lines of 5 tokens and a break
    lines_masked = {}
    for per_line in (None, True, False):
        kwargs = {} if per_line is None else {"per_line": per_line}
        counts = []
        for seed in range(30):
            noised = bart_text_infilling(
                ids,
                mask_id=MASK,
                eos_id=EOS,
                rng=np.random.default_rng(seed),
                mask_ratio=0.4,
                line_breaks=breaks,
                **kwargs,
            ).input_ids
            lines = np.split(noised[:-1], np.flatnonzero(np.isin(noised, ids[breaks])))
            counts.append(sum(MASK in line for line in lines))
        lines_masked[per_line] = min(counts)
    assert lines_masked[None] == lines_masked[True] == 12
    assert lines_masked[False] < 12


def seeded_spans(n: int, seed: int, mask_ratio: float, **kwargs) -> Spans:
    """`infilling_spans` of an n-token text at lambda 3 with a fresh generator of `seed`."""
    rng = np.random.default_rng(seed)
    return infilling_spans(n, mask_ratio=mask_ratio, poisson_lambda=3.0, rng=rng, **kwargs)


def same_spans(a: Spans, b: Spans) -> bool:
    return np.array_equal(a.starts, b.starts) and np.array_equal(a.lengths, b.lengths)


def test_line_breaks_given_as_integers_act_as_flags():
    breaks = np.zeros(30, dtype=np.int64)
    breaks[[7, 15, 22]] = 1
    for per_line in (True, False):
        for seed in range(10):
            as_ints, as_bools = (
                seeded_spans(30, seed, 0.5, line_breaks=flags, per_line=per_line)
                for flags in (breaks, breaks.astype(bool))
            )
            assert same_spans(as_ints, as_bools)


@pytest.mark.parametrize("per_line", [True, False])
def test_a_text_of_line_breaks_only_is_left_as_it_is(per_line):
    breaks = np.ones(4, dtype=bool)
    spans = seeded_spans(4, 0, 0.5, line_breaks=breaks, per_line=per_line)
    assert spans.starts.tolist() == [] and spans.lengths.tolist() == []
    assert spans.starts.dtype.kind == spans.lengths.dtype.kind == "i"
    ids = np.array([9, 9, 9, 9])
    noised = bart_text_infilling(
        ids,
        mask_id=MASK,
        eos_id=EOS,
        rng=np.random.default_rng(0),
        mask_ratio=0.5,
        line_breaks=breaks,
        per_line=per_line,
    )
    assert noised.input_ids.tolist() == [9, 9, 9, 9, EOS]


@pytest.mark.parametrize(
    ("kwargs", "ok"),
    [
        ({"mask_ratio": 1.0, "poisson_lambda": 3.0}, True),
        ({"mask_ratio": 0.0, "poisson_lambda": 0.5}, True),
        ({"mask_ratio": 1.5, "poisson_lambda": 3.0}, False),
        ({"mask_ratio": -0.1, "poisson_lambda": 3.0}, False),
        ({"mask_ratio": 0.3, "poisson_lambda": 0.0}, False),
    ],
)
def test_mask_ratio_and_lambda_are_checked(kwargs, ok):
    rng = np.random.default_rng(0)
    if ok:
        spans = infilling_spans(10, rng=rng, **kwargs)
        assert spans.lengths.sum() == round(kwargs["mask_ratio"] * 10)
        return
    message = rf"^need 0 <= mask_ratio={kwargs['mask_ratio']} <= 1 and poisson_lambda > 0$"
    with pytest.raises(ValueError, match=message):
        infilling_spans(10, rng=rng, **kwargs)


def test_the_defaults_are_barts():
    """Lewis et al. 2020, Sec. 5.1: 30% of tokens masked, span lengths Poisson(lambda = 3):
    the defaults give what those settings give, draw for draw."""
    ids = np.arange(10, 110)
    for seed in range(5):
        default = bart_text_infilling(
            ids, mask_id=MASK, eos_id=EOS, rng=np.random.default_rng(seed)
        )
        bart = bart_text_infilling(
            ids,
            mask_id=MASK,
            eos_id=EOS,
            rng=np.random.default_rng(seed),
            mask_ratio=0.3,
            poisson_lambda=3.0,
        )
        assert np.array_equal(default.input_ids, bart.input_ids)


def test_infilling_spans_are_per_line_by_default():
    breaks = np.zeros(40, dtype=bool)
    breaks[[9, 19, 29]] = True
    for seed in range(10):
        default = seeded_spans(40, seed, 0.4, line_breaks=breaks)
        assert same_spans(default, seeded_spans(40, seed, 0.4, line_breaks=breaks, per_line=True))
    # and per_line=False differs for some seed (so the comparison above can fail)
    assert any(
        not np.array_equal(
            seeded_spans(40, seed, 0.4, line_breaks=breaks).starts,
            seeded_spans(40, seed, 0.4, line_breaks=breaks, per_line=False).starts,
        )
        for seed in range(10)
    )


class ShortDraws:
    """A generator whose first Poisson draws sum to nothing: the sampler must draw again."""

    def __init__(self) -> None:
        self.lambdas: list[float] = []

    def poisson(self, lam, size):
        self.lambdas.append(lam)
        return np.zeros(size, dtype=np.int64) if len(self.lambdas) == 1 else np.full(size, 2)


def test_more_span_lengths_are_drawn_with_the_same_lambda():
    rng = ShortDraws()
    lengths = _sample_span_lengths(5, 2.5, rng)
    assert rng.lambdas == [2.5, 2.5]
    # the first draws' zeros are spans too (insertions), then 2 + 2 + 1 = 5
    assert lengths.sum() == 5 and lengths[-3:].tolist() == [2, 2, 1]
    assert (lengths[:-3] == 0).all() and len(lengths) > 3


@pytest.mark.parametrize(
    ("marks", "starts", "ends"),
    [
        ([0, 0, 1, 0, 1], [0, 3], [3, 5]),  # the last token ends the last sentence
        ([0, 1, 0, 0], [0, 2], [2, 4]),  # the tail after the last end is a sentence
        ([0, 0, 0], [0], [3]),  # no end mark: one sentence
        ([1], [0], [1]),  # one token
        ([0], [0], [1]),
        ([1, 1, 0, 1, 1], [0, 2], [2, 5]),  # a run of marks ("?!") ends one sentence
        ([], [], []),
    ],
)
def test_sentence_bounds_hand_worked(marks, starts, ends):
    got = _sentence_bounds(np.array(marks, dtype=bool))
    assert got[0].tolist() == starts and got[1].tolist() == ends
    assert got[0].dtype == got[1].dtype == np.int64


def test_sentence_bounds_of_integer_marks_and_their_shape():
    got = _sentence_bounds(np.array([0, 1, 1, 0]))
    assert got[0].tolist() == [0, 3] and got[1].tolist() == [3, 4]
    with pytest.raises(ValueError, match=r"^sentence_end_mask must be 1-D, got shape \(2, 2\)$"):
        _sentence_bounds(np.zeros((2, 2), dtype=bool))


@pytest.mark.parametrize("ids", [[], [7], [7, 8, 9]])
def test_permuting_a_single_sentence_keeps_the_text(ids):
    ids = np.array(ids, dtype=np.int64)
    for seed in range(5):
        out = permute_sentences(
            ids, sentence_end_mask=np.zeros(len(ids), dtype=bool), rng=np.random.default_rng(seed)
        )
        assert out.tolist() == ids.tolist()
    with pytest.raises(ValueError, match=r"^sentence_end_mask must have the shape of ids$"):
        permute_sentences(ids, sentence_end_mask=np.zeros(4, dtype=bool), rng=None)


@pytest.mark.parametrize(
    ("starts", "lengths"),
    [
        ([1], [-1]),  # a negative length
        ([-1], [1]),  # before the text
        ([3], [2]),  # past its end (4 tokens)
        ([0, 1, 2], [1, 2, 1]),  # the second overlaps the third
        ([2, 0], [1, 1]),  # not sorted
    ],
)
def test_bad_spans_are_refused(starts, lengths):
    spans = Spans(starts=np.array(starts), lengths=np.array(lengths))
    with pytest.raises(
        ValueError, match=r"^spans must be sorted, non-overlapping and inside the text$"
    ):
        bart_apply_spans(np.array([10, 11, 12, 13]), spans, np.full(len(starts), MASK))


def test_random_fills_come_from_random_ids_each_drawn_on_its_own():
    rng = np.random.default_rng(0)
    fill = _fill_ids(200, MASK, 1.0, np.arange(100, 150), rng)
    assert set(fill.tolist()) <= set(range(100, 150)) and len(set(fill.tolist())) > 30
    assert _fill_ids(5, MASK, 1.0, np.array([42]), rng).tolist() == [42] * 5  # one id is enough
    assert fill.dtype == np.int64
    for empty in (None, np.array([], dtype=np.int64)):
        with pytest.raises(
            ValueError, match=r"^random_ratio > 0 needs a non-empty random_ids array$"
        ):
            _fill_ids(5, MASK, 0.5, empty, rng)


@pytest.mark.parametrize("name", ["word_starts", "line_breaks", "sentence_end_mask"])
def test_a_per_token_array_of_the_wrong_shape_is_named(name):
    ids = np.arange(10, 15)
    with pytest.raises(ValueError, match=rf"^{name} shape \(4,\) != ids shape \(5,\)$"):
        bart_text_infilling(
            ids, mask_id=MASK, eos_id=EOS, rng=np.random.default_rng(0), **{name: np.zeros(4)}
        )


def test_word_starts_of_the_wrong_length_are_named():
    with pytest.raises(ValueError, match=r"^word_starts shape \(3,\) != ids shape \(5,\)$"):
        infilling_spans(
            5,
            mask_ratio=0.5,
            poisson_lambda=3.0,
            rng=np.random.default_rng(0),
            word_starts=np.ones(3, dtype=bool),
        )


def test_the_output_keeps_the_ids_dtype():
    ids = np.arange(10, 30, dtype=np.int32)
    noised = bart_text_infilling(ids, mask_id=MASK, eos_id=EOS, rng=np.random.default_rng(0))
    assert noised.input_ids.dtype == noised.target_ids.dtype == np.int32
