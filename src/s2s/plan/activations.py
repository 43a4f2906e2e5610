"""Activation memory of one training micro-batch, counted tensor by tensor from the model code.

Notation: B micro-batch rows, S source length, T target length, D model dim, I = H * Dh
attention width, F feed-forward width (`d_ff`), V vocab, H heads, L_e / L_d layers.
Byte sizes: c the matmul (compute) dtype (4 float32, 2 under bf16/fp16 autocast), m a kept
dropout mask (1: CUDA's bool mask; c: torch's CPU dropout multiplies by a mask of x's dtype).

What autograd keeps between forward and backward, per token, as s2s.model computes it:

    residual stream     float32 under autocast too (x + bf16 branch promotes): 4D per
                        sublayer input, kept by its norm
    norm                RMSNorm keeps x * rsqrt (4D); LayerNorm x - mean and the product (8D)
    linear inputs       the normed input (4D in float32, its c-dtype cast under autocast)
    attention           q, k, v as projected (3I c; rotary adds rotated q, k: 2I c), the
                        output and its merged copy (2I c), and
                          fused SDPA (flash / memory-efficient): the log-sum-exp, 4H
                          unfused: the probabilities, H * keys per query (see `score_bytes`)
    cross-attention     q (I c); k, v of every source token in every decoder layer (2I c per
                        source token, +I c rotated, + the c-dtype cast of the encoder output)
    feed-forward        gated: 4F c (wi's 2F output, act(gate), act(gate) * up); plain ReLU
                        F c (its output; 2F c with dropout); plain GELU / SiLU 2F c
    dropout             one mask a dropout with p > 0: m per element
    loss                log_softmax's output, 4V per target token, and at the start of the
                        backward its gradient and nll's: 12V in all (logits are freed when
                        training_step returns, before the backward); then the logits'
                        gradient (4V) with the LM head's (V, D) weight gradient
    embeddings          the (V, D) float32 gradient of each use of the token embedding: with
                        tied embeddings the head's waits in autograd's buffer while the
                        decoder's and encoder's lookups add theirs (three at once)
    positions           T5 relative bias: one (1, H, L, L) float32 table per stack (B times
                        that with padding masks) and its bucket ids (8 L^2)

The peak is when the backward starts (every activation plus the loss's 12V) or, if a layer's
backward needs more, then. With activation checkpointing each layer keeps only its input
(4D per token) and the backward recomputes one layer at a time: the peak adds the largest
layer's activations and its backward transients to what the stacks keep. Checked against
the measured live bytes of real CPU steps in tests/test_plan_memory.py (benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.config import ModelConfig

FLOAT32 = 4
INDEX = 8  # int64 token and bucket ids


@dataclass(frozen=True)
class Execution:
    """How the step runs, as far as activation memory goes.

    compute_bytes: c above. cuda: the device is a GPU (bool dropout masks, fused attention
    with any mask or dropout); else the CPU, where torch's fused attention takes neither a
    dropout nor a bias that needs a gradient (T5's), and s2s.kernels's float32 attention keeps
    its probabilities and a bool dropout mask. attention_backend: "sdpa" | "math".
    padded: batches have padding (masks widen the T5 bias to B rows). checkpointing: recompute
    layers in the backward."""

    compute_bytes: int = FLOAT32
    cuda: bool = True
    attention_backend: str = "sdpa"
    padded: bool = False
    checkpointing: bool = False

    @property
    def mask_bytes(self) -> int:
        return 1 if self.cuda else self.compute_bytes


@dataclass(frozen=True)
class Activations:
    """Bytes one micro-batch keeps for its backward, by part, and the peak it reaches."""

    encoder_layers: int  # all L_e layers (with checkpointing: their inputs)
    decoder_layers: int
    encoder_other: int  # token ids, embedding dropout, final norm (and T5 bias table)
    decoder_other: int  # the same for the decoder, and the LM head's input
    loss: int  # log_softmax's output and the backward's first gradients (the 12V above)
    recomputed_layer: int  # with checkpointing: one layer's activations while it recomputes
    layer_backward: int  # transient gradients inside the largest layer's backward
    embedding_grad: int  # one (V, D) float32 gradient of the token embedding or LM head
    tied: bool  # the LM head is the token embedding (three uses of one weight)

    @property
    def kept(self) -> int:
        """What the forward leaves for the backward (without the loss)."""
        return self.encoder_layers + self.decoder_layers + self.encoder_other + self.decoder_other

    @property
    def peak(self) -> int:
        """The most of these bytes alive at once: the largest of the backward's phases."""
        head = self.embedding_grad  # the LM head's weight gradient, made first
        # tied: it waits in autograd's buffer for the two embedding lookups' gradients
        waiting = self.embedding_grad if self.tied else 0
        # the logits' gradient (a third of the loss's 12V) with the head's weight gradient
        logits_grad = self.loss // 3 + head
        return max(
            self.kept + max(self.loss, logits_grad),  # the backward starts
            self.kept + waiting + self.recomputed_layer + self.layer_backward,  # a layer's
            # the decoder's embedding lookup: its (V, D) gradient (tied: + buffer and sum)
            self.encoder_layers + self.encoder_other + (3 if self.tied else 1) * head,
            3 * head,  # the encoder's lookup: buffered gradient, its own and their sum
        )


def attention_fused(config: ModelConfig, run: Execution) -> bool:
    """Whether SDPA runs a fused kernel (no (B, H, T, S) tensor kept): CUDA's take any mask
    and dropout; the CPU's neither dropout nor a learned (T5) bias (s2s.kernels.attention)."""
    if run.attention_backend != "sdpa":
        return False
    if run.cuda:
        return True
    return config.attention_dropout == 0.0 and config.positions != "t5_relative"


def score_bytes(config: ModelConfig, run: Execution) -> int:
    """Bytes kept per attention score (query x key x head) by an unfused attention."""
    c, dropout = run.compute_bytes, config.attention_dropout > 0.0
    if run.attention_backend == "sdpa" and not run.cuda and c == FLOAT32:
        return FLOAT32 + (1 if dropout else 0)  # s2s.kernels' CpuAttention: P and a bool mask
    # the math path: softmax's float32 output, its c-dtype cast, the dropped copy and mask
    kept = FLOAT32 + (c if c != FLOAT32 else 0)
    return kept + ((run.mask_bytes + c) if dropout else 0)


def _norm(config: ModelConfig, run: Execution) -> int:
    """Per token: a pre-norm's own tensors and the following linear's input."""
    own = (2 if config.norm == "layernorm" else 1) * FLOAT32 * config.d_model
    return own + run.compute_bytes * config.d_model


def _dropout(p: float, width: int, run: Execution) -> int:
    return run.mask_bytes * width if p > 0.0 else 0


def _feedforward(config: ModelConfig, run: Execution) -> int:
    c, f = run.compute_bytes, config.d_ff
    dropout = config.activation_dropout > 0.0
    if config.gated_ffn:
        kept = 4 * f * c
    elif config.activation == "relu":  # its output, and the dropped copy `wo` keeps
        kept = (2 if dropout else 1) * f * c
    else:
        kept = 2 * f * c
    return kept + _dropout(config.activation_dropout, f, run)


def _attention(config: ModelConfig, run: Execution, keys: int, rotary: bool) -> int:
    """Per query token, self-attention over `keys` keys (or cross-attention's query side)."""
    c, inner = run.compute_bytes, config.inner_dim
    kept = 2 * inner * c  # the output and its merged-heads copy
    if attention_fused(config, run):
        kept += FLOAT32 * config.n_heads  # log-sum-exp
    else:
        kept += config.n_heads * keys * score_bytes(config, run)
    return kept + (2 * inner * c if rotary else 0)


def _sublayer(config: ModelConfig, run: Execution) -> int:
    """Per token: the residual input kept by the norm, the norm, the branch's dropout mask."""
    d = config.d_model
    return FLOAT32 * d + _norm(config, run) + _dropout(config.dropout, d, run)


def encoder_layer(config: ModelConfig, run: Execution, s: int) -> int:
    """Bytes one encoder layer keeps per row of S tokens."""
    c, rotary = run.compute_bytes, config.positions == "rotary"
    attention = 3 * config.inner_dim * c + _attention(config, run, s, rotary)
    return s * (2 * _sublayer(config, run) + attention + _feedforward(config, run))


def decoder_layer(config: ModelConfig, run: Execution, s: int, t: int) -> int:
    """Bytes one decoder layer keeps per row (T target tokens attending S source tokens)."""
    c, inner, rotary = run.compute_bytes, config.inner_dim, config.positions == "rotary"
    cross_rotary = config.uses_rotary_cross_attention
    self_attention = 3 * inner * c + _attention(config, run, t, rotary)
    cross_query = inner * c + _attention(config, run, s, False)
    per_target = 3 * _sublayer(config, run) + self_attention + cross_query
    per_target += _feedforward(config, run)
    # k, v over the source (+ rotated k), and the encoder output cast for the kv projection
    per_source = (2 + (1 if cross_rotary else 0)) * inner * c
    per_source += c * config.d_model if c != FLOAT32 else 0
    return t * per_target + s * per_source


def _stack_tail(config: ModelConfig, run: Execution) -> int:
    """Per token: the final norm (its input, own tensors, output or cast, dropout mask)."""
    if not config.final_norm:
        return run.compute_bytes * config.d_model
    return _sublayer(config, run)


def activations(config: ModelConfig, run: Execution, rows: int, s: int, t: int) -> Activations:
    """What a (rows, S) -> (rows, T) micro-batch keeps, by part (see the module docstring)."""
    d, v = config.d_model, config.vocab_size
    enc, dec = encoder_layer(config, run, s), decoder_layer(config, run, s, t)
    per_token = INDEX + _dropout(config.dropout, d, run) + _stack_tail(config, run)
    enc_other, dec_other = rows * s * per_token, rows * t * per_token
    if config.positions == "t5_relative":
        enc_other += _bias_table(config, run, rows, s)
        dec_other += _bias_table(config, run, rows, t)
    if run.checkpointing:
        kept_enc = config.n_encoder_layers * FLOAT32 * d * s
        kept_dec = config.n_decoder_layers * FLOAT32 * d * t
        recomputed = max(enc, dec)
    else:
        kept_enc, kept_dec = config.n_encoder_layers * enc, config.n_decoder_layers * dec
        recomputed = 0
    return Activations(
        encoder_layers=rows * kept_enc,
        decoder_layers=rows * kept_dec,
        encoder_other=enc_other,
        decoder_other=dec_other,
        loss=rows * t * 3 * FLOAT32 * v,
        recomputed_layer=rows * recomputed,
        layer_backward=rows * _layer_backward(config, run, s, t),
        embedding_grad=FLOAT32 * v * d,
        tied=config.tie_embeddings,
    )


def _bias_table(config: ModelConfig, run: Execution, rows: int, length: int) -> int:
    """A stack's T5 relative bias (1 or B, H, L, L) float32 and its bucket ids (L, L)."""
    cells = length * length
    return FLOAT32 * config.n_heads * cells * (rows if run.padded else 1) + INDEX * cells


def _layer_backward(config: ModelConfig, run: Execution, s: int, t: int) -> int:
    """Per row: the gradients a layer's backward holds at once (the feed-forward's, or an
    unfused attention's float32 score-gradient buffer)."""
    longest = max(s, t)
    ffn = longest * 4 * config.d_ff * run.compute_bytes
    scores = 0 if attention_fused(config, run) else FLOAT32 * config.n_heads * longest * longest
    return max(ffn, scores)
