"""Token-for-token parity of `generate` with Hugging Face `generate` on converted models.

Random HF T5 v1.0, T5 v1.1 and BART models (built from configs, never downloaded) are
converted with `from_hf`, and each is checked twice: plain and with `s2s.kernels` installed
(decode weights, flat steps). Both sides decode the same right-padded batch of prompts of
different lengths. HF's output starts with the decoder start token and, in beam search,
fills the tail after EOS with EOS when pad_token_id == 0 (`pad or eos` in its code), so HF
rows are compared after dropping the start token and padding after the first EOS.
Random models repeat themselves; larger initial weights make the rows differ, and a bias
towards EOS ends some early, so stopping per row is part of what is compared.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from helpers.model import jitter, padded_batch, with_kernels
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from s2s.generation import GenerationConfig, generate
from s2s.interop.hf import from_hf

SRC_LENGTHS = (13, 9, 3, 1, 7, 5)
MAX_NEW = 14
SMALL = dict(d_model=64, num_heads=4, d_kv=16, d_ff=96, num_layers=2, dropout_rate=0.0)


def t5(version: str) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=120, **SMALL, feed_forward_proj={"v1.0": "relu", "v1.1": "gated-gelu"}[version],
        tie_word_embeddings=version == "v1.0", decoder_start_token_id=0, initializer_factor=30.0,
    )  # fmt: skip
    hf = jitter(T5ForConditionalGeneration(config), seed=1)
    with torch.no_grad():
        hf.lm_head.weight[config.eos_token_id] *= 1.5
    return hf


def bart() -> BartForConditionalGeneration:
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=150, d_model=64, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=96, decoder_ffn_dim=96, encoder_layers=2, decoder_layers=2,
        dropout=0.0, init_std=0.6,
    )  # fmt: skip
    hf = BartForConditionalGeneration(config)
    hf.model.encoder.embed_tokens.weight = hf.model.shared.weight  # one table, as checkpoints
    hf.model.decoder.embed_tokens.weight = hf.model.shared.weight
    hf = jitter(hf, seed=1)
    with torch.no_grad():
        hf.final_logits_bias.zero_()
        hf.final_logits_bias[0, config.eos_token_id] = 6.0
    return hf


@pytest.fixture(scope="module", params=["t5-v1.0", "t5-v1.1", "bart"])
def pair(request):
    hf = {"t5-v1.0": lambda: t5("v1.0"), "t5-v1.1": lambda: t5("v1.1"), "bart": bart}
    hf = hf[request.param]().eval()
    plain = from_hf(hf).eval()
    return hf, (plain, with_kernels(copy.deepcopy(plain)))


def prompts(hf):
    n, pad = len(SRC_LENGTHS), hf.config.pad_token_id
    return padded_batch(hf.config.vocab_size, src_lengths=SRC_LENGTHS, tgt_lengths=(1,) * n,
                        seed=3, pad=pad)  # fmt: skip


def hf_generate(hf, batch, config: GenerationConfig) -> torch.Tensor:
    """HF `generate` with every knob set explicitly (no model-specific defaults such as BART's
    forced EOS), returning new tokens in our layout."""
    knobs = dict(
        max_new_tokens=config.max_new_tokens, min_new_tokens=config.min_new_tokens,
        do_sample=False, num_beams=config.num_beams, length_penalty=config.length_penalty,
        early_stopping=config.early_stopping, repetition_penalty=config.repetition_penalty,
        no_repeat_ngram_size=config.no_repeat_ngram_size, forced_bos_token_id=None,
        forced_eos_token_id=None, num_return_sequences=1,
    )  # fmt: skip
    generation_config = hf.generation_config
    for key, value in knobs.items():
        setattr(generation_config, key, value)
    with torch.no_grad():
        out = hf.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return pad_after_eos(out[:, 1:], hf.config.eos_token_id, hf.config.pad_token_id)


def pad_after_eos(tokens: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    is_eos = (tokens == eos).long()
    after = (is_eos.cumsum(1) - is_eos) > 0
    return tokens.masked_fill(after, pad)


def assert_same(ours, theirs):
    print(f"\n{ours}")
    assert torch.equal(ours, theirs)
    assert len({tuple(row) for row in ours.tolist()}) > 1  # a meaningful comparison


GREEDY = [
    GenerationConfig(max_new_tokens=MAX_NEW),
    GenerationConfig(
        max_new_tokens=MAX_NEW, min_new_tokens=4, repetition_penalty=1.3, no_repeat_ngram_size=2
    ),
]
BEAM = [
    GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=MAX_NEW),
    GenerationConfig(
        strategy="beam",
        num_beams=3,
        max_new_tokens=MAX_NEW,
        length_penalty=0.5,
        early_stopping=True,
    ),
    GenerationConfig(
        strategy="beam",
        num_beams=4,
        max_new_tokens=MAX_NEW,
        length_penalty=2.0,
        no_repeat_ngram_size=3,
        min_new_tokens=2,
    ),
]


@pytest.mark.parametrize("config", GREEDY, ids=["plain", "processors"])
def test_greedy_matches_transformers(pair, config):
    hf, models = pair
    batch = prompts(hf)
    theirs = hf_generate(hf, batch, config)
    for ours in models:  # plain, then with the kernels
        assert_same(generate(ours, batch.input_ids, batch.attention_mask, config=config), theirs)


@pytest.mark.parametrize("config", BEAM, ids=["default", "early-stop", "long-penalised"])
def test_beam_search_matches_transformers(pair, config):
    hf, models = pair
    batch = prompts(hf)
    theirs = hf_generate(hf, batch, config)
    for ours in models:  # plain, then with the kernels
        assert_same(generate(ours, batch.input_ids, batch.attention_mask, config=config), theirs)


def test_transformers_version_is_the_one_checked():
    # Beam stopping heuristics have changed between transformers releases; the parity above
    # was established against 5.x.
    assert int(transformers.__version__.split(".")[0]) >= 5
