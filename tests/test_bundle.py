"""Bundles and checkpoints: round trips give the same logits, loading never unpickles,
unsafe or damaged files are refused with one clear error, exports are all-or-nothing."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from helpers.generation import tiny_model, write_ckpt
from safetensors.torch import load_file

from s2s import load_pretrained
from s2s.bundle import BUNDLE_FILES, BundleError, save_bundle
from s2s.checkpoint import CheckpointError, read_checkpoint
from s2s.export import main as export_main


class NotATensor:
    """Any class: unpickling it would run code a weights-only loader must not allow."""

    def __init__(self) -> None:
        self.payload = "anything"


def model_and_batch(tokenizer, **overrides):
    model = tiny_model(tokenizer.vocab_size, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    ids = torch.tensor([tokenizer.encode("To be, or not to be") + [tokenizer.eos_id]])
    return model, ids


def logits(model, ids):
    with torch.no_grad():
        return model(ids, ids[:, :5])


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": False, "positions": "learned", "final_logits_bias": True}],
    ids=["tied", "untied-bias"],
)
def test_bundle_round_trip_gives_the_same_logits(tokenizer, tmp_path, overrides):
    model, ids = model_and_batch(tokenizer, **overrides)
    save_bundle(model, tokenizer, tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == sorted(BUNDLE_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary leftovers
    loaded, loaded_tokenizer = load_pretrained(tmp_path / "bundle")
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    assert loaded_tokenizer.encode("How <mask> doing?") == tokenizer.encode("How <mask> doing?")
    stored = load_file(tmp_path / "bundle" / "model.safetensors")
    shared = {"embed.weight", "encoder.embed.tokens.weight", "decoder.embed.tokens.weight"}
    assert len(shared & set(stored)) == 1  # the tied embedding is stored once
    if loaded.lm_head is None:
        assert loaded.embed.weight is loaded.decoder.embed.tokens.weight


def test_export_cli_from_ckpt_and_loading_a_bundle_never_unpickles(
    tokenizer, tmp_path, monkeypatch, capsys
):
    model, ids = model_and_batch(tokenizer)
    ckpt = write_ckpt(tmp_path / "last.ckpt", model, tokenizer, epoch=3)
    from_ckpt, _ = load_pretrained(ckpt)
    assert torch.equal(logits(from_ckpt, ids), logits(model, ids))
    assert export_main([str(ckpt), str(tmp_path / "bundle")]) == 0

    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded, _ = load_pretrained(tmp_path / "bundle")
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_ckpt_holding_a_pickled_object_is_refused(tokenizer, tmp_path):
    model, _ = model_and_batch(tokenizer)
    ckpt = write_ckpt(tmp_path / "evil.ckpt", model, tokenizer, callbacks=NotATensor())
    for load in (read_checkpoint, load_pretrained):
        with pytest.raises(CheckpointError, match="refused"):
            load(ckpt)


def test_damaged_checkpoints_and_bundles_give_one_clear_error(tokenizer, tmp_path):
    model, _ = model_and_batch(tokenizer)
    save_bundle(model, tokenizer, tmp_path / "bundle")
    (tmp_path / "bundle" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"missing tokenizer.json"):
        load_pretrained(tmp_path / "bundle")

    save_bundle(model, tokenizer, tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"model\.safetensors: not readable weights"):
        load_pretrained(tmp_path / "cut")

    save_bundle(tiny_model(tokenizer.vocab_size, d_model=64), tokenizer, tmp_path / "other")
    (tmp_path / "cut" / "model.safetensors").write_bytes(
        (tmp_path / "other" / "model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match="weights do not fit the model config"):
        load_pretrained(tmp_path / "cut")

    (tmp_path / "garbage.ckpt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt: "):
        load_pretrained(tmp_path / "garbage.ckpt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_pretrained(tmp_path / "missing.ckpt")


def test_hf_export_loads_in_transformers_with_the_same_logits(tokenizer, tmp_path):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model, ids = model_and_batch(
        tokenizer, positions="t5_relative", norm="rmsnorm", scale_attention=False,
        gated_ffn=True, activation="gelu_tanh", tie_embeddings=False,
    )  # fmt: skip
    ckpt = write_ckpt(tmp_path / "t5.ckpt", model, tokenizer)
    assert export_main([str(ckpt), str(tmp_path / "hf"), "--format", "hf"]) == 0
    hf = T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
    assert (theirs - logits(model, ids)).abs().max() < 1e-4
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    # framed as the model reads it: the text, then </s> (T5's convention)
    expected = [*tokenizer.encode("To be, or not"), tokenizer.eos_id]
    assert hf_tokenizer("To be, or not").input_ids == expected
    assert hf_tokenizer.pad_token_id == tokenizer.pad_id


def test_hf_export_of_a_non_t5_config_fails_cleanly(tokenizer, tmp_path, capsys):
    model, _ = model_and_batch(tokenizer)  # rotary positions: T5 cannot express them
    ckpt = write_ckpt(tmp_path / "rotary.ckpt", model, tokenizer)
    assert export_main([str(ckpt), str(tmp_path / "hf"), "--format", "hf"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.positions='rotary': Hugging Face")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rotary.ckpt"]  # nothing left behind


def test_a_failed_write_leaves_an_existing_bundle_untouched(tokenizer, tmp_path, monkeypatch):
    model, _ = model_and_batch(tokenizer)
    save_bundle(model, tokenizer, tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in (tmp_path / "bundle").iterdir()}

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save", broken_save)
    other = tiny_model(tokenizer.vocab_size, seed=5)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(other, tokenizer, tmp_path / "bundle")
    after = {p.name: p.read_bytes() for p in (tmp_path / "bundle").iterdir()}
    assert after == before
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["bundle"]
