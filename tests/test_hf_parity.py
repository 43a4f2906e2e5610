"""Logits parity with Hugging Face T5 (v1.0, v1.1) and BART, both directions for T5.

HF models are built from configs with random weights (never from the hub); every 1-D
parameter (norm gains, biases) is jittered so a mis-mapped norm or bias cannot hide behind
its default initial value. Each converted model is checked plain and with `s2s.kernels`
installed. Measured errors are printed (`pytest -s`).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.model import jitter, load_preset, padded_batch, with_kernels
from torch import nn
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from s2s import ModelConfig
from s2s.interop.hf import config_from_hf, config_to_t5, from_hf, to_hf
from s2s.model import Seq2SeqTransformer

MAX_ABS_ERROR = 1e-4

T5_SHAPES = {
    "A": dict(vocab_size=120, d_model=64, d_kv=16, num_heads=4, d_ff=96, num_layers=2),
    # H * Dh = 60 != d_model = 48, odd layer counts, small buckets so the log range is used
    "B": dict(
        vocab_size=211, d_model=48, d_kv=20, num_heads=3, d_ff=80, num_layers=3,
        num_decoder_layers=1, relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    ),
}  # fmt: skip
BART_SHAPES = {
    "A": dict(
        vocab_size=150, d_model=64, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=96, decoder_ffn_dim=96, encoder_layers=2, decoder_layers=2,
    ),
    "B": dict(
        vocab_size=211, d_model=48, encoder_attention_heads=3, decoder_attention_heads=3,
        encoder_ffn_dim=80, decoder_ffn_dim=80, encoder_layers=1, decoder_layers=3,
        scale_embedding=True, activation_function="relu", tie_word_embeddings=False,
    ),
}  # fmt: skip
SRC_LENGTHS, TGT_LENGTHS = (13, 9, 3, 1), (11, 6, 11, 2)


def make_t5(shape: str, version: str, untied_head: bool = False) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    ffn = {"v1.0": "relu", "v1.1": "gated-gelu"}[version]
    config = T5Config(
        **T5_SHAPES[shape], feed_forward_proj=ffn, tie_word_embeddings=version == "v1.0",
        dropout_rate=0.1, decoder_start_token_id=0,
    )  # fmt: skip
    hf = T5ForConditionalGeneration(config)
    if untied_head:  # as in released v1.1 checkpoints (transformers 5 ties when built from config)
        hf.lm_head.weight = nn.Parameter(torch.randn(hf.lm_head.weight.shape))
    return jitter(hf, seed=1)


def make_bart(shape: str) -> BartForConditionalGeneration:
    torch.manual_seed(0)
    hf = BartForConditionalGeneration(BartConfig(**BART_SHAPES[shape]))
    # transformers 5 unties the stacks' token embeddings along with the head; share them
    # again, as in checkpoints, which store one matrix
    hf.model.encoder.embed_tokens.weight = hf.model.shared.weight
    hf.model.decoder.embed_tokens.weight = hf.model.shared.weight
    return jitter(hf, seed=1)


def hf_logits(hf, batch):
    with torch.no_grad():
        return hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
            decoder_attention_mask=batch.decoder_attention_mask,
        ).logits


def our_logits(model, batch):
    with torch.no_grad():
        return model(
            batch.input_ids, batch.decoder_input_ids, batch.attention_mask,
            batch.decoder_attention_mask,
        )  # fmt: skip


def assert_parity(label, ours, theirs):
    error = (ours - theirs).abs().max().item()
    print(f"PARITY {label}: max abs error {error:.2e} (logit scale {theirs.abs().max():.1f})")
    assert ours.shape == theirs.shape
    assert error <= MAX_ABS_ERROR


def assert_parity_plain_and_kernels(label, model, batch, theirs):
    """`assert_parity` for `model` as it is (plain), then with the kernel twins installed."""
    assert_parity(label, our_logits(model, batch), theirs)
    assert_parity(f"{label} kernels", our_logits(with_kernels(model), batch), theirs)


def batch_for(vocab: int, pad: int):
    return padded_batch(vocab, src_lengths=SRC_LENGTHS, tgt_lengths=TGT_LENGTHS, pad=pad)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("shape", sorted(T5_SHAPES))
@pytest.mark.parametrize(
    ("version", "untied_head"), [("v1.0", False), ("v1.1", False), ("v1.1", True)]
)
def test_from_hf_t5(version, untied_head, shape, backend):
    hf = make_t5(shape, version, untied_head)
    model = from_hf(hf).set_attention_backend(backend).eval()
    assert model.config.scale_logits == (version == "v1.0")
    assert model.config.gated_ffn == (version == "v1.1")
    assert model.config.tie_embeddings == (not untied_head)
    batch = batch_for(hf.config.vocab_size, pad=0)
    label = f"from_hf T5 {version}{' untied' if untied_head else ''} shape {shape} {backend}"
    assert_parity_plain_and_kernels(label, model, batch, hf_logits(hf, batch))


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("shape", sorted(BART_SHAPES))
def test_from_hf_bart(shape, backend):
    hf = make_bart(shape)
    model = from_hf(hf).set_attention_backend(backend).eval()
    assert model.config.tie_embeddings == (shape == "A")
    batch = batch_for(hf.config.vocab_size, pad=hf.config.pad_token_id)
    label = f"from_hf BART shape {shape} {backend}"
    assert_parity_plain_and_kernels(label, model, batch, hf_logits(hf, batch))


def our_t5_model(shape: str, version: str) -> Seq2SeqTransformer:
    c = T5_SHAPES[shape]
    config = ModelConfig(
        vocab_size=c["vocab_size"], d_model=c["d_model"], d_ff=c["d_ff"], n_heads=c["num_heads"],
        d_head=c["d_kv"], n_encoder_layers=c["num_layers"],
        n_decoder_layers=c.get("num_decoder_layers", c["num_layers"]),
        relative_num_buckets=c.get("relative_attention_num_buckets", 32),
        relative_max_distance=c.get("relative_attention_max_distance", 128),
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, positions="t5_relative",
        scale_attention=False, activation="relu" if version == "v1.0" else "gelu_tanh",
        gated_ffn=version == "v1.1", tie_embeddings=version == "v1.0",
        scale_logits=version == "v1.0",
    )  # fmt: skip
    torch.manual_seed(0)
    return jitter(Seq2SeqTransformer(config), seed=2)


@pytest.mark.parametrize("shape", sorted(T5_SHAPES))
@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_to_hf_t5(version, shape):
    model = our_t5_model(shape, version)
    hf = to_hf(model)
    assert not hf.training
    batch = batch_for(model.config.vocab_size, pad=0)
    assert_parity(
        f"to_hf T5 {version} shape {shape}", our_logits(model, batch), hf_logits(hf, batch)
    )
    assert from_hf(hf).config == model.config  # the config survives the round trip


@pytest.mark.parametrize("kind", ["t5_v1.1_untied", "bart"])
def test_from_hf_local_directory(kind, tmp_path):
    hf = make_t5("B", "v1.1", untied_head=True) if kind != "bart" else make_bart("A")
    hf.save_pretrained(tmp_path)
    model = from_hf(tmp_path).eval()
    batch = batch_for(hf.config.vocab_size, pad=hf.config.pad_token_id)
    assert_parity(f"from_hf {kind} directory", our_logits(model, batch), hf_logits(hf, batch))
    model = from_hf(str(tmp_path))  # a plain string path works too
    assert model.config == from_hf(hf).config


def test_to_hf_model_survives_save_pretrained(tmp_path):
    model = our_t5_model("A", "v1.1")
    to_hf(model).save_pretrained(tmp_path)
    reloaded = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = batch_for(model.config.vocab_size, pad=0)
    assert_parity(
        "to_hf T5 v1.1 saved+reloaded", our_logits(model, batch), hf_logits(reloaded, batch)
    )


def test_presets_equal_configs_converted_from_hf():
    assert config_from_hf(T5Config()) == load_preset("t5_small")
    with torch.device("meta"):
        hf_count = sum(p.numel() for p in T5ForConditionalGeneration(T5Config()).parameters())
        ours = sum(p.numel() for p in Seq2SeqTransformer(load_preset("t5_small")).parameters())
    assert hf_count == ours == 60_506_624
    bart_base = BartConfig(
        d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
        attention_dropout=0.1, activation_dropout=0.1,
    )  # fmt: skip
    assert config_from_hf(bart_base) == load_preset("bart_base")
    with torch.device("meta"):
        hf_count = sum(p.numel() for p in BartForConditionalGeneration(bart_base).parameters())
        ours = sum(p.numel() for p in Seq2SeqTransformer(load_preset("bart_base")).parameters())
    assert hf_count - ours == 2 * 2 * 768  # HF's two tables each keep 2 unused rows


def test_to_hf_refuses_what_t5_cannot_express():
    config = dataclasses.replace(
        load_preset("t5_small"), positions="rotary", norm="layernorm", attention_bias=True
    )
    with pytest.raises(ValueError, match=r"positions='rotary'.*norm='layernorm'.*attention_bias"):
        config_to_t5(config)
    gated_exact = dataclasses.replace(load_preset("t5_small"), activation="gelu", gated_ffn=True)
    with pytest.raises(ValueError, match="gated exact GELU"):
        to_hf(
            Seq2SeqTransformer(dataclasses.replace(gated_exact, vocab_size=64, n_encoder_layers=1))
        )


def test_from_hf_refuses_unsupported_models():
    with pytest.raises(ValueError, match="'gelu_fast' is not supported"):
        config_from_hf(T5Config(feed_forward_proj="gelu_fast"))
    with pytest.raises(ValueError, match="encoder_ffn_dim=64 != decoder_ffn_dim=32"):
        config_from_hf(BartConfig(encoder_ffn_dim=64, decoder_ffn_dim=32))
    distinct = BartForConditionalGeneration(BartConfig(**BART_SHAPES["B"]))  # 3 token tables
    with pytest.raises(ValueError, match="shares a single token embedding"):
        from_hf(distinct)
    with pytest.raises(TypeError, match="got Linear"):
        from_hf(nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="not a local save_pretrained directory"):
        from_hf("/nonexistent/t5-small")
