"""Position-wise feed-forward: plain (ReLU, GELU, SiLU) and gated (GEGLU, SwiGLU, ...).

Notation: B batch, T length, D model dim, F inner width (`d_ff`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from s2s.config import ACTIVATIONS


def activate(x: Tensor, activation: str) -> Tensor:
    """Apply the activation named by `ModelConfig.activation`."""
    if activation == "relu":
        return F.relu(x)
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        # the tanh approximation (Hendrycks & Gimpel 2016), T5 v1.1's "gelu_new"
        return F.gelu(x, approximate="tanh")
    if activation == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {activation!r}")


class FeedForward(nn.Module):
    """y = wo(dropout(act(wi x))) or, gated, y = wo(dropout(act(x W_gate) * (x W_up))).

    Gated variants follow Shazeer 2020 ("GLU Variants Improve Transformer"). The gate and up
    projections are fused into one (D -> 2F) matrix: rows [0, F) gate, rows [F, 2F) up.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        activation: str,
        gated: bool,
        bias: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.gated = gated
        self.wi = nn.Linear(d_model, (2 if gated else 1) * d_ff, bias=bias)
        self.wo = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> (B, T, D)."""
        h = self.wi(x)  # (B, T, F) or (B, T, 2F)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)  # each (B, T, F)
            h = activate(gate, self.activation) * up
        else:
            h = activate(h, self.activation)
        return self.wo(self.dropout(h))
