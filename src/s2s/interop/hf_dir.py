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
import math
import pickle
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from s2s.checkpoint import CheckpointError, Framing, LoadedCheckpoint, check_loadable
from s2s.config import ModelConfig, check_size
from s2s.interop.hf_config import (
    HFConfigError,
    first_id,
    hf_config_for,
    model_config_from_hf,
    model_type_of,
)
from s2s.interop.hf_weights import IGNORABLE, hf_from_ours, ours_from_hf, weight_table
from s2s.tokenizer import BOS, EOS, MASK, PAD, Tokenizer, TokenizerError

log = logging.getLogger(__name__)

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX)
NO_LIMIT = 10**9  # transformers writes model_max_length 1e30 for "no limit"
# tokenizer_config.json keys -> the strings s2s finds those roles by
ROLES = {"pad_token": PAD, "eos_token": EOS, "bos_token": BOS, "mask_token": MASK}


class HFDirectoryError(CheckpointError):
    """A Hugging Face directory that cannot be read as an s2s model."""


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
    tokenizer = read_hf_tokenizer(directory)
    check_loadable(config, tokenizer, str(directory / CONFIG))
    framing = read_framing(directory, values, generation, tokenizer, values["model_type"])
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
    values = _json(directory / CONFIG)
    generation = {}
    if (directory / GENERATION_CONFIG).is_file():
        generation = _json(directory / GENERATION_CONFIG)
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


def _json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HFDirectoryError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(values, dict):
        raise HFDirectoryError(f"{path}: not a JSON object")
    return values


# -- tokenizer and framing -----------------------------------------------------------------


def read_hf_tokenizer(directory: Path) -> Tokenizer:
    """The directory's tokenizer, its special tokens checked against the roles s2s reads."""
    path = directory / TOKENIZER
    if path.is_file():
        try:
            tokenizer = Tokenizer.load(path)
        except TokenizerError as err:
            raise HFDirectoryError(str(err)) from None
    else:
        tokenizer = _converted_tokenizer(directory)
    config = directory / TOKENIZER_CONFIG
    if config.is_file():
        values = _json(config)
        for key, ours in ROLES.items():
            name = values.get(key)
            name = name.get("content") if isinstance(name, dict) else name
            if name is not None and name != ours:
                raise HFDirectoryError(
                    f"{config}: {key} is {name!r}; s2s finds this role by the string {ours!r}"
                    " (T5 and BART tokenizers use it): a tokenizer naming it otherwise is not"
                    " supported"
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
    tokenizer: Tokenizer,
    kind: str,
) -> Framing:
    def setting(key: str) -> Any:
        return generation[key] if generation.get(key) is not None else values.get(key)

    limit = None
    if (directory / TOKENIZER_CONFIG).is_file():
        length = _json(directory / TOKENIZER_CONFIG).get("model_max_length")
        if isinstance(length, (int, float)) and 2 <= length < NO_LIMIT:
            limit = int(length)
    forced = {}
    for key in ("forced_bos_token_id", "forced_eos_token_id"):
        value = setting(key)
        forced[key] = None if value is None else first_id(value, key, str(directory / CONFIG))
    return Framing(
        max_source_length=limit,
        add_bos=_starts_with_bos(tokenizer, kind),
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


# -- weights -------------------------------------------------------------------------------


class _Weights:
    """Named tensors of a directory's weight files, read one at a time."""

    def __init__(self, files: dict[str, Path], readers: dict[Path, Any], where: str) -> None:
        self.files, self.readers, self.where = files, readers, where
        self.names = list(files)
        self.head = "lm_head.weight"

    def get(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise HFDirectoryError(
                f"{self.where}: missing weight {name!r} (the directory's config.json describes a"
                " model that has it: a damaged or partial download?)"
            )
        return self.readers[self.files[name]](name)


@contextmanager
def open_weights(directory: Path) -> Iterator[_Weights]:
    found = [name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not found:
        raise HFDirectoryError(f"{directory}: no weights ({', '.join(WEIGHT_FILES)})")
    first = directory / found[0]
    if found[0].endswith(".index.json"):
        index = _json(first).get("weight_map")
        if not isinstance(index, dict):
            raise HFDirectoryError(f"{first}: no 'weight_map' object")
        files = {name: directory / str(shard) for name, shard in index.items()}
    else:
        files = None
    with ExitStack() as stack:
        readers: dict[Path, Any] = {}
        shards = sorted(set(files.values())) if files is not None else [first]
        names: dict[str, Path] = {}
        for shard in shards:
            reader, keys = _open_shard(shard, stack)
            readers[shard] = reader
            names.update(dict.fromkeys(keys, shard))
        yield _Weights(files if files is not None else names, readers, str(first))


def _open_shard(path: Path, stack: ExitStack) -> tuple[Any, list[str]]:
    if not path.is_file():
        raise HFDirectoryError(f"{path}: weight shard not found")
    if path.suffix == ".safetensors":
        shard = stack.enter_context(SafetensorsReader(path))
        return shard.get, shard.names
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HFDirectoryError(
            f"{path}: refused: the file holds objects that are not plain tensors ({reason[:120]});"
            " s2s never unpickles code"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise HFDirectoryError(f"{path}: not a readable weights file ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HFDirectoryError(f"{path}: not a state dict of tensors")
    return (lambda name: state[name].clone()), list(state)  # owned, not the file's mapping


class SafetensorsReader:
    """Tensors of a `.safetensors` file, each read straight into a buffer of its own.

    The format (8-byte little-endian header length, a JSON header of names, dtypes, shapes
    and byte offsets, then the raw data) is read here rather than through the `safetensors`
    library's `safe_open`, whose memory map keeps every page read in the process's resident
    memory until the file is closed: reading a 1 GB model that way peaks at twice its size,
    reading tensor by tensor peaks at its size (benchmarks/hf_load.py). Writing still uses the
    library.
    """

    DTYPES: ClassVar[dict[str, torch.dtype]] = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
        "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
        "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    }  # fmt: skip

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("rb")
        try:
            self.header, self.start = self._header()
        except (ValueError, KeyError, TypeError) as err:
            self.file.close()
            raise HFDirectoryError(f"{path}: not readable safetensors ({err})") from None
        self.names = list(self.header)

    def _header(self) -> tuple[dict[str, Any], int]:
        size = self.path.stat().st_size
        length = int.from_bytes(self.file.read(8), "little")
        if not 2 <= length <= size - 8:
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(self.file.read(length))
        header.pop("__metadata__", None)
        for name, info in header.items():
            begin, end = info["data_offsets"]
            dtype = self.DTYPES[info["dtype"]]
            count = math.prod(info["shape"]) * dtype.itemsize
            if end - begin != count or not 0 <= begin <= end <= size - 8 - length:
                raise ValueError(f"tensor {name!r}: offsets {begin}-{end} do not fit its shape")
        return header, 8 + length

    def get(self, name: str) -> torch.Tensor:
        info = self.header[name]
        tensor = torch.empty(info["shape"], dtype=self.DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        self.file.seek(self.start + begin)
        if end > begin:
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            if self.file.readinto(view) != end - begin:
                raise HFDirectoryError(f"{self.path}: cut short inside tensor {name!r}")
        return tensor

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _is_tied(weights: _Weights, kind: str) -> bool:
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
