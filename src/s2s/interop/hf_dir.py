"""Hugging Face model directories in and out, without `transformers`.

    loaded = read_hf_directory("t5-small/")     # -> LoadedCheckpoint (like a bundle's)
    write_hf_directory(model, tokenizer, framing, "out/")

A directory is recognised by its `config.json` holding a `model_type` (s2s bundles have
none). Read, in the order that allocates least: the config (checked for size before anything
is built), the tokenizer (`tokenizer.json`; `spiece.model` or `vocab.json` + `merges.txt` are
converted by `transformers` when it is installed), the framing (below), then the weights:
`model.safetensors`, sharded `model.safetensors.index.json`, or `pytorch_model.bin` (read
with `weights_only=True`: never unpickled freely), tensor by tensor from memory-mapped files.

Framing, from the directory's own files: inputs (and targets) start with `<s>` when the
tokenizer's post-processor puts it there (BART), the input limit is the tokenizer's
`model_max_length`, the decoder start and forced first / last tokens come from
`generation_config.json` (else `config.json`). Special tokens are found by their strings,
which T5, mT5, Flan-T5 and BART share with s2s: <pad>, </s>, <s>, <mask>, <extra_id_N>.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from s2s.checkpoint import Framing, LoadedCheckpoint, check_loadable
from s2s.config import ModelConfig, check_size
from s2s.interop.hf_config import (
    HFConfigError,
    first_id,
    hf_config_for,
    model_config_from_hf,
    model_type_of,
)
from s2s.interop.hf_weights import IGNORABLE, hf_from_ours, ours_from_hf, weight_table
from s2s.interop.weight_files import (
    SAFETENSORS,
    HFDirectoryError,
    Weights,
    json_object,
    open_weights,
)
from s2s.tokenizer import BOS, EOS, MASK, PAD, Tokenizer, TokenizerError

log = logging.getLogger(__name__)

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
NO_LIMIT = 10**9  # transformers writes model_max_length 1e30 for "no limit"
# tokenizer_config.json keys -> the strings s2s finds those roles by
ROLES = {"pad_token": PAD, "eos_token": EOS, "bos_token": BOS, "mask_token": MASK}


def is_hf_directory(path: str | Path) -> bool:
    """Whether `path` is a directory whose config.json names a `model_type` (HF's layout)."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False
    return isinstance(values, dict) and "model_type" in values


def read_hf_directory(directory: str | Path) -> LoadedCheckpoint:
    """Model config, tokenizer, framing and weights of an HF directory (no model built)."""
    directory = Path(directory)
    values, generation, config = _read_config(directory)
    tokenizer_config = _optional_json(directory / TOKENIZER_CONFIG)
    tokenizer = read_hf_tokenizer(directory, tokenizer_config)
    check_loadable(config, tokenizer, str(directory / CONFIG))
    framing = read_framing(directory, values, generation, tokenizer_config, tokenizer)
    config, state, where = _read_weights(directory, config, values["model_type"], generation)
    return LoadedCheckpoint(state, config, tokenizer, {}, where, framing, origin="hf")


def read_hf_model(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Only the model config and weights (a directory saved without its tokenizer)."""
    directory = Path(directory)
    values, generation, config = _read_config(directory)
    try:
        check_size(config, str(directory / CONFIG))
    except ValueError as err:
        raise HFDirectoryError(str(err)) from None
    config, state, _ = _read_weights(directory, config, values["model_type"], generation)
    return config, state


def _read_config(directory: Path) -> tuple[dict[str, Any], dict[str, Any], ModelConfig]:
    values = json_object(directory / CONFIG)
    generation = _optional_json(directory / GENERATION_CONFIG)
    source = str(directory / CONFIG)
    try:
        model_type_of(values, source)
        # the size check needs no weights: assume the larger, untied head
        config = model_config_from_hf(values, tied=False, source=source)
    except HFConfigError as err:
        raise HFDirectoryError(str(err)) from None
    return values, generation, config


def _read_weights(
    directory: Path, config: ModelConfig, kind: str, generation: dict[str, Any]
) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    start = generation.get("decoder_start_token_id")
    with open_weights(directory) as weights:
        tied = _is_tied(weights, kind)
        config = dataclasses.replace(config, tie_embeddings=tied)
        if start is not None:
            config = dataclasses.replace(config, decoder_start_token_id=start)
        table = weight_table(config, "bart" if kind == "bart" else "t5", tied)
        state = ours_from_hf(table, weights.get, _our_shapes(config), weights.where)
        used = {n for entry in table for n in entry.theirs} | set(IGNORABLE)
        unused = [n for n in sorted(set(weights.names) - used) if not (tied and n == weights.head)]
    if unused:
        log.warning(
            "%s: %d tensors not used: %s", weights.where, len(unused), ", ".join(unused[:5])
        )
    return config, state, weights.where


# -- tokenizer and framing -----------------------------------------------------------------


def _optional_json(path: Path) -> dict[str, Any]:
    """A JSON object file a directory may leave out ({} when absent)."""
    return json_object(path) if path.is_file() else {}


def read_hf_tokenizer(directory: Path, config: dict[str, Any]) -> Tokenizer:
    """The directory's tokenizer, its special tokens checked against the roles s2s reads
    (`config`: its tokenizer_config.json, {} when absent)."""
    path = directory / TOKENIZER
    if path.is_file():
        try:
            tokenizer = Tokenizer.load(path)
        except TokenizerError as err:
            raise HFDirectoryError(str(err)) from None
    else:
        tokenizer = _converted_tokenizer(directory)
    for key, ours in ROLES.items():
        name = config.get(key)
        name = name.get("content") if isinstance(name, dict) else name
        if name is not None and name != ours:
            raise HFDirectoryError(
                f"{directory / TOKENIZER_CONFIG}: {key} is {name!r}; s2s finds this role by the"
                f" string {ours!r} (T5 and BART tokenizers use it): a tokenizer naming it"
                " otherwise is not supported"
            )
    return tokenizer


def _converted_tokenizer(directory: Path) -> Tokenizer:
    """A slow tokenizer's files (spiece.model, vocab.json + merges.txt) made fast by
    `transformers`, offline."""
    slow = [
        n
        for n in ("spiece.model", "vocab.json", "sentencepiece.bpe.model")
        if (directory / n).is_file()
    ]
    if not slow:
        raise HFDirectoryError(f"{directory}: no tokenizer.json (nor spiece.model / vocab.json)")
    try:
        from transformers import AutoTokenizer

        wrapped = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        backend = wrapped.backend_tokenizer
    except Exception as err:  # ImportError, or a converter's missing dependency
        raise HFDirectoryError(
            f"{directory / slow[0]}: converting this tokenizer to tokenizer.json needs "
            f"`pip install transformers sentencepiece protobuf` ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); or save it once with a fast "
            "tokenizer (save_pretrained writes tokenizer.json)"
        ) from None
    return Tokenizer(HFTokenizer.from_str(backend.to_str()))


def read_framing(
    directory: Path,
    values: dict[str, Any],
    generation: dict[str, Any],
    tokenizer_config: dict[str, Any],
    tokenizer: Tokenizer,
) -> Framing:
    """From config.json (`values`), generation_config.json, tokenizer_config.json and the
    tokenizer's post-processor."""

    def setting(key: str) -> Any:
        return generation[key] if generation.get(key) is not None else values.get(key)

    limit = None
    length = tokenizer_config.get("model_max_length")
    if isinstance(length, (int, float)) and 2 <= length < NO_LIMIT:
        limit = int(length)
    forced = {}
    for key in ("forced_bos_token_id", "forced_eos_token_id"):
        value = setting(key)
        forced[key] = None if value is None else first_id(value, key, str(directory / CONFIG))
    return Framing(
        max_source_length=limit,
        add_bos=_starts_with_bos(tokenizer, values["model_type"]),
        **forced,
    )


def _starts_with_bos(tokenizer: Tokenizer, kind: str) -> bool:
    """Whether the tokenizer's post-processor starts a single sequence with <s> (BART's
    RobertaProcessing or a template), else the model family's convention."""
    processor = json.loads(tokenizer.backend.to_str()).get("post_processor") or {}
    kinds = [processor] + list(processor.get("processors", []))  # a Sequence of processors
    for item in kinds:
        if item.get("type") in ("RobertaProcessing", "BertProcessing"):
            return True
        if item.get("type") == "TemplateProcessing":
            first = item.get("single", [{}])[0]
            return first.get("SpecialToken", {}).get("id") == BOS
    return kind == "bart" and tokenizer.bos_id is not None


def _is_tied(weights: Weights, kind: str) -> bool:
    """A head stored apart and unequal to the embedding means untied (see hf_config)."""
    if weights.head not in weights.files:
        return True
    embedding = "model.shared.weight" if kind == "bart" else "shared.weight"
    if embedding not in weights.files:
        return False
    return torch.equal(weights.get(weights.head), weights.get(embedding))


def _our_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    from s2s.model.meta import meta_model

    model = meta_model(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


# -- out -----------------------------------------------------------------------------------


def hf_files(model: Any, tokenizer: Tokenizer, framing: Framing) -> dict[str, Any]:
    """config.json, generation_config.json and the tensors of an HF directory for `model`."""
    config: ModelConfig = model.config
    kind = "t5" if config.positions == "t5_relative" else "bart"
    special = {"pad_token_id": tokenizer.pad_id, "eos_token_id": tokenizer.eos_id}
    if tokenizer.bos_id is not None:
        special["bos_token_id"] = tokenizer.bos_id
    forced = {
        k: v
        for k, v in (
            ("forced_bos_token_id", framing.forced_bos_token_id),
            ("forced_eos_token_id", framing.forced_eos_token_id),
        )
        if v is not None
    }
    values = hf_config_for(config, {**special, **forced})
    generation = {
        "decoder_start_token_id": config.decoder_start_token_id,
        **special,
        **forced,
    }
    tensors = hf_from_ours(weight_table(config, kind, config.tie_embeddings), model.state_dict())
    return {"config": values, "generation": generation, "tensors": tensors}


def tokenizer_config(tokenizer: Tokenizer, framing: Framing) -> dict[str, Any]:
    """What `AutoTokenizer` needs to wrap tokenizer.json with the right special tokens."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD,
        "eos_token": EOS,
    }
    if tokenizer.bos_id is not None:
        config["bos_token"] = BOS
    if tokenizer.mask_id is not None:
        config["mask_token"] = MASK
    if framing.max_source_length is not None:
        config["model_max_length"] = framing.max_source_length
    names = [tokenizer.backend.id_to_token(i) for i in tokenizer.sentinel_ids]
    if names:
        config["additional_special_tokens"] = names
    return config


def write_hf_files(directory: Path, model: Any, tokenizer: Tokenizer, framing: Framing) -> None:
    """Write an HF directory's files into `directory` (a fresh temporary one: see export)."""
    files = hf_files(model, tokenizer, framing)
    save_file(files["tensors"], directory / SAFETENSORS, metadata={"format": "pt"})
    for name, values in (
        (CONFIG, files["config"]),
        (GENERATION_CONFIG, files["generation"]),
        (TOKENIZER_CONFIG, tokenizer_config(tokenizer, framing)),
    ):
        (directory / name).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    _with_framing(tokenizer, framing).save(directory / TOKENIZER)


def _with_framing(tokenizer: Tokenizer, framing: Framing) -> Tokenizer:
    """A copy of `tokenizer` whose post-processor frames a text as the model reads it
    (`text </s>`, or `<s> text </s>`), so `transformers`' tokenizer(text) gives its input ids."""
    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    head = f"{BOS} " if framing.add_bos else ""
    specials = [(EOS, tokenizer.eos_id)]
    if framing.add_bos and tokenizer.bos_id is not None:
        specials.append((BOS, tokenizer.bos_id))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{head}$A {EOS}", pair=f"{head}$A {EOS} $B {EOS}", special_tokens=specials
    )
    return Tokenizer(backend)
