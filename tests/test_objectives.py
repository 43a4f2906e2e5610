"""build_objective: each data.noise.* setting and the tokenizer's ids reach the objective that
noises the rows, the lengths a row may hold, and the errors that name the key to change.

The noising functions themselves are tested in test_noising.py and test_mixture.py; here the
objectives are checked against calling those functions directly with the same generator."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from s2s.data import objectives
from s2s.data.config import DataConfig
from s2s.data.infilling import bart_text_infilling
from s2s.data.mixture import mixture_block_length
from s2s.data.noising import t5_span_corruption
from s2s.data.objectives import (
    BartObjective,
    Identity,
    T5Objective,
    block_length,
    build_objective,
)
from s2s.data.ul2 import MixtureObjective


def config(**values) -> DataConfig:
    return DataConfig.from_dict({"train_path": "x", **values})


def bart(tokenizer, **noise) -> BartObjective:
    objective = build_objective(config(objective="bart", noise={"bart": noise}), tokenizer)
    assert isinstance(objective, BartObjective)
    return objective


def test_bart_settings_and_ids_reach_the_objective(tokenizer):
    objective = bart(tokenizer, mask_ratio=0.4, poisson_lambda=2.5, random_ratio=0.1)
    assert (objective.mask_id, objective.eos_id) == (tokenizer.mask_id, tokenizer.eos_id)
    assert (objective.mask_ratio, objective.poisson_lambda, objective.random_ratio) == (
        0.4,
        2.5,
        0.1,
    )
    # a span's random replacement is any id but the special ones (pad, EOS, BOS, mask, sentinels)
    expected = sorted(set(range(tokenizer.vocab_size)) - set(tokenizer.special_ids))
    assert objective.random_ids.tolist() == expected
    # the defaults: none of the optional tables
    plain = bart(tokenizer)
    assert plain.random_ids is None and plain.word_start_table is None
    assert plain.line_break_table is None and plain.sentence_end_table is None
    assert plain.per_line is False


def test_whole_words_use_the_tokenizers_word_starts(tokenizer):
    table = bart(tokenizer, whole_word=True).word_start_table
    assert np.array_equal(table, tokenizer.word_start_table())


@pytest.mark.parametrize(
    ("noise", "per_line"),
    [({"within_lines": True}, True), ({"keep_line_breaks": True}, False)],
)
def test_line_break_settings_give_the_break_table_with_eos(tokenizer, noise, per_line):
    objective = bart(tokenizer, **noise)
    expected = tokenizer.line_break_table().copy()
    expected[tokenizer.eos_id] = True  # packed rows end each document with EOS
    assert np.array_equal(objective.line_break_table, expected)
    assert objective.per_line is per_line
    assert not tokenizer.line_break_table()[tokenizer.eos_id]  # the tokenizer's own is unchanged


def test_sentence_permutation_gives_the_sentence_end_table_with_eos(tokenizer):
    objective = bart(tokenizer, permute_sentences=True)
    expected = tokenizer.sentence_end_table().copy()
    expected[tokenizer.eos_id] = True
    assert np.array_equal(objective.sentence_end_table, expected)
    assert objective.line_break_table is None


def test_bart_needs_a_mask_token():
    no_mask = SimpleNamespace(mask_id=None)
    with pytest.raises(
        ValueError, match=r"^data\.objective=bart needs a <mask> token, and the tokenizer has none$"
    ):
        build_objective(config(objective="bart"), no_mask)


@pytest.mark.parametrize("per_line", [True, False])
def test_the_bart_objective_calls_infilling_with_its_settings(tokenizer, per_line):
    """Its output equals `bart_text_infilling` called by hand with the same settings and
    generator: word starts looked up (the row's first token always begins a word), line
    breaks and sentence ends looked up, random replacements from the non-special ids."""
    objective = bart(
        tokenizer,
        mask_ratio=0.5,
        poisson_lambda=2.0,
        random_ratio=0.5,
        whole_word=True,
        within_lines=per_line,
        keep_line_breaks=not per_line,
        permute_sentences=True,
    )
    text = "To be, or not to be. That is\nthe questionable: whether 'tis nobler\nin the mind."
    ids = np.array(tokenizer.encode(text))
    inside = np.flatnonzero(~tokenizer.word_start_table()[ids])[0]
    ids = ids[inside:]  # the row starts inside a word: the lookup marks its first token
    word_starts = tokenizer.word_start_table()[ids]
    assert not word_starts[0]
    word_starts[0] = True
    breaks = objective.line_break_table[ids]
    ends = objective.sentence_end_table[ids]
    assert breaks.sum() == 2 and ends.sum() >= 2
    for seed in range(20):
        got = objective(ids, np.random.default_rng(seed))
        expected = bart_text_infilling(
            ids,
            mask_id=tokenizer.mask_id,
            eos_id=tokenizer.eos_id,
            rng=np.random.default_rng(seed),
            mask_ratio=0.5,
            poisson_lambda=2.0,
            word_starts=word_starts,
            line_breaks=breaks,
            per_line=per_line,
            sentence_end_mask=ends,
            random_ratio=0.5,
            random_ids=objective.random_ids,
        )
        assert np.array_equal(got.input_ids, expected.input_ids), seed
        assert np.array_equal(got.target_ids, expected.target_ids), seed


def test_word_start_lookup_marks_the_first_token_and_leaves_the_table():
    table = np.array([False, True, False, True])
    assert objectives._lookup(table, np.array([2, 1, 2]), first=True).tolist() == [
        True,
        True,
        False,
    ]
    assert objectives._lookup(table, np.array([2, 1, 2]), first=False).tolist() == [
        False,
        True,
        False,
    ]
    assert table.tolist() == [False, True, False, True]
    assert objectives._lookup(table, np.array([], dtype=np.int64), first=True).tolist() == []
    assert objectives._lookup(None, np.array([1]), first=True) is None


def test_t5_settings_and_ids_reach_the_objective(tokenizer):
    noise = {"t5": {"noise_density": 0.2, "mean_noise_span_length": 2.0}}
    values = {"objective": "t5", "max_source_length": 20, "max_target_length": 20}
    objective = build_objective(config(**values, noise=noise), tokenizer)
    assert isinstance(objective, T5Objective)
    assert objective.sentinel_ids == tuple(tokenizer.sentinel_ids)
    assert (objective.eos_id, objective.noise_density, objective.mean_noise_span_length) == (
        tokenizer.eos_id,
        0.2,
        2.0,
    )
    ids = np.arange(100, 100 + block_length(config(**values, noise=noise)))
    for seed in range(5):
        got = objective(ids, np.random.default_rng(seed))
        expected = t5_span_corruption(
            ids,
            noise_density=0.2,
            mean_noise_span_length=2.0,
            sentinel_ids=tuple(tokenizer.sentinel_ids),
            eos_id=tokenizer.eos_id,
            rng=np.random.default_rng(seed),
        )
        assert np.array_equal(got.input_ids, expected.input_ids)
        assert np.array_equal(got.target_ids, expected.target_ids)
        assert len(got.input_ids) == 20  # T5 rows give exactly max_source_length-token inputs


def test_t5_refuses_a_tokenizer_with_too_few_sentinels(tokenizer):
    """T5's own lengths: 512-token inputs take 568 raw tokens, of which round(568 * 0.15) = 85
    are noise in round(85 / 3) = 28 spans (T5 / nanoT5: inputs 512, targets 114); the session
    tokenizer has 8 sentinels."""
    values = {"objective": "t5", "max_source_length": 512, "max_target_length": 114}
    assert config(**values).t5_lengths == (568, 114)
    assert block_length(config(**values)) == 568
    assert len(tokenizer.sentinel_ids) == 8
    message = (
        r"data.objective=t5 makes up to 28 noise spans per row, but the tokenizer has 8 "
        r"sentinels: raise data.tokenizer.num_sentinels or lower data.max_source_length"
    )
    with pytest.raises(ValueError, match=message):
        build_objective(config(**values), tokenizer)
    # exactly as many sentinels as spans is enough
    enough = SimpleNamespace(sentinel_ids=list(range(28)), eos_id=1)
    assert len(build_objective(config(**values), enough).sentinel_ids) == 28
    fewer = SimpleNamespace(sentinel_ids=list(range(27)), eos_id=1)
    with pytest.raises(ValueError, match="makes up to 28 noise spans"):
        build_objective(config(**values), fewer)


def test_a_short_t5_row_still_needs_one_sentinel():
    """At most max(1, ...) spans: a row whose noise rounds to no span still gets one."""
    values = {"objective": "t5", "max_source_length": 4, "max_target_length": 4}
    raw = config(**values).t5_lengths[0]
    assert round(round(raw * 0.15) / 3) == 0
    no_sentinels = SimpleNamespace(sentinel_ids=[], eos_id=1)
    with pytest.raises(
        ValueError, match="makes up to 1 noise spans per row, but the tokenizer has 0"
    ):
        build_objective(config(**values), no_sentinels)


def test_the_mixture_is_bound_to_the_tokenizer(tokenizer):
    mixture = {
        "R": {"weight": 1.0, "kind": "spans", "noise_density": 0.15, "mode": "[NLU]"},
        "S": {"weight": 3.0, "kind": "prefix", "noise_density": 0.5, "mode": "[S2S]"},
    }
    values = {"objective": "mixture", "max_source_length": 64, "max_target_length": 64}
    data = config(**values, noise={"mixture": mixture})
    objective = build_objective(data, tokenizer)
    assert isinstance(objective, MixtureObjective)
    assert [d.name for d in objective.denoisers] == ["R", "S"]
    assert objective.cumulative.tolist() == [0.25, 1.0]
    assert objective.sentinel_ids == tuple(tokenizer.sentinel_ids)
    assert objective.eos_id == tokenizer.eos_id
    modes = {d.name: d.mode_ids.tolist() for d in objective.denoisers}
    assert modes == {"R": tokenizer.encode("[NLU]"), "S": tokenizer.encode("[S2S]")}


def test_identity_copies_the_row_and_ends_it():
    objective = build_objective(config(objective="none"), SimpleNamespace(eos_id=7))
    assert isinstance(objective, Identity)
    example = objective(np.array([3, 4, 5], dtype=np.int32), np.random.default_rng(0))
    assert example.input_ids.tolist() == example.target_ids.tolist() == [3, 4, 5, 7]
    assert example.input_ids.dtype == np.int64


@pytest.mark.parametrize(
    ("objective", "source", "target", "expected"),
    [
        ("bart", 64, 100, 63),  # the target is the row plus EOS, and must fit both lengths
        ("bart", 100, 64, 63),
        ("none", 32, 32, 31),
    ],
)
def test_block_length_of_a_whole_text_target(objective, source, target, expected):
    values = {"objective": objective, "max_source_length": source, "max_target_length": target}
    assert block_length(config(**values)) == expected


def test_block_length_of_a_mixture_is_what_every_denoiser_fits():
    values = {"objective": "mixture", "max_source_length": 512, "max_target_length": 512}
    data = config(**values)
    assert block_length(data) == mixture_block_length(data.noise.mixture, 512, 512)
    assert block_length(data) < 512
