"""Hugging Face interop for `transformers` model objects: T5 / BART in, T5 out.

    model = from_hf(hf_model_or_local_dir)    # T5ForConditionalGeneration (v1.0 / v1.1)
                                              # or BartForConditionalGeneration
    hf_model = to_hf(model)                   # T5-style configs only

A thin layer over the `transformers`-free readers and writers (`hf_config`, `hf_weights`,
`hf_dir`): the same config conversion and the same weight table serve a model object here
and a directory on disk everywhere else (`generate.py ckpt=DIR`, `init_from=DIR`,
`python -m s2s.export --format hf`). Nothing is ever downloaded: a path must be a local
`save_pretrained` directory. Training-only HF settings that do not change the function
(BART layerdrop, T5 initializer_factor) are not carried over.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import (
    BartForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

from s2s.config import ModelConfig
from s2s.interop.hf_config import model_config_from_hf, t5_config_for
from s2s.interop.hf_weights import hf_from_ours, ours_from_hf, weight_table
from s2s.model.transformer import Seq2SeqTransformer


def config_from_hf(hf_config: PretrainedConfig) -> ModelConfig:
    """The ModelConfig equal to a `T5Config` or `BartConfig`; unsupported settings raise."""
    values = hf_config.to_dict()
    return model_config_from_hf(
        values, tied=bool(values.get("tie_word_embeddings", True)), source=type(hf_config).__name__
    )


def from_hf(source: PreTrainedModel | str | os.PathLike) -> Seq2SeqTransformer:
    """A Seq2SeqTransformer with the weights of an HF T5 / BART model or local directory."""
    if isinstance(source, (str, os.PathLike)):
        return _from_directory(source)
    hf = source
    if isinstance(hf, T5ForConditionalGeneration):
        kind, inner = "t5", hf
    elif isinstance(hf, BartForConditionalGeneration):
        kind, inner = "bart", hf.model
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
    tied = hf.lm_head.weight.data_ptr() == inner.shared.weight.data_ptr()
    name = type(hf).__name__
    config = model_config_from_hf(hf.config.to_dict(), tied=tied, source=name)
    model = Seq2SeqTransformer(config)
    state = hf.state_dict()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = ours_from_hf(weight_table(config, kind, tied), state.__getitem__, shapes, name)
    model.load_state_dict(ours, strict=False)  # only aliases of the shared embedding absent
    return model.train(hf.training)


def _from_directory(path: str | os.PathLike) -> Seq2SeqTransformer:
    from s2s.bundle import load_weights
    from s2s.interop.hf_dir import is_hf_directory, read_hf_model
    from s2s.model.meta import meta_model

    if not is_hf_directory(path):
        raise FileNotFoundError(f"{path} is not a local save_pretrained directory")
    config, state = read_hf_model(Path(path))
    model = meta_model(config)  # no initialisation for the loaded weights to overwrite
    load_weights(model, state, str(path), assign=True)
    return model.eval()


def config_to_t5(config: ModelConfig) -> T5Config:
    """The T5Config expressing `config`; raises listing every setting T5 cannot express."""
    values = t5_config_for(config)
    return T5Config(**{k: v for k, v in values.items() if k != "architectures"})


def to_hf(model: Seq2SeqTransformer) -> T5ForConditionalGeneration:
    """An HF T5ForConditionalGeneration computing the same logits as `model` (T5 configs)."""
    hf = T5ForConditionalGeneration(config_to_t5(model.config))
    if model.config.tie_embeddings is False and hf.lm_head.weight is hf.shared.weight:
        # transformers >= 5 may tie the T5 head even without logit scaling; v1.1 needs it apart
        hf.lm_head.weight = nn.Parameter(hf.shared.weight.detach().clone())
        getattr(hf, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    table = weight_table(model.config, "t5", model.config.tie_embeddings)
    with torch.no_grad():
        state = hf.state_dict()
        for name, tensor in hf_from_ours(table, model.state_dict()).items():
            state[name].copy_(tensor)
    return hf.train(model.training)


__all__ = ["config_from_hf", "config_to_t5", "from_hf", "to_hf"]
