"""The encoder and decoder stacks: embeddings, positions, layers, final norm.

Notation: B batch, S source length, T target length, D model dim, H heads, Dh head dim.

Each stack owns its own positional module (learned table, T5 bias table or rotary angles)
and computes positions and the attention mask ONCE per forward pass, sharing them across
all of its layers (T5 likewise keeps the relative bias only in its first layer).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from s2s.config import ModelConfig
from s2s.model.attention import build_mask, mask_dtype
from s2s.model.cache import DecoderCache
from s2s.model.layers import DecoderLayer, EncoderLayer
from s2s.model.norms import make_norm
from s2s.model.positions import (
    LearnedPositions,
    RelativePositionBias,
    Rotary,
    RotaryAngles,
    sinusoidal_positions,
)


class InputEmbedding(nn.Module):
    """Token embedding (shared between stacks) * scale + absolute positions, norm, dropout."""

    def __init__(self, config: ModelConfig, tokens: nn.Embedding) -> None:
        super().__init__()
        self.tokens = tokens
        self.scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
        self.positions = config.positions
        self.learned = (
            LearnedPositions(config.max_positions, config.d_model)
            if config.positions == "learned"
            else None
        )
        self.norm = (
            make_norm(config.norm, config.d_model, config.norm_eps)
            if config.embedding_norm
            else None
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        """ids (B, L) -> (B, L, D); `offset` is the absolute position of ids[:, 0]."""
        x = self.tokens(ids)  # (B, L, D)
        if self.scale != 1.0:
            x = x * self.scale
        if self.learned is not None:
            x = x + self.learned(ids.shape[1], offset)
        elif self.positions == "sinusoidal":
            x = x + sinusoidal_positions(
                ids.shape[1], x.shape[-1], offset, device=x.device, dtype=x.dtype
            )
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class _Stack(nn.Module):
    """What the encoder and decoder share: embedding, relative bias or rotary, final norm."""

    # Activation checkpointing (Chen et al. 2016): when True, training keeps only each layer's
    # input and recomputes its activations in the backward pass: memory per layer ~ one
    # (B, T, D) tensor instead of all attention and feed-forward intermediates, for ~1/3 more
    # compute. A run-time choice, set by Seq2SeqTransformer.checkpoint_activations().
    checkpoint_layers = False

    def __init__(self, config: ModelConfig, tokens: nn.Embedding, *, bidirectional: bool):
        super().__init__()
        self.embed = InputEmbedding(config, tokens)
        self.relative_bias = (
            RelativePositionBias(
                config.relative_num_buckets,
                config.relative_max_distance,
                config.n_heads,
                bidirectional=bidirectional,
            )
            if config.positions == "t5_relative"
            else None
        )
        self.rotary = (
            Rotary(config.head_dim, config.rotary_base) if config.positions == "rotary" else None
        )
        self.final_norm = (
            make_norm(config.norm, config.d_model, config.norm_eps) if config.final_norm else None
        )
        self.final_dropout = nn.Dropout(config.dropout)

    def _bias(self, q_len: int, k_len: int, offset: int) -> Tensor | None:
        if self.relative_bias is None:
            return None
        return self.relative_bias(q_len, k_len, offset)  # (1, H, T, S)

    def _rotary(self, length: int, offset: int, like: Tensor) -> RotaryAngles | None:
        if self.rotary is None:
            return None
        return self.rotary(length, offset, device=like.device, dtype=like.dtype)

    def _run(self, layer: nn.Module, *args) -> Tensor:
        """layer(*args), through torch.utils.checkpoint when checkpointing a training pass
        (the RNG state is replayed, so dropout masks and gradients are the same)."""
        if self.checkpoint_layers and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _finish(self, x: Tensor) -> Tensor:
        if self.final_norm is None:
            return x
        return self.final_dropout(self.final_norm(x))


class Encoder(_Stack):
    def __init__(self, config: ModelConfig, tokens: nn.Embedding) -> None:
        super().__init__(config, tokens, bidirectional=True)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_encoder_layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, S), attention_mask (B, S) with 1 at real tokens -> (B, S, D)."""
        x = self.embed(input_ids)
        s = input_ids.shape[1]
        mask = build_mask(
            attention_mask,
            q_len=s,
            k_len=s,
            causal=False,
            bias=self._bias(s, s, 0),
            dtype=mask_dtype(x),
            device=x.device,
        )
        rotary = self._rotary(s, 0, x)
        for layer in self.layers:
            x = self._run(layer, x, mask, rotary)
        return self._finish(x)


class Decoder(_Stack):
    def __init__(self, config: ModelConfig, tokens: nn.Embedding) -> None:
        super().__init__(config, tokens, bidirectional=False)
        self.rotary_cross_attention = config.uses_rotary_cross_attention
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_decoder_layers))

    def forward(
        self,
        decoder_input_ids: Tensor,
        encoder_hidden_states: Tensor,
        encoder_attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Hidden states (B, T, D) for decoder_input_ids (B, T).

        With a cache holding `offset` earlier positions, decoder_input_ids are the next T
        tokens, and decoder_attention_mask (if given) covers all offset + T positions.
        The cache is updated in place (keys/values appended, offset advanced by T).
        """
        offset = cache.offset if cache is not None else 0
        t = decoder_input_ids.shape[1]
        x = self.embed(decoder_input_ids, offset)
        bias, rotary = self._positions(t, offset, x, cache)
        self_mask = build_mask(
            decoder_attention_mask,
            q_len=t,
            k_len=offset + t,
            causal=True,
            bias=bias,
            dtype=mask_dtype(x),
            device=x.device,
        )
        s = encoder_hidden_states.shape[1]
        memory_mask = build_mask(
            encoder_attention_mask, q_len=t, k_len=s, causal=False, device=x.device
        )
        layer_caches = cache.layers if cache is not None else [None] * len(self.layers)
        memory_rotary = None
        # source angles only while some layer still computes its cross keys (cached ones are
        # stored rotated); the last layer is the last to cache them, even after an interrupt
        if self.rotary_cross_attention and (cache is None or cache.layers[-1].cross_k is None):
            memory_rotary = self._rotary(s, 0, x)
        for layer, layer_cache in zip(self.layers, layer_caches, strict=True):
            x = self._run(
                layer,
                x,
                self_mask,
                encoder_hidden_states,
                memory_mask,
                rotary,
                layer_cache,
                memory_rotary,
            )
        if cache is not None:
            cache.offset = offset + t
        return self._finish(x)

    def new_cache(self, capacity: int = 0) -> DecoderCache:
        return DecoderCache.empty(len(self.layers), capacity)

    def _positions(
        self, t: int, offset: int, like: Tensor, cache: DecoderCache | None
    ) -> tuple[Tensor | None, RotaryAngles | None]:
        """Relative bias (1, H, T, offset + T) and rotary angles for T queries from `offset`.

        Decoding one token at a time slices tables memoised in the cache for
        `cache.capacity` positions, instead of recomputing them at every step.
        """
        end = offset + t
        if cache is None or t != 1 or end > cache.capacity:
            return self._bias(t, end, offset), self._rotary(t, offset, like)
        if self.relative_bias is not None:
            if cache.positions is None:
                # the query at C - 1 against keys 0 .. C - 1: column C - 1 - d holds the bias
                # of a key d positions before its query, for every query position
                cache.positions = self.relative_bias(1, cache.capacity, cache.capacity - 1)
            return cache.positions[:, :, :, cache.capacity - end :], None  # (1, H, 1, end)
        if self.rotary is not None:
            if cache.positions is None:
                cache.positions = self._rotary(cache.capacity, 0, like)
            table = cache.positions
            return None, RotaryAngles(table.cos[offset:end], table.sin[offset:end])
        return None, None
