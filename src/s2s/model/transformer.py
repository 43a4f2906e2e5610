"""Seq2SeqTransformer: shared embeddings + encoder + decoder + LM head.

Notation: B batch, S source length, T target length, D model dim, V vocab.

    logits = model(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask)

For generation, `encode` once, then call `decode` repeatedly with the returned cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from s2s.config import ModelConfig
from s2s.model.attention import CrossAttention, SelfAttention, check_backend
from s2s.model.cache import DecoderCache
from s2s.model.feedforward import FeedForward
from s2s.model.norms import LayerNorm, RMSNorm
from s2s.model.positions import LearnedPositions, RelativePositionBias
from s2s.model.stacks import Decoder, Encoder


@dataclass
class DecoderOutput:
    """Result of `Seq2SeqTransformer.decode`."""

    logits: Tensor  # (B, T, V)
    cache: DecoderCache


def shift_right(labels: Tensor, decoder_start_token_id: int, pad_token_id: int) -> Tensor:
    """Decoder inputs from labels (B, T): prepend the start token, drop the last label.

    Ignored positions (-100, the cross-entropy ignore index) become `pad_token_id`.
    """
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer; the T5 and BART families are special configs of it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Encoder(config, self.embed)
        self.decoder = Decoder(config, self.embed)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        self.logit_scale = config.d_model**-0.5 if config.scale_logits else 1.0
        if config.final_logits_bias:
            # a buffer, as in BART: loaded from checkpoints, never trained
            self.register_buffer("final_logits_bias", torch.zeros(config.vocab_size))
        else:
            self.final_logits_bias = None
        self.reset_parameters()

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, S), attention_mask (B, S) with 1 at real tokens -> (B, S, D)."""
        return self.encoder(input_ids, attention_mask)

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_hidden_states: Tensor,
        encoder_attention_mask: Tensor | None = None,
        *,
        cache: DecoderCache | None = None,
        decoder_attention_mask: Tensor | None = None,
    ) -> DecoderOutput:
        """Logits for the next T target positions, and the (new or updated) cache.

        decoder_input_ids (B, T) are the tokens after the `cache.offset` already decoded;
        pass cache=None to start. decoder_attention_mask, if given, is (B, offset + T).
        """
        if cache is None:
            cache = self.decoder.new_cache()
        hidden = self.decoder(
            decoder_input_ids,
            encoder_hidden_states,
            encoder_attention_mask,
            decoder_attention_mask,
            cache,
        )
        return DecoderOutput(logits=self.logits(hidden), cache=cache)

    def forward(
        self,
        input_ids: Tensor,
        decoder_input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits (B, T, V) for source (B, S) and decoder inputs (B, T)."""
        memory = self.encoder(input_ids, attention_mask)
        hidden = self.decoder(decoder_input_ids, memory, attention_mask, decoder_attention_mask)
        return self.logits(hidden)

    def logits(self, hidden: Tensor) -> Tensor:
        """Decoder output (B, T, D) -> logits (B, T, V)."""
        if self.logit_scale != 1.0:
            hidden = hidden * self.logit_scale
        logits = nn.functional.linear(hidden, self.head_weight)
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias
        return logits

    @property
    def head_weight(self) -> Tensor:
        """The LM head's (V, D) weight: the token embedding when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def shift_right(self, labels: Tensor) -> Tensor:
        """`shift_right` with this model's decoder start and pad ids."""
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)

    def checkpoint_activations(self, enabled: bool = True) -> Seq2SeqTransformer:
        """Recompute each layer's activations in backward instead of storing them (training
        memory for compute; see _Stack.checkpoint_layers). Returns the model."""
        self.encoder.checkpoint_layers = self.decoder.checkpoint_layers = enabled
        return self

    def set_attention_backend(self, backend: str) -> Seq2SeqTransformer:
        """Compute every attention with `backend`: "sdpa" (torch's fused kernel, the default)
        or "math" (the explicit softmax(QK^T)V reference; same numbers). A run-time choice,
        not architecture (`attention_backend` in conf/train.yaml). Returns the model."""
        check_backend(backend)
        for module in self.modules():
            if isinstance(module, (SelfAttention, CrossAttention)):
                module.backend = backend
        return self

    def new_cache(self, capacity: int = 0) -> DecoderCache:
        """An empty cache for `decode`, preallocated for `capacity` target positions (it grows
        beyond them if needed; 0 allocates as decoding goes)."""
        return self.decoder.new_cache(capacity)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every weight.

        Scheme: normal(0, init_std) for every linear layer, embedding, position table and
        relative-bias table, biases zero, norm gains one (BERT/BART/fairseq, std 0.02).
        The output projections of the residual branches (attention `out`, feed-forward
        `wo`) use init_std / sqrt(2 * n_layers) of their stack, so the residual stream's
        variance does not grow with depth (GPT-2, Radford et al. 2019, Sec. 2.3).
        With `scale_logits` (T5 v1.0) the token embedding is normal(0, 1), as in Mesh
        TensorFlow's T5, since the logits are then scaled by d_model**-0.5.
        """
        std = self.config.init_std
        for stack, n_layers in (
            (self.encoder, self.config.n_encoder_layers),
            (self.decoder, self.config.n_decoder_layers),
        ):
            for module in stack.modules():
                _init_default(module, std)
            residual_std = std / math.sqrt(2 * n_layers)
            for module in stack.modules():
                if isinstance(module, (SelfAttention, CrossAttention)):
                    nn.init.normal_(module.out.weight, std=residual_std)
                elif isinstance(module, FeedForward):
                    nn.init.normal_(module.wo.weight, std=residual_std)
        nn.init.normal_(self.embed.weight, std=1.0 if self.config.scale_logits else std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)
        if self.final_logits_bias is not None:
            self.final_logits_bias.zero_()


def _init_default(module: nn.Module, std: float) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (LearnedPositions, RelativePositionBias)):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, (LayerNorm, RMSNorm)):
        nn.init.ones_(module.weight)
        if isinstance(module, LayerNorm):
            nn.init.zeros_(module.bias)
