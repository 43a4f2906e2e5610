"""Encoder and decoder layers: attention and feed-forward sublayers with residuals.

Notation: B batch, T target length, S source length, D model dim.

Each sublayer f is wrapped as
    pre-norm  (default; Xiong et al. 2020, T5):  x + dropout(f(norm(x)))
    post-norm (Vaswani et al. 2017, BART):       norm(x + dropout(f(x)))
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from s2s.config import ModelConfig
from s2s.model.attention import AttentionMask, CrossAttention, SelfAttention
from s2s.model.cache import LayerCache
from s2s.model.feedforward import FeedForward
from s2s.model.norms import make_norm
from s2s.model.positions import RotaryAngles


def _attention_kwargs(config: ModelConfig) -> dict:
    return {
        "d_model": config.d_model,
        "n_heads": config.n_heads,
        "d_head": config.head_dim,
        "bias": config.attention_bias,
        "scale": config.scale_attention,
        "dropout": config.attention_dropout,
    }


def _feedforward(config: ModelConfig) -> FeedForward:
    return FeedForward(
        config.d_model,
        config.d_ff,
        activation=config.activation,
        gated=config.gated_ffn,
        bias=config.ffn_bias,
        dropout=config.activation_dropout,
    )


class _Residual(nn.Module):
    """Norm + dropout + residual connection around one sublayer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Bidirectional self-attention then feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(**_attention_kwargs(config))
        self.self_attn_block = _Residual(config)
        self.ffn = _feedforward(config)
        self.ffn_block = _Residual(config)

    def forward(self, x: Tensor, mask: AttentionMask, rotary: RotaryAngles | None) -> Tensor:
        """x (B, S, D) -> (B, S, D)."""
        x = self.self_attn_block(x, lambda h: self.self_attn(h, mask, rotary=rotary))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, then feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(**_attention_kwargs(config))
        self.self_attn_block = _Residual(config)
        self.cross_attn = CrossAttention(**_attention_kwargs(config))
        self.rotary_cross_attention = config.uses_rotary_cross_attention
        self.cross_attn_block = _Residual(config)
        self.ffn = _feedforward(config)
        self.ffn_block = _Residual(config)

    def forward(
        self,
        x: Tensor,
        self_mask: AttentionMask,
        memory: Tensor,
        memory_mask: AttentionMask,
        rotary: RotaryAngles | None,
        cache: LayerCache | None = None,
        memory_rotary: RotaryAngles | None = None,
    ) -> Tensor:
        """x (B, T, D), memory (B, S, D) -> (B, T, D).

        `memory_rotary` (source positions) is given only with rotary cross-attention.
        """
        x = self.self_attn_block(
            x, lambda h: self.self_attn(h, self_mask, rotary=rotary, cache=cache)
        )
        cross_rotary = rotary if self.rotary_cross_attention else None
        x = self.cross_attn_block(
            x,
            lambda h: self.cross_attn(
                h,
                memory,
                memory_mask,
                cache=cache,
                rotary=cross_rotary,
                memory_rotary=memory_rotary,
            ),
        )
        return self.ffn_block(x, self.ffn)
