"""ModelConfig: the one source of truth for the encoder-decoder architecture.

Every field is mirrored, key for key, by the presets in `conf/model/*.yaml`. The defaults
are our modern recipe (pre-norm RMSNorm, SwiGLU, rotary positions, tied embeddings, no
biases), i.e. the `tiny` preset minus `rotary_cross_attention`, which stays off here so that
configs saved before it existed (without the key) keep meaning what they meant. The same
fields express T5 (v1.0 and v1.1) and BART exactly; see `conf/model/t5_small.yaml`,
`conf/model/bart_base.yaml` and `s2s.interop.hf`.

The config is frozen: derive variants with `dataclasses.replace(cfg, vocab_size=...)`, which
re-runs the validation in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from typing import Any

from s2s.settings import check_types, from_mapping, require

POSITIONS = ("learned", "sinusoidal", "t5_relative", "rotary", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
# Run-time choices that older checkpoints and bundles carry in their model config; they now
# live in conf/train.yaml (`attention_backend`, `compile`) and are dropped when read.
RUNTIME_KEYS = ("attention_backend", "compile")
# Configs read from files (checkpoints, bundles) are checked against these before a model is
# built: a hostile or damaged file must not make the loader allocate all memory or hang.
# The limit is the smaller of MAX_PARAMETERS and what this machine's memory holds twice over in
# float32 (the model and the loaded weights exist together while loading); S2S_MAX_PARAMETERS
# replaces both.
MAX_PARAMETERS = 20_000_000_000  # 80 GB of float32 weights
BYTES_PER_PARAMETER = 8  # float32, twice
MAX_PARAMETERS_ENV = "S2S_MAX_PARAMETERS"  # an integer that replaces the limit
MAX_LAYERS = 1024  # per stack; a deeper stack is a damaged file, not a model


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a `Seq2SeqTransformer`.

    Sizes
        vocab_size: token vocabulary V (usually overwritten from the tokenizer).
        d_model: residual stream width D.
        d_ff: feed-forward inner width (per branch for gated FFNs).
        n_heads: attention heads H.
        d_head: per-head width Dh; None means d_model // n_heads. T5 allows H * Dh != D.
        n_encoder_layers, n_decoder_layers: number of layers in each stack.
    Regularisation
        dropout: on embeddings, residual branches and after the final norm.
        attention_dropout: on attention probabilities.
        activation_dropout: inside the feed-forward, after the activation.
    Positions
        positions: "learned" | "sinusoidal" | "t5_relative" | "rotary" | "none".
        max_positions: rows of the learned position table (unused by other schemes).
        relative_num_buckets, relative_max_distance: T5 relative bias buckets.
        rotary_base: RoPE frequency base (Su et al. 2021 use 10000).
        rotary_cross_attention: with rotary positions, also rotate cross-attention queries by
            their target position and keys by their source position, so a score can depend
            on (target - source) position: copying and other monotone alignments become
            learnable from the start (see attention.py). Ignored by the other schemes, so
            `model.positions=...` can be switched alone.
    Blocks
        norm: "layernorm" | "rmsnorm"; norm_eps: its epsilon.
        norm_position: "pre" (x + f(norm(x))) or "post" (norm(x + f(x))).
        activation: "relu" | "gelu" | "gelu_tanh" | "silu"; gated_ffn: GLU variant (GEGLU,
        SwiGLU, ...; Shazeer 2020).
        attention_bias, ffn_bias: biases on the attention / feed-forward projections.
        scale_attention: divide scores by sqrt(Dh); False is T5's unscaled dot product.
    Embeddings and head
        scale_embeddings: multiply token embeddings by sqrt(D) (Vaswani et al. 2017, 3.4).
        embedding_norm: norm after embeddings + positions (BART's layernorm_embedding).
        final_norm: norm (then dropout) at the end of each stack (pre-norm models need it).
        tie_embeddings: LM head shares the token embedding matrix.
        scale_logits: multiply the decoder output by D**-0.5 before the head (T5 v1.0).
        final_logits_bias: a (V,) bias buffer added to the logits (BART).
    Special tokens
        pad_token_id, eos_token_id, decoder_start_token_id.
    Training (TRAINING_FIELDS: not the architecture; may differ between pre-training and
    fine-tuning)
        dropout, attention_dropout, activation_dropout (above).
        init_std: standard deviation of the normal initialisation (see transformer.py).
    How the model runs (the attention kernel, torch.compile) is not part of it: see
    `Seq2SeqTransformer.set_attention_backend` and conf/train.yaml.
    """

    TRAINING_FIELDS: typing.ClassVar[tuple[str, ...]] = (
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "init_std",
    )

    vocab_size: int = 8192
    d_model: int = 256
    d_ff: int = 1024
    n_heads: int = 4
    d_head: int | None = None
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    positions: str = "rotary"
    max_positions: int = 512
    relative_num_buckets: int = 32
    relative_max_distance: int = 128
    rotary_base: float = 10000.0
    rotary_cross_attention: bool = False
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    norm_position: str = "pre"
    activation: str = "silu"
    gated_ffn: bool = True
    attention_bias: bool = False
    ffn_bias: bool = False
    scale_attention: bool = True
    scale_embeddings: bool = False
    embedding_norm: bool = False
    final_norm: bool = True
    tie_embeddings: bool = True
    scale_logits: bool = False
    final_logits_bias: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_types(self, "model")
        for name in ("vocab_size", "d_model", "d_ff", "n_heads", "max_positions"):
            require(getattr(self, name) > 0, f"model.{name}={getattr(self, name)} must be > 0")
        for name in ("n_encoder_layers", "n_decoder_layers"):
            require(getattr(self, name) >= 1, f"model.{name}={getattr(self, name)} must be >= 1")
        if self.d_head is None:
            require(
                self.d_model % self.n_heads == 0,
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}"
                " (or set model.d_head explicitly)",
            )
        else:
            require(self.d_head > 0, f"model.d_head={self.d_head} must be > 0 (or null)")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"model.{name}={value} must be in [0, 1)")
        for name, allowed in (
            ("positions", POSITIONS),
            ("norm", NORMS),
            ("norm_position", NORM_POSITIONS),
            ("activation", ACTIVATIONS),
        ):
            value = getattr(self, name)
            require(value in allowed, f"model.{name}={value!r} must be one of {list(allowed)}")
        if self.positions == "t5_relative":
            require(
                self.relative_num_buckets >= 4,
                f"model.relative_num_buckets={self.relative_num_buckets} must be >= 4",
            )
            require(
                self.relative_max_distance > self.relative_num_buckets // 2,
                f"model.relative_max_distance={self.relative_max_distance} must exceed"
                f" model.relative_num_buckets // 2 = {self.relative_num_buckets // 2}",
            )
        if self.positions == "rotary":
            require(
                self.head_dim % 2 == 0,
                f"rotary positions need an even head width, got model.d_head={self.head_dim}",
            )
            require(self.rotary_base > 1.0, f"model.rotary_base={self.rotary_base} must be > 1")
        require(self.norm_eps > 0, f"model.norm_eps={self.norm_eps} must be > 0")
        require(self.init_std > 0, f"model.init_std={self.init_std} must be > 0")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            require(
                0 <= value < self.vocab_size,
                f"model.{name}={value} must be in [0, model.vocab_size={self.vocab_size})",
            )

    @property
    def uses_rotary_cross_attention(self) -> bool:
        """Whether cross-attention is rotated (the flag only applies to rotary positions)."""
        return self.rotary_cross_attention and self.positions == "rotary"

    @property
    def head_dim(self) -> int:
        """The resolved per-head width Dh (`d_head`, or d_model // n_heads when unset)."""
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def inner_dim(self) -> int:
        """Width of the concatenated heads, H * Dh."""
        return self.n_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every field (JSON- and YAML-serialisable)."""
        return dataclasses.asdict(self)

    def architecture(self) -> dict[str, Any]:
        """`to_dict` without the TRAINING_FIELDS: what two configs must share for weights of
        one to load into the other."""
        return {k: v for k, v in self.to_dict().items() if k not in self.TRAINING_FIELDS}

    @classmethod
    def from_dict(cls, values: typing.Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping; unknown keys are an error, missing keys take defaults, and
        the RUNTIME_KEYS of older files are dropped."""
        values = {k: v for k, v in values.items() if k not in RUNTIME_KEYS}
        return from_mapping(cls, values, "model")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def estimated_parameters(config: ModelConfig) -> int:
    """Parameters of `Seq2SeqTransformer(config)`, counted from the sizes (norms left out)."""
    d, inner = config.d_model, config.inner_dim
    attention = 4 * d * inner + (4 * inner + d if config.attention_bias else 0)
    branches = 3 if config.gated_ffn else 2
    ffn = branches * d * config.d_ff + ((branches - 1) * config.d_ff + d if config.ffn_bias else 0)
    layers = config.n_encoder_layers * (attention + ffn)
    layers += config.n_decoder_layers * (2 * attention + ffn)
    embeddings = config.vocab_size * d * (1 if config.tie_embeddings else 2)
    positions = 0
    if config.positions == "learned":
        positions = 2 * config.max_positions * d
    elif config.positions == "t5_relative":
        positions = 2 * config.relative_num_buckets * config.n_heads
    return layers + embeddings + positions


def check_size(config: ModelConfig, source: str) -> None:
    """Refuse, before anything is allocated, a config read from `source` that describes a
    model too large to build: more than `parameter_limit()` parameters (the environment
    variable S2S_MAX_PARAMETERS replaces that limit) or more than MAX_LAYERS layers a stack."""
    for name in ("n_encoder_layers", "n_decoder_layers"):
        value = getattr(config, name)
        require(value <= MAX_LAYERS, f"{source}: {name}={value} is over the limit {MAX_LAYERS}")
    limit = parameter_limit()
    count = estimated_parameters(config)
    require(
        count <= limit,
        f"{source}: the model config describes about {count:.3g} parameters, over the limit "
        f"of {limit:.3g} (set {MAX_PARAMETERS_ENV}=N to allow larger models)",
    )


def parameter_limit() -> int:
    """The most parameters a config read from a file may describe (see MAX_PARAMETERS)."""
    value = os.environ.get(MAX_PARAMETERS_ENV)
    if value is None:
        return min(MAX_PARAMETERS, physical_memory() // BYTES_PER_PARAMETER)
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"{MAX_PARAMETERS_ENV}={value!r} must be a number") from None


def physical_memory() -> int:
    """Bytes of RAM of this machine (MAX_PARAMETERS * BYTES_PER_PARAMETER where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return MAX_PARAMETERS * BYTES_PER_PARAMETER
