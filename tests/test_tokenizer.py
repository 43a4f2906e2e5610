"""Tokenizer: lossless round trip, special-token ids, <mask> handling, save / load."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from s2s.tokenizer import BOS, EOS, MASK, PAD, Tokenizer, TokenizerConfig, TokenizerError, sentinel


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_on_arbitrary_unicode(tokenizer, text):
    # Byte-level BPE has no unknown token: every string comes back exactly. Only the fill-in
    # tokens (<mask>, <extra_id_N>) are recognised in text; "<pad>", "</s>", "<s>" are not.
    assume("<mask>" not in text and "<extra_id_" not in text)
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=6))
def test_batch_encoding_equals_single(tokenizer, texts):
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
    assert tokenizer.decode_batch(tokenizer.encode_batch(texts)) == texts


def test_special_token_ids_are_fixed(tokenizer):
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id, tokenizer.mask_id) == (0, 1, 2, 3)
    assert tokenizer.sentinel_ids == list(range(4, 12))  # num_sentinels=8 in conftest
    for token, i in [(PAD, 0), (EOS, 1), (BOS, 2), (MASK, 3), (sentinel(7), 11)]:
        assert tokenizer.token_to_id(token) == i
    assert tokenizer.special_ids == list(range(12))
    assert tokenizer.token_to_id(sentinel(8)) is None


def test_literal_mask_becomes_the_mask_token(tokenizer):
    ids = tokenizer.encode("How <mask> doing?")
    assert ids.count(tokenizer.mask_id) == 1
    # The mask swallows the space before it, exactly like a span masked out of the clean text.
    clean = tokenizer.encode("How are you doing?")
    how, doing = tokenizer.encode("How"), tokenizer.encode(" doing?")
    assert clean[: len(how)] == how and clean[-len(doing) :] == doing
    assert ids == how + [tokenizer.mask_id] + doing
    assert tokenizer.decode(ids) == "How doing?"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "How<mask> doing?"


def test_other_special_strings_are_plain_text(tokenizer):
    for text in ["<pad>", "</s>", "a <s> b", "<pad></s><s>"]:
        ids = tokenizer.encode(text)
        assert not {tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id} & set(ids)
        assert tokenizer.decode(ids) == text
    # ...while the ids themselves decode to nothing (skipped) or to their names.
    ids = [tokenizer.bos_id, *tokenizer.encode("hi"), tokenizer.eos_id, tokenizer.pad_id]
    assert tokenizer.decode(ids) == "hi"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<s>hi</s><pad>"


def test_sentinels_in_text_become_sentinel_tokens(tokenizer):
    ids = tokenizer.encode("To be <extra_id_0> to be <extra_id_1>")
    assert tokenizer.sentinel_ids[0] in ids and tokenizer.sentinel_ids[1] in ids


def test_save_and_load_give_the_same_tokenizer(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "run")  # a directory: writes run/tokenizer.json
    assert path == tmp_path / "run" / "tokenizer.json"
    assert not list(path.parent.glob(".tokenizer.*"))  # no temporary left behind
    loaded = Tokenizer.load(path.parent)
    text = "Whether 'tis nobler <mask> to suffer"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.sentinel_ids == tokenizer.sentinel_ids
    assert loaded.vocab_size == tokenizer.vocab_size


def test_config_path_loads_instead_of_training(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_config(TokenizerConfig(path=str(path)), texts=["ignored"])
    assert loaded.vocab_size == tokenizer.vocab_size
    trained = Tokenizer.from_config(
        TokenizerConfig(vocab_size=600, num_sentinels=2), texts=["a b c d"] * 10
    )
    assert trained.sentinel_ids == [4, 5]


def test_training_respects_vocab_size(corpus):
    small = Tokenizer.train(corpus, vocab_size=520, num_sentinels=0)
    assert small.vocab_size <= 520
    assert small.sentinel_ids == []


def test_word_start_and_sentence_end_tables(tokenizer):
    ids = tokenizer.encode("To be, or not to be.")
    starts = tokenizer.word_start_table()[ids]
    words = [tokenizer.decode([i]) for i in ids]
    assert starts.tolist() == [w[0].isspace() for w in words]
    assert tokenizer.sentence_end_table()[ids[-1]]
    assert not tokenizer.sentence_end_table()[ids[0]]


def test_line_break_table(tokenizer):
    text = "To be, or not\nto be.\n\nHamlet"
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    breaks = tokenizer.line_break_table()[encoding.ids]
    # the tokens whose characters in the original text (the tokenizer's offsets) hold a "\n"
    assert breaks.tolist() == ["\n" in text[start:end] for start, end in encoding.offsets]
    assert 2 <= breaks.sum() <= 3  # one break token, and "\n\n" as one or two
    assert not tokenizer.line_break_table()[tokenizer.special_ids].any()


def test_bad_tokenizer_files_give_clear_errors(tmp_path, tokenizer):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match=r"bad\.json: not a valid tokenizer\.json"):
        Tokenizer.load(bad)
    # A valid tokenizer without a pad token is refused, naming the file and the token.
    data = json.loads(tokenizer.backend.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != PAD]
    del data["model"]["vocab"][PAD]
    nopad = tmp_path / "nopad.json"
    nopad.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=r"nopad\.json: the tokenizer has no <pad> token"):
        Tokenizer.load(nopad)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"vocab_size": 100}, "tokenizer.vocab_size"), ({"num_sentinels": -1}, "num_sentinels")],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        TokenizerConfig(**kwargs)
