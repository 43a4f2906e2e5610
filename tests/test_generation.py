"""Generation over the KV cache: equal to full recomputation, padding-invariant, strategies
agree where they must (beam-1 == greedy, top-k=1 == greedy), processors hand-checked."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.generation import tiny_model
from helpers.model import padded_batch

from s2s.generation import GenerationConfig, generate
from s2s.generation.beam import beam_search
from s2s.generation.processors import (
    forbid_eos,
    force,
    no_repeat_ngram,
    process,
    repetition_penalty,
)
from s2s.generation.sampling import top_k_filter, top_p_filter
from s2s.generation.source import encode

VOCAB = 97
EOS, PAD = 1, 0
SRC_LENGTHS = (9, 5, 2, 7)


def model_for(positions: str, seed: int = 0):
    """A tiny model whose greedy outputs vary by row and sometimes end early.

    Random small-init models repeat one token; 20x larger weights make them input-dependent,
    and a bias on EOS (about half the usual top-1 / top-2 logit gap) ends some rows early.
    """
    model = tiny_model(VOCAB, seed=seed, positions=positions, tie_embeddings=False,
                       final_logits_bias=True, relative_num_buckets=8,
                       relative_max_distance=16)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
        model.final_logits_bias[EOS] = 2.5
    return model


def batch():
    return padded_batch(VOCAB, src_lengths=SRC_LENGTHS, tgt_lengths=(1,) * len(SRC_LENGTHS))


def recompute_greedy(model, input_ids, attention_mask, max_new_tokens: int):
    """Reference: rerun the whole decoder on the full prefix at every step (no cache)."""
    cfg = model.config
    prefix = torch.full((input_ids.shape[0], 1), cfg.decoder_start_token_id)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids, prefix, attention_mask)[:, -1]
            token = logits.argmax(-1).masked_fill(finished, cfg.pad_token_id)
            prefix = torch.cat([prefix, token[:, None]], dim=1)
            finished |= token == cfg.eos_token_id
            if finished.all():
                break
    return prefix[:, 1:]


@pytest.mark.parametrize("positions", ["rotary", "t5_relative", "learned", "sinusoidal"])
def test_cached_greedy_equals_full_recompute(positions):
    model, b = model_for(positions), batch()
    ours = generate(model, b.input_ids, b.attention_mask, max_new_tokens=12)
    assert torch.equal(ours, recompute_greedy(model, b.input_ids, b.attention_mask, 12))
    assert len({tuple(r) for r in ours.tolist()}) > 1  # the rows really differ


def test_padding_does_not_change_any_row():
    model, b = model_for("rotary"), batch()
    together = generate(model, b.input_ids, b.attention_mask, max_new_tokens=10)
    for row, length in enumerate(SRC_LENGTHS):
        alone = generate(model, b.input_ids[row : row + 1, :length], max_new_tokens=10)
        width = alone.shape[1]
        assert torch.equal(together[row, :width], alone[0])
        assert (together[row, width:] == PAD).all()


def test_output_layout_eos_then_pad():
    model, b = model_for("rotary"), batch()
    out = generate(model, b.input_ids, b.attention_mask, max_new_tokens=12)
    assert out.dtype == torch.long and out.shape[0] == len(SRC_LENGTHS) and out.shape[1] <= 12
    ended = 0
    for row in out.tolist():
        if EOS in row:
            ended += 1
            end = row.index(EOS)
            assert all(t == PAD for t in row[end + 1 :])
    assert 0 < ended < len(SRC_LENGTHS)  # some rows stop early, others run to the limit


def test_encoder_runs_once_and_decoder_sees_one_new_token_per_step(monkeypatch):
    model, b = model_for("t5_relative"), batch()
    encodes, decode_widths = [], []
    real_encode, real_decode = model.encode, model.decode

    def counting_encode(*args, **kwargs):
        encodes.append(1)
        return real_encode(*args, **kwargs)

    def recording_decode(ids, *args, **kwargs):
        decode_widths.append((ids.shape[1], kwargs["cache"].offset))
        return real_decode(ids, *args, **kwargs)

    monkeypatch.setattr(model, "encode", counting_encode)
    monkeypatch.setattr(model, "decode", recording_decode)
    beam = GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=6, min_new_tokens=6)
    for config in (GenerationConfig(max_new_tokens=6, min_new_tokens=6), beam):
        encodes.clear(), decode_widths.clear()
        generate(model, b.input_ids, b.attention_mask, config=config)
        assert encodes == [1]
        assert decode_widths == [(1, step) for step in range(6)]


def test_beam_with_one_beam_equals_greedy():
    model, b = model_for("rotary"), batch()
    greedy = generate(model, b.input_ids, b.attention_mask, max_new_tokens=12)
    one_beam = GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=12)
    assert torch.equal(generate(model, b.input_ids, b.attention_mask, config=one_beam), greedy)
    # the beam search code itself with K=1: it stops at the first finished hypothesis
    with torch.no_grad():
        source = encode(model, b.input_ids, b.attention_mask)
        config = dataclasses.replace(one_beam, early_stopping=True)
        assert torch.equal(beam_search(model, source, config), greedy)


def test_beam_search_finds_a_likelier_sequence_than_greedy():
    model, b = model_for("rotary", seed=3), batch()
    config = GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=8, length_penalty=0.0)
    greedy = generate(model, b.input_ids, b.attention_mask, max_new_tokens=8)
    beam = generate(model, b.input_ids, b.attention_mask, config=config)
    greedy_lp, beam_lp = log_prob(model, b, greedy), log_prob(model, b, beam)
    assert (beam_lp >= greedy_lp - 1e-4).all() and (beam_lp > greedy_lp + 1e-3).any()


def log_prob(model, b, tokens):
    """Summed log-probability of each row's tokens up to and including its EOS."""
    start = torch.full((tokens.shape[0], 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        logits = model(b.input_ids, torch.cat([start, tokens[:, :-1]], 1), b.attention_mask)
    token_lp = logits.log_softmax(-1).gather(2, tokens[:, :, None])[:, :, 0]
    after_eos = (tokens == EOS).long().cumsum(1) - (tokens == EOS).long() > 0
    return token_lp.masked_fill(after_eos | (tokens == PAD) & ~(tokens == EOS), 0).sum(1)


def test_top_k_one_sampling_equals_greedy():
    model, b = model_for("rotary"), batch()
    greedy = generate(model, b.input_ids, b.attention_mask, max_new_tokens=12)
    config = GenerationConfig(strategy="sample", top_k=1, temperature=0.7, max_new_tokens=12)
    assert torch.equal(generate(model, b.input_ids, b.attention_mask, config=config), greedy)


def test_sampling_is_deterministic_given_a_seed():
    model, b = model_for("rotary"), batch()

    def sample(seed):
        config = GenerationConfig(strategy="sample", temperature=2.0, max_new_tokens=10, seed=seed)
        return generate(model, b.input_ids, b.attention_mask, config=config)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    gen = torch.Generator().manual_seed(5)
    config = GenerationConfig(strategy="sample", temperature=2.0, max_new_tokens=10)
    first = generate(model, b.input_ids, b.attention_mask, config=config, generator=gen)
    second = generate(model, b.input_ids, b.attention_mask, config=config, generator=gen)
    assert not torch.equal(first, second)  # a shared generator keeps drawing new numbers


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_min_new_tokens_and_no_repeat_ngram(strategy):
    model, b = model_for("rotary"), batch()
    knobs = {"beam": {"num_beams": 3}, "sample": {"top_k": 5}}.get(strategy, {})
    config = GenerationConfig(strategy=strategy, max_new_tokens=16, min_new_tokens=5,
                              no_repeat_ngram_size=2, **knobs)  # fmt: skip
    out = generate(model, b.input_ids, b.attention_mask, config=config)
    for row in out.tolist():
        assert EOS not in row[:5]
        body = [t for t in row if t != PAD]
        bigrams = list(zip([0, *body], body, strict=False))  # the decoder start token counts
        assert len(bigrams) == len(set(bigrams))


def test_generate_restores_training_mode_and_decodes_in_eval_mode():
    model, b = model_for("rotary"), batch()
    for module in model.modules():
        if hasattr(module, "p"):
            module.p = 0.5  # strong dropout: outputs would differ if it ran while generating
    model.eval()
    expected = generate(model, b.input_ids, b.attention_mask, max_new_tokens=4)
    assert not model.training
    model.train()
    torch.manual_seed(1)
    out = generate(model, b.input_ids, b.attention_mask, max_new_tokens=4)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(out, expected)
    # mixed modes (the decoder's layers training, the rest in eval) are restored as they were
    model.eval()
    model.decoder.layers.train()
    modes = [m.training for m in model.modules()]
    out = generate(model, b.input_ids, b.attention_mask, max_new_tokens=4)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(out, expected)


def test_repetition_penalty_by_hand():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    history = torch.tensor([[0, 1, 1]])
    expected = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    assert torch.equal(repetition_penalty(scores, history, 2.0), expected)


def test_repetition_penalty_divides_small_positive_scores():
    scores = torch.tensor([[0.5, 0.0, -0.5, 4.0]])  # all four seen; 0 stays 0 either way
    history = torch.tensor([[0, 1, 2, 3]])
    expected = torch.tensor([[0.25, 0.0, -1.0, 2.0]])
    assert torch.equal(repetition_penalty(scores, history, 2.0), expected)


def test_force_and_process_by_hand():
    """`process` applies each setting at its step: forced BOS at step 0, EOS forbidden before
    min_new_tokens, forced EOS at the last step, penalties everywhere; nothing when off."""
    scores = torch.tensor([[0.5, 1.0, 2.0, -1.0]])
    history = torch.tensor([[0, 3]])
    inf = float("-inf")
    assert force(scores, 2).tolist() == [[inf, inf, 0.0, inf]]
    off = GenerationConfig(max_new_tokens=3)
    assert all(torch.equal(process(scores, history, s, off, EOS), scores) for s in range(3))
    config = GenerationConfig(
        max_new_tokens=3, min_new_tokens=2, forced_bos_token_id=2, forced_eos_token_id=EOS
    )
    assert process(scores, history, 0, config, EOS).tolist() == [[inf, inf, 0.0, inf]]
    assert process(scores, history, 1, config, EOS).tolist() == [[0.5, inf, 2.0, -1.0]]
    assert process(scores, history, 2, config, EOS).tolist() == [[inf, 0.0, inf, inf]]
    penalised = GenerationConfig(max_new_tokens=3, repetition_penalty=2.0)
    assert process(scores, history, 1, penalised, EOS).tolist() == [[0.25, 1.0, 2.0, -2.0]]
    ngram = GenerationConfig(max_new_tokens=3, no_repeat_ngram_size=1)  # no token twice
    assert process(scores, history, 1, ngram, EOS).tolist() == [[inf, 1.0, 2.0, inf]]


def test_no_repeat_ngram_by_hand():
    scores = torch.zeros(2, 6)
    history = torch.tensor([[5, 2, 3, 2, 4, 2], [1, 2, 3, 4, 5, 1]])
    out = no_repeat_ngram(scores, history, 2)  # row 0 ends in 2: 2 was followed by 3 and 4
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [3, 4]
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [2]
    out3 = no_repeat_ngram(scores, history, 3)  # row 0 ends in (4, 2): never seen before
    assert not torch.isinf(out3[0]).any()
    assert torch.equal(no_repeat_ngram(scores, history[:, :1], 2), scores)


def test_no_repeat_ngram_trigrams_and_a_history_of_exactly_n():
    scores = torch.zeros(1, 6)
    out = no_repeat_ngram(scores, torch.tensor([[1, 2, 3, 4, 1, 2]]), 3)  # (1, 2) was -> 3
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [3]
    out = no_repeat_ngram(scores, torch.tensor([[5, 5]]), 2)  # the one bigram (5, 5) so far
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [5]


def test_forbid_eos_and_filters_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert forbid_eos(logits, 1)[0, 1] == float("-inf") and logits[0, 1] == 3.0
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    # probabilities of [3, 2, 1, 0]: 0.644, 0.237, 0.087, 0.032
    assert torch.isinf(top_p_filter(logits, 0.5)).tolist() == [[True, False, True, True]]
    assert torch.isinf(top_p_filter(logits, 0.85)).tolist() == [[True, False, False, True]]
    assert torch.isinf(top_p_filter(logits, 0.9)).tolist() == [[False, False, False, True]]


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"num_beams": 0, "strategy": "beam"}, "generate.num_beams=0 must be >= 1"),
        ({"strategy": "foo"}, "generate.strategy='foo' must be one of greedy, beam, sample"),
        ({"num_beams": 4}, "generate.num_beams=4 needs generate.strategy=beam"),
        ({"top_k": 5}, "generate.top_k=5 needs generate.strategy=sample"),
        ({"strategy": "sample", "top_p": 0.0}, "generate.top_p=0.0 must be in (0, 1]"),
        ({"max_new_tokens": 4, "min_new_tokens": 5}, "generate.min_new_tokens=5 must be in"),
        ({"temperature": "hot", "strategy": "sample"}, "generate.temperature='hot' must be float"),
    ],
)
def test_config_errors_name_the_key(knobs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        GenerationConfig(**knobs)


def test_config_from_dict_rejects_unknown_keys():
    assert GenerationConfig.from_dict({"num_beams": 2, "strategy": "beam"}).num_beams == 2
    with pytest.raises(ValueError, match="unknown key generate\\."):
        GenerationConfig.from_dict({"beams": 2})


def exhaustive_best(model, input_ids, attention_mask, t: int, length_penalty: float):
    """Reference beam: score every sequence of up to t new tokens that ends at its first EOS
    (or at t tokens) by sum(log p) / length**length_penalty, by full forward passes without
    the cache; the best per row, padded with PAD to the longest best."""
    import itertools

    v, start = model.config.vocab_size, model.config.decoder_start_token_id
    best = []
    for row in range(input_ids.shape[0]):
        candidates = []
        for length in range(1, t + 1):
            seqs = [
                seq
                for seq in itertools.product(range(v), repeat=length)
                if EOS not in seq[:-1] and (length == t or seq[-1] == EOS)
            ]
            tokens = torch.tensor(seqs)  # (N, length)
            prefix = torch.cat([torch.full((len(seqs), 1), start), tokens[:, :-1]], dim=1)
            ids = input_ids[row].expand(len(seqs), -1)
            mask = attention_mask[row].expand(len(seqs), -1)
            with torch.no_grad():
                logp = model(ids, prefix, mask).float().log_softmax(-1)  # (N, length, V)
            totals = logp.gather(2, tokens[:, :, None])[:, :, 0].sum(1) / length**length_penalty
            candidates += zip(totals.tolist(), seqs, strict=True)
        best.append(max(candidates)[1])
    width = max(len(seq) for seq in best)
    return torch.tensor([[*seq, *[PAD] * (width - len(seq))] for seq in best])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_with_every_prefix_kept_is_the_exhaustive_best(length_penalty):
    """With K >= V**(t - 1) beams nothing is ever pruned: the search must return the best of
    all V + V**2 + ... sequences under its own score, found here by brute force (6-token
    vocabulary, 3 new tokens: 36 beams)."""
    v, t = 6, 3
    model = tiny_model(v, seed=3, tie_embeddings=False, final_logits_bias=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20.0)  # sharper, input-dependent distributions (see model_for)
        model.final_logits_bias[EOS] = 3.0  # short hypotheses compete with long ones
    lengths = (6, 4, 3, 5, 2, 6, 1, 3, 5, 4, 2, 6)
    b = padded_batch(v, src_lengths=lengths, tgt_lengths=(1,) * len(lengths), seed=2)
    config = GenerationConfig(
        strategy="beam", num_beams=v ** (t - 1), max_new_tokens=t, length_penalty=length_penalty
    )
    beam = generate(model, b.input_ids, b.attention_mask, config=config)
    expected = exhaustive_best(model, b.input_ids, b.attention_mask, t, length_penalty)
    assert beam.tolist() == expected.tolist()
    greedy = generate(model, b.input_ids, b.attention_mask, max_new_tokens=t)
    differ = (beam[:, : greedy.shape[1]] != greedy[:, : beam.shape[1]]).any(1)
    assert differ.any()  # the search matters on these rows
