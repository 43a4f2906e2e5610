"""Model helpers: tiny configs and models, padded batches (all seeded), presets, jitter."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from s2s import ModelConfig, kernels
from s2s.model import Seq2SeqTransformer

POSITIONS = ("learned", "sinusoidal", "t5_relative", "rotary", "none")
VOCAB = 97
PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model"


def tiny_config(**overrides) -> ModelConfig:
    """A very small config (2+2 layers, d_model 32) with dropout off."""
    base = ModelConfig(
        vocab_size=VOCAB,
        d_model=32,
        d_ff=48,
        n_heads=4,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_positions=64,
        relative_num_buckets=8,
        relative_max_distance=16,
    )
    return dataclasses.replace(base, **overrides)


def tiny_model(seed: int = 0, attention_backend: str = "sdpa", **overrides) -> Seq2SeqTransformer:
    torch.manual_seed(seed)  # the trainer seeds init the same way
    model = Seq2SeqTransformer(tiny_config(**overrides))
    return model.set_attention_backend(attention_backend).eval()


def with_kernels(model: Seq2SeqTransformer) -> Seq2SeqTransformer:
    """`kernels.install(model)` whatever S2S_KERNELS says (for the kernels' own tests)."""
    with mock.patch.dict(os.environ, {kernels.ENV: "1"}):
        return kernels.install(model)


def kernel_model(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    """`tiny_model` with the kernel twins installed."""
    return with_kernels(tiny_model(seed, **overrides))


@dataclass
class Batch:
    input_ids: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S), 1 = real token, right padding
    decoder_input_ids: Tensor  # (B, T)
    decoder_attention_mask: Tensor  # (B, T)

    def to(self, device: str | torch.device) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def padded_batch(
    vocab: int = VOCAB, *, src_lengths=(9, 5, 2), tgt_lengths=(7, 4, 7), seed: int = 0, pad: int = 0
) -> Batch:
    """Random ids in [2, vocab) with right padding to the longest length in each side."""
    gen = torch.Generator().manual_seed(seed)

    def side(lengths):
        ids = torch.randint(2, vocab, (len(lengths), max(lengths)), generator=gen)
        mask = torch.zeros_like(ids)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        return ids.masked_fill(mask == 0, pad), mask

    src, src_mask = side(src_lengths)
    tgt, tgt_mask = side(tgt_lengths)
    return Batch(src, src_mask, tgt, tgt_mask)


def decode_step_by_step(model, batch, first_chunk=1, capacity=0):
    """Logits of decoding `batch`'s targets: a first chunk, then one token a call."""
    memory = model.encode(batch.input_ids, batch.attention_mask)
    ids = batch.decoder_input_ids
    cache = model.new_cache(capacity)
    out = model.decode(ids[:, :first_chunk], memory, batch.attention_mask, cache=cache)
    pieces, cache = [out.logits], out.cache
    for t in range(first_chunk, ids.shape[1]):
        out = model.decode(ids[:, t : t + 1], memory, batch.attention_mask, cache=cache)
        assert out.cache is cache and cache.offset == t + 1
        pieces.append(out.logits)
    return torch.cat(pieces, dim=1), cache


def load_preset(name: str) -> ModelConfig:
    """The ModelConfig of `conf/model/<name>.yaml`, composed as Hydra does (`defaults:`)."""
    return ModelConfig.from_dict(preset_values(name))


def preset_values(name: str) -> dict:
    """The composed keys of a model preset, in order."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PRESETS.parent), version_base="1.3"):
        return OmegaConf.to_container(
            compose(config_name="train", overrides=[f"model={name}"]).model
        )


def jitter(model: nn.Module, seed: int) -> nn.Module:
    """Move every 1-D parameter (norm gains, biases) and a final logits bias off its initial
    value, so a mis-mapped one cannot hide behind it; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
        if getattr(model, "final_logits_bias", None) is not None:
            bias = model.final_logits_bias
            bias.copy_(0.2 * torch.randn(bias.shape, generator=gen))
    return model.eval()


def long_padded_batch(vocab: int = VOCAB) -> Batch:
    """A padded batch long enough (S = T = 40 > 2 * 16, the widened head size of the tiny
    model's Dh = 8) that SDPA carries the padding in the keys rather than in a combined
    (B, H, T, S) mask (`s2s.model.attention.sdpa`)."""
    return padded_batch(vocab, src_lengths=(40, 23, 3), tgt_lengths=(40, 31, 12))
