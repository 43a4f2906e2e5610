"""Hugging Face `config.json` <-> ModelConfig, on plain dicts (no `transformers` needed).

    config = model_config_from_hf(json.load(open("DIR/config.json")), tied=..., source=...)
    values = hf_config_for(config, framing)      # a config.json for T5 or BART

Supported `model_type`s: t5 and mt5 (v1.0: ReLU, tied and scaled head; v1.1 / Flan-T5 / mT5:
gated GELU, untied head) and bart. A key missing from a file takes the default of the
`transformers` config class of that type (as `from_pretrained` would). Settings our model
cannot express raise `HFConfigError` listing every one. Whether the head is tied is decided by
the weights file (a stored `lm_head.weight` unequal to the embedding means untied), because
`transformers` 5 writes `tie_word_embeddings: true` even for untied T5 v1.1 models.
"""

from __future__ import annotations

from typing import Any

from s2s.config import ModelConfig

MODEL_TYPES = ("t5", "mt5", "bart")


class HFConfigError(ValueError):
    """A Hugging Face config that s2s cannot express."""


# HF activation names -> ours. T5's "gated-gelu" means the tanh approximation ("gelu_new").
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
}
# The defaults of transformers' T5Config / MT5Config / BartConfig for the keys read here.
T5_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
    "num_decoder_layers": None, "num_heads": 8, "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "relu", "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": None, "tie_word_embeddings": True,
}  # fmt: skip
MT5_DEFAULTS = {
    **T5_DEFAULTS, "vocab_size": 250112, "d_ff": 1024, "num_layers": 8,
    "num_heads": 6, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
}  # fmt: skip
BART_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50265, "max_position_embeddings": 1024, "encoder_layers": 12,
    "encoder_ffn_dim": 4096, "encoder_attention_heads": 16, "decoder_layers": 12,
    "decoder_ffn_dim": 4096, "decoder_attention_heads": 16, "activation_function": "gelu",
    "d_model": 1024, "dropout": 0.1, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "init_std": 0.02, "scale_embedding": False, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "decoder_start_token_id": 2, "tie_word_embeddings": True,
}  # fmt: skip
BART_POSITION_OFFSET = 2  # BART's learned position table reserves its first two rows
# ModelConfig fields that T5 config keys of another name hold ...
T5_FIELDS = {
    "vocab_size": "vocab_size",
    "d_model": "d_model",
    "d_ff": "d_ff",
    "n_heads": "num_heads",
    "d_head": "d_kv",
    "n_encoder_layers": "num_layers",
    "n_decoder_layers": "num_decoder_layers",
    "dropout": "dropout_rate",
    "relative_num_buckets": "relative_attention_num_buckets",
    "relative_max_distance": "relative_attention_max_distance",
    "norm_eps": "layer_norm_epsilon",
}
# ... and the fields T5 fixes: set so on import, required so on export.
T5_FIXED = {
    "positions": "t5_relative",
    "norm": "rmsnorm",
    "norm_position": "pre",
    "scale_attention": False,
    "attention_bias": False,
    "ffn_bias": False,
    "scale_embeddings": False,
    "embedding_norm": False,
    "final_norm": True,
    "final_logits_bias": False,
}
BART_FIXED = {
    "positions": "learned",
    "norm": "layernorm",
    "norm_eps": 1e-5,  # torch.nn.LayerNorm's default, which BART uses
    "norm_position": "post",
    "gated_ffn": False,
    "attention_bias": True,
    "ffn_bias": True,
    "scale_attention": True,
    "embedding_norm": True,
    "final_norm": False,
    "scale_logits": False,
    "rotary_cross_attention": False,
}


def model_type_of(values: dict[str, Any], source: str) -> str:
    kind = values.get("model_type")
    if kind not in MODEL_TYPES:
        raise HFConfigError(
            f"{source}: model_type {kind!r} is not supported (s2s reads {', '.join(MODEL_TYPES)}:"
            " T5, T5 v1.1 / Flan-T5, mT5 and BART encoder-decoders)"
        )
    return kind


def model_config_from_hf(values: dict[str, Any], *, tied: bool, source: str) -> ModelConfig:
    """The ModelConfig equal to a T5 / mT5 / BART `config.json` (as a dict)."""
    kind = model_type_of(values, source)
    try:
        if kind == "bart":
            return _bart(_with_defaults(values, BART_DEFAULTS), tied, source)
        defaults = MT5_DEFAULTS if kind == "mt5" else T5_DEFAULTS
        return _t5(_with_defaults(values, defaults), tied, source)
    except (TypeError, ValueError) as err:
        if isinstance(err, HFConfigError):
            raise
        raise HFConfigError(f"{source}: {err}") from None


def _with_defaults(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **{k: v for k, v in values.items() if v is not None or k not in defaults}}


def _activation(name: Any, key: str, source: str) -> str:
    if name not in ACTIVATIONS:
        raise HFConfigError(
            f"{source}: {key}={name!r} is not supported (one of {', '.join(ACTIVATIONS)})"
        )
    return ACTIVATIONS[name]


def _t5_feed_forward(proj: str, source: str) -> tuple[str, bool]:
    """(our activation, gated) of T5's `feed_forward_proj`, read as transformers reads it."""
    parts = str(proj).split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise HFConfigError(f"{source}: feed_forward_proj={proj!r} is not 'ACT' or 'gated-ACT'")
    name = "gelu_new" if proj == "gated-gelu" else parts[-1]
    return _activation(name, "feed_forward_proj", source), gated


def _t5(c: dict[str, Any], tied: bool, source: str) -> ModelConfig:
    activation, gated = _t5_feed_forward(c["feed_forward_proj"], source)
    if c["num_decoder_layers"] is None:
        c["num_decoder_layers"] = c["num_layers"]
    # transformers >= 5 says "scale the logits" with scale_decoder_outputs; before, the tie
    # flag meant both "tie" and "scale"
    scale = c.get("scale_decoder_outputs")
    scale = c["tie_word_embeddings"] if scale is None else scale
    start = c["decoder_start_token_id"]
    fields = {ours: c[theirs] for ours, theirs in T5_FIELDS.items()}
    fields.update(dropout=float(c["dropout_rate"]), norm_eps=float(c["layer_norm_epsilon"]))
    return ModelConfig(
        **fields,
        **T5_FIXED,
        attention_dropout=fields["dropout"],  # T5 has one dropout rate for everything
        activation_dropout=fields["dropout"],
        activation=activation,
        gated_ffn=gated,
        tie_embeddings=tied,
        scale_logits=bool(scale),
        pad_token_id=c["pad_token_id"],
        eos_token_id=first_id(c["eos_token_id"], "eos_token_id", source),
        decoder_start_token_id=c["pad_token_id"] if start is None else start,  # T5: from pad
    )


def _bart(c: dict[str, Any], tied: bool, source: str) -> ModelConfig:
    problems = [
        f"{a}={c[a]} != {b}={c[b]}"
        for a, b in (
            ("encoder_ffn_dim", "decoder_ffn_dim"),
            ("encoder_attention_heads", "decoder_attention_heads"),
        )
        if c[a] != c[b]
    ]
    # mBART-style variants of the BART config that our model does not express
    problems += [
        f"{flag}=true"
        for flag in ("normalize_before", "add_final_layer_norm", "add_bias_logits")
        if c.get(flag)
    ]
    if problems:
        raise HFConfigError(f"{source}: unsupported BART settings: " + "; ".join(problems))
    return ModelConfig(
        **BART_FIXED,
        vocab_size=c["vocab_size"],
        d_model=c["d_model"],
        d_ff=c["encoder_ffn_dim"],
        n_heads=c["encoder_attention_heads"],
        n_encoder_layers=c["encoder_layers"],
        n_decoder_layers=c["decoder_layers"],
        dropout=float(c["dropout"]),
        attention_dropout=float(c["attention_dropout"]),
        activation_dropout=float(c["activation_dropout"]),
        max_positions=c["max_position_embeddings"],
        activation=_activation(c["activation_function"], "activation_function", source),
        scale_embeddings=bool(c["scale_embedding"]),
        tie_embeddings=tied,
        final_logits_bias=True,
        init_std=float(c["init_std"]),
        pad_token_id=c["pad_token_id"],
        eos_token_id=first_id(c["eos_token_id"], "eos_token_id", source),
        decoder_start_token_id=c["decoder_start_token_id"],
    )


def first_id(value: Any, key: str, source: str) -> int:
    """A token id; a list (generation configs allow several EOS ids) gives its first."""
    if isinstance(value, list) and value:
        value = value[0]
    if type(value) is not int:
        raise HFConfigError(f"{source}: {key}={value!r} is not a token id")
    return value


# -- out ----------------------------------------------------------------------------------


def hf_config_for(config: ModelConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """A `config.json` for `config` as T5 (T5-style configs) or BART (BART-style ones);
    `extra` (special ids, forced tokens) is merged in. Raises HFConfigError listing every
    setting neither can express."""
    if config.positions == "t5_relative":
        return {**t5_config_for(config), **extra}
    if config.positions == "learned":
        return {**bart_config_for(config), **extra}
    raise HFConfigError(
        f"model.positions={config.positions!r}: Hugging Face T5 needs t5_relative and BART"
        " learned positions; export this model as a bundle (--format bundle) instead"
    )


def _problems(config: ModelConfig, needs: dict[str, Any], family: str) -> list[str]:
    return [
        f"model.{name}={getattr(config, name)!r} ({family} needs {want!r})"
        for name, want in needs.items()
        if getattr(config, name) != want
    ]


def _raise_if(problems: list[str], family: str) -> None:
    if problems:
        raise HFConfigError(f"Hugging Face {family} cannot express " + "; ".join(problems))


def t5_config_for(config: ModelConfig) -> dict[str, Any]:
    needs = {**T5_FIXED, "attention_dropout": config.dropout, "activation_dropout": config.dropout}
    problems = _problems(config, needs, "T5")
    if config.gated_ffn and config.activation == "gelu":
        problems.append("gated exact GELU (T5's 'gated-gelu' is the tanh approximation)")
    if config.scale_logits and not config.tie_embeddings:
        problems.append("scale_logits with untied embeddings (T5 scales only when tied)")
    _raise_if(problems, "T5")
    act = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}
    act = act[config.activation]
    if config.gated_ffn and act == "gelu_new":
        act = "gelu"  # "gated-gelu" means tanh GELU
    values = {theirs: getattr(config, ours) for ours, theirs in T5_FIELDS.items()}
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        **values,
        "d_kv": config.head_dim,  # d_head may be null: the resolved width
        "feed_forward_proj": ("gated-" if config.gated_ffn else "") + act,
        "is_encoder_decoder": True,
        "initializer_factor": 1.0,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        # read as "tie and scale" before transformers 5, "tie" since (scale: the key below)
        "tie_word_embeddings": config.tie_embeddings,
        "scale_decoder_outputs": config.scale_logits,
    }


def bart_config_for(config: ModelConfig) -> dict[str, Any]:
    needs = {k: v for k, v in BART_FIXED.items() if k != "rotary_cross_attention"}
    problems = _problems(config, needs, "BART")
    if config.head_dim * config.n_heads != config.d_model:
        problems.append(f"model.d_head={config.d_head} (BART heads split d_model evenly)")
    _raise_if(problems, "BART")
    act = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}
    return {
        "architectures": ["BartForConditionalGeneration"],
        "model_type": "bart",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "encoder_layers": config.n_encoder_layers,
        "decoder_layers": config.n_decoder_layers,
        "encoder_attention_heads": config.n_heads,
        "decoder_attention_heads": config.n_heads,
        "encoder_ffn_dim": config.d_ff,
        "decoder_ffn_dim": config.d_ff,
        "max_position_embeddings": config.max_positions,
        "activation_function": act[config.activation],
        "dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "scale_embedding": config.scale_embeddings,
        "init_std": config.init_std,
        "is_encoder_decoder": True,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "tie_word_embeddings": config.tie_embeddings,
    }
