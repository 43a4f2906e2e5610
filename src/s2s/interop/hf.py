"""Hugging Face interop: T5 / BART checkpoints in, T5 checkpoints out.

    model = from_hf(hf_model_or_local_dir)    # T5ForConditionalGeneration (v1.0 / v1.1)
                                              # or BartForConditionalGeneration
    hf_model = to_hf(model)                   # T5-style configs only

Nothing is ever downloaded: a path must be a local `save_pretrained` directory.
Our layout fuses HF's separate projections: self-attention q/k/v -> one `qkv` matrix,
cross-attention k/v -> one `kv` matrix, gated FFN wi_0 (gate) / wi_1 (up) -> one `wi`.
Conversion is a list of (our tensor, [HF tensors]) pairs: loading concatenates the HF
tensors along dim 0, exporting splits ours by their sizes.
Training-only HF settings that do not change the function (BART layerdrop, T5
initializer_factor) are not carried over.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    BartConfig,
    BartForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

from s2s.config import ModelConfig
from s2s.model.transformer import Seq2SeqTransformer

Pairs = list[tuple[Tensor, list[Tensor]]]

# HF activation names -> ours. T5's "gated-gelu" means the tanh approximation ("gelu_new").
_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
}


# The one T5 <-> ModelConfig table, read both ways (`_t5_config` in, `config_to_t5` out):
# ModelConfig fields that are T5Config attributes of another name ...
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
# ... and the fields T5 fixes: set so on import, required so on export. The rest (activation
# and gating, tied head and logit scaling, the dropouts T5 does not separate, special ids)
# is derived in the two functions.
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


def config_from_hf(hf_config: PretrainedConfig) -> ModelConfig:
    """The ModelConfig equal to a `T5Config` or `BartConfig`; unsupported settings raise."""
    if isinstance(hf_config, T5Config):
        return _t5_config(hf_config)
    if isinstance(hf_config, BartConfig):
        return _bart_config(hf_config)
    raise TypeError(f"unsupported HF config {type(hf_config).__name__}; expected T5 or BART")


def from_hf(source: PreTrainedModel | str | os.PathLike) -> Seq2SeqTransformer:
    """A Seq2SeqTransformer with the weights of an HF T5 / BART model or local directory."""
    hf = _load_local(source) if isinstance(source, (str, os.PathLike)) else source
    if isinstance(hf, T5ForConditionalGeneration):
        make_config, make_pairs, inner = _t5_config, _t5_pairs, hf
    elif isinstance(hf, BartForConditionalGeneration):
        make_config, make_pairs, inner = _bart_config, _bart_pairs, hf.model
    else:
        raise TypeError(
            f"from_hf supports T5ForConditionalGeneration and BartForConditionalGeneration,"
            f" got {type(hf).__name__}"
        )
    # Our stacks share one token embedding; transformers 5 builds three when untied.
    if not all(
        torch.equal(inner.shared.weight, stack.embed_tokens.weight)
        for stack in (inner.encoder, inner.decoder)
    ):
        raise ValueError(
            "from_hf: the encoder and decoder token embeddings differ from the shared one;"
            " Seq2SeqTransformer shares a single token embedding between its stacks"
        )
    model = Seq2SeqTransformer(make_config(hf.config, tied=_is_tied(hf.lm_head, inner.shared)))
    pairs = make_pairs(model, hf)
    with torch.no_grad():
        for ours, theirs in pairs:
            _check_shape(ours, theirs)
            ours.copy_(torch.cat([t.detach().float() for t in theirs], dim=0))
    return model.train(hf.training)


def config_to_t5(config: ModelConfig) -> T5Config:
    """The T5Config expressing `config`; raises listing every setting T5 cannot express."""
    needs = {**T5_FIXED, "attention_dropout": config.dropout, "activation_dropout": config.dropout}
    problems = [
        f"model.{name}={getattr(config, name)!r} (T5 needs {want!r})"
        for name, want in needs.items()
        if getattr(config, name) != want
    ]
    if config.gated_ffn and config.activation == "gelu":
        problems.append("gated exact GELU (T5's 'gated-gelu' is the tanh approximation)")
    if config.scale_logits and not config.tie_embeddings:
        problems.append("scale_logits with untied embeddings (T5 scales only when tied)")
    if problems:
        raise ValueError("to_hf: T5 cannot express " + "; ".join(problems))
    act = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}
    act = act[config.activation]
    if config.gated_ffn:
        act = "gelu" if act == "gelu_new" else act  # "gated-gelu" means tanh GELU
    fields = {theirs: getattr(config, ours) for ours, theirs in T5_FIELDS.items()}
    return T5Config(
        **{**fields, "d_kv": config.head_dim},  # d_head may be null: the resolved width
        feed_forward_proj=("gated-" if config.gated_ffn else "") + act,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        # HF T5 reads this flag as "scale the logits" (and, before v5, also "tie").
        tie_word_embeddings=config.scale_logits,
    )


def to_hf(model: Seq2SeqTransformer) -> T5ForConditionalGeneration:
    """An HF T5ForConditionalGeneration computing the same logits as `model` (T5 configs)."""
    hf = T5ForConditionalGeneration(config_to_t5(model.config))
    if _is_tied(hf.lm_head, hf.shared) and not model.config.tie_embeddings:
        # transformers >= 5 ties the T5 head even without logit scaling; v1.1 needs it apart.
        hf.lm_head.weight = nn.Parameter(hf.shared.weight.detach().clone())
        getattr(hf, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    with torch.no_grad():
        for ours, theirs in _t5_pairs(model, hf):
            _check_shape(ours, theirs)
            parts = ours.detach().split([t.shape[0] for t in theirs], dim=0)
            for target, part in zip(theirs, parts, strict=True):
                target.copy_(part)
    return hf.train(model.training)


def _load_local(path: str | os.PathLike) -> PreTrainedModel:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path} is not a local save_pretrained directory")
    model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    classes = {"t5": T5ForConditionalGeneration, "bart": BartForConditionalGeneration}
    if model_type not in classes:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported (t5 or bart)")
    return classes[model_type].from_pretrained(path, local_files_only=True)


def _is_tied(head: nn.Linear, embedding: nn.Embedding) -> bool:
    return head.weight.data_ptr() == embedding.weight.data_ptr()


def _activation(name: str, where: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"{where}={name!r} is not supported; expected one of {list(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _token_ids(hf_config: PretrainedConfig, default_start: int) -> dict:
    eos = hf_config.eos_token_id
    if not isinstance(eos, int) or hf_config.pad_token_id is None:
        raise ValueError(f"need an int pad and eos id, got {hf_config.pad_token_id}, {eos}")
    start = getattr(hf_config, "decoder_start_token_id", None)
    return {
        "pad_token_id": hf_config.pad_token_id,
        "eos_token_id": eos,
        "decoder_start_token_id": default_start if start is None else start,
    }


def _t5_config(c: T5Config, tied: bool | None = None) -> ModelConfig:
    scale = getattr(c, "scale_decoder_outputs", None)
    scale = c.tie_word_embeddings if scale is None else scale  # transformers < 5
    tied = c.tie_word_embeddings if tied is None else tied
    return ModelConfig(
        **{ours: getattr(c, theirs) for ours, theirs in T5_FIELDS.items()},
        **T5_FIXED,
        attention_dropout=c.dropout_rate,
        activation_dropout=c.dropout_rate,
        activation=_activation(c.dense_act_fn, "T5 feed_forward_proj activation"),
        gated_ffn=c.is_gated_act,
        tie_embeddings=tied,
        scale_logits=bool(scale),
        **_token_ids(c, default_start=c.pad_token_id),  # T5 starts decoding from pad
    )


def _bart_config(c: BartConfig, tied: bool | None = None) -> ModelConfig:
    problems = [
        f"{a}={getattr(c, a)} != {b}={getattr(c, b)}"
        for a, b in (
            ("encoder_ffn_dim", "decoder_ffn_dim"),
            ("encoder_attention_heads", "decoder_attention_heads"),
        )
        if getattr(c, a) != getattr(c, b)
    ]
    # mBART-style variants of the BART config that this converter does not implement
    problems += [
        f"{flag}=True"
        for flag in ("normalize_before", "add_final_layer_norm", "add_bias_logits")
        if getattr(c, flag, False)
    ]
    if problems:
        raise ValueError("from_hf: unsupported BART config: " + "; ".join(problems))
    return ModelConfig(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        d_ff=c.encoder_ffn_dim,
        n_heads=c.encoder_attention_heads,
        n_encoder_layers=c.encoder_layers,
        n_decoder_layers=c.decoder_layers,
        dropout=float(c.dropout),
        attention_dropout=float(c.attention_dropout),
        activation_dropout=float(c.activation_dropout),
        positions="learned",
        max_positions=c.max_position_embeddings,
        norm="layernorm",
        norm_eps=1e-5,  # torch.nn.LayerNorm's default, which BART uses
        norm_position="post",
        activation=_activation(c.activation_function, "BART activation_function"),
        gated_ffn=False,
        attention_bias=True,
        ffn_bias=True,
        scale_attention=True,
        scale_embeddings=bool(c.scale_embedding),
        embedding_norm=True,
        final_norm=False,
        tie_embeddings=c.tie_word_embeddings if tied is None else tied,
        scale_logits=False,
        final_logits_bias=True,
        init_std=c.init_std,
        **_token_ids(c, default_start=c.eos_token_id),  # BART starts decoding from eos
    )


def _t5_pairs(model: Seq2SeqTransformer, hf: T5ForConditionalGeneration) -> Pairs:
    gated = model.config.gated_ffn
    pairs: Pairs = [(model.embed.weight, [hf.shared.weight])]
    for ours, theirs in ((model.encoder, hf.encoder), (model.decoder, hf.decoder)):
        bias_table = theirs.block[0].layer[0].SelfAttention.relative_attention_bias
        pairs.append((ours.relative_bias.weight, [bias_table.weight]))
        pairs.append((ours.final_norm.weight, [theirs.final_layer_norm.weight]))
        for layer, block in zip(ours.layers, theirs.block, strict=True):
            sub = block.layer  # [self-attention, (cross-attention,) feed-forward]
            attn = sub[0].SelfAttention
            pairs += [
                (layer.self_attn.qkv.weight, [attn.q.weight, attn.k.weight, attn.v.weight]),
                (layer.self_attn.out.weight, [attn.o.weight]),
                (layer.self_attn_block.norm.weight, [sub[0].layer_norm.weight]),
            ]
            if len(sub) == 3:
                cross = sub[1].EncDecAttention
                pairs += [
                    (layer.cross_attn.q.weight, [cross.q.weight]),
                    (layer.cross_attn.kv.weight, [cross.k.weight, cross.v.weight]),
                    (layer.cross_attn.out.weight, [cross.o.weight]),
                    (layer.cross_attn_block.norm.weight, [sub[1].layer_norm.weight]),
                ]
            dense = sub[-1].DenseReluDense
            wi = [dense.wi_0.weight, dense.wi_1.weight] if gated else [dense.wi.weight]
            pairs += [
                (layer.ffn.wi.weight, wi),
                (layer.ffn.wo.weight, [dense.wo.weight]),
                (layer.ffn_block.norm.weight, [sub[-1].layer_norm.weight]),
            ]
    if not _is_tied(hf.lm_head, hf.shared):
        head = model.embed if model.lm_head is None else model.lm_head
        pairs.append((head.weight, [hf.lm_head.weight]))
    return pairs


def _bart_pairs(model: Seq2SeqTransformer, hf: BartForConditionalGeneration) -> Pairs:
    offset = 2  # BART's learned position table reserves its first two rows
    pairs: Pairs = [
        (model.embed.weight, [hf.model.shared.weight]),
        (model.final_logits_bias, [hf.final_logits_bias[0]]),
    ]
    for ours, theirs in ((model.encoder, hf.model.encoder), (model.decoder, hf.model.decoder)):
        pairs.append((ours.embed.learned.weight, [theirs.embed_positions.weight[offset:]]))
        pairs += _linear_pairs(ours.embed.norm, theirs.layernorm_embedding)
        for layer, block in zip(ours.layers, theirs.layers, strict=True):
            attn = block.self_attn
            pairs += _linear_pairs(layer.self_attn.qkv, attn.q_proj, attn.k_proj, attn.v_proj)
            pairs += _linear_pairs(layer.self_attn.out, attn.out_proj)
            pairs += _linear_pairs(layer.self_attn_block.norm, block.self_attn_layer_norm)
            if hasattr(block, "encoder_attn"):
                cross = block.encoder_attn
                pairs += _linear_pairs(layer.cross_attn.q, cross.q_proj)
                pairs += _linear_pairs(layer.cross_attn.kv, cross.k_proj, cross.v_proj)
                pairs += _linear_pairs(layer.cross_attn.out, cross.out_proj)
                pairs += _linear_pairs(layer.cross_attn_block.norm, block.encoder_attn_layer_norm)
            pairs += _linear_pairs(layer.ffn.wi, block.fc1)
            pairs += _linear_pairs(layer.ffn.wo, block.fc2)
            pairs += _linear_pairs(layer.ffn_block.norm, block.final_layer_norm)
    if model.lm_head is not None:
        pairs.append((model.lm_head.weight, [hf.lm_head.weight]))
    return pairs


def _linear_pairs(ours: nn.Module, *theirs: nn.Module) -> Pairs:
    """Weight and bias pairs of a (possibly fused) linear or affine norm."""
    return [
        (getattr(ours, name), [getattr(t, name) for t in theirs]) for name in ("weight", "bias")
    ]


def _check_shape(ours: Tensor, theirs: list[Tensor]) -> None:
    rows = sum(t.shape[0] for t in theirs)
    if (rows, *theirs[0].shape[1:]) != tuple(ours.shape):
        shapes = [tuple(t.shape) for t in theirs]
        raise ValueError(f"shape mismatch: ours {tuple(ours.shape)} vs HF {shapes}")


__all__ = ["config_from_hf", "config_to_t5", "from_hf", "to_hf"]
