"""Bundles: a directory holding a trained model in files that need no unpickling.

    DIR/config.json         ModelConfig.to_json()
    DIR/model.safetensors   the weights (safetensors: a JSON header and raw tensor bytes)
    DIR/tokenizer.json      the tokenizer

    model, tokenizer = load_pretrained("DIR")            # a bundle
    model, tokenizer = load_pretrained("last.ckpt")      # a training checkpoint

Loading a bundle never runs pickle; loading a `.ckpt` goes through
`s2s.checkpoint.read_checkpoint` (`torch.load(..., weights_only=True)`).
Tied weights (one embedding shared by the encoder, decoder and LM head) are stored once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from s2s.checkpoint import CheckpointError, read_checkpoint
from s2s.config import ModelConfig
from s2s.model.transformer import Seq2SeqTransformer
from s2s.tokenizer import Tokenizer, TokenizerError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
BUNDLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)


class BundleError(CheckpointError):
    """A bundle directory is missing, incomplete or damaged."""


class Pretrained(NamedTuple):
    model: Seq2SeqTransformer  # in eval mode
    tokenizer: Tokenizer


def load_pretrained(path: str | os.PathLike) -> Pretrained:
    """Model (eval mode) and tokenizer from a bundle directory or an s2s `.ckpt` file."""
    path = Path(path)
    if path.is_dir():
        return load_bundle(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or bundle directory")
    loaded = read_checkpoint(path)
    model = _build(loaded.config, loaded.state_dict, str(path))
    return Pretrained(model, loaded.tokenizer)


def load_bundle(directory: str | os.PathLike) -> Pretrained:
    directory = Path(directory)
    missing = [name for name in BUNDLE_FILES if not (directory / name).is_file()]
    if missing:
        raise BundleError(
            f"{directory}: not a complete bundle, missing {', '.join(missing)} "
            f"(a bundle holds {', '.join(BUNDLE_FILES)})"
        )
    try:
        config = ModelConfig.from_json((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise BundleError(f"{directory / CONFIG_FILE}: not a valid model config ({err})") from None
    try:
        tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
    except TokenizerError as err:
        raise BundleError(str(err)) from None
    try:
        state = load_file(directory / WEIGHTS_FILE)
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"{directory / WEIGHTS_FILE}: not readable weights ({err})") from None
    return Pretrained(_build(config, state, str(directory / WEIGHTS_FILE)), tokenizer)


def save_bundle(
    model: Seq2SeqTransformer, tokenizer: Tokenizer, directory: str | os.PathLike
) -> Path:
    """Write a bundle into `directory` (created if needed); nothing half-written is left."""

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(model.config.to_json() + "\n", encoding="utf-8")
        save_file(unique_tensors(model.state_dict()), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        tokenizer.save(tmp / TOKENIZER_FILE)

    return publish(directory, write)


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor kept under its first name only (safetensors
    refuses aliases); `_build` restores the others through the model's own tying."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    unique = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        unique[name] = tensor.detach().cpu().contiguous()
    return unique


def publish(directory: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` on a fresh temporary directory next to `directory`, then move each
    file it made into `directory` with an atomic rename. A failure leaves `directory` as it
    was; a crash can at worst leave a hidden `.name.tmp*` folder beside it."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BundleError(f"{directory}: exists and is not a directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp"))
    try:
        write(tmp)
        directory.mkdir(exist_ok=True)
        for item in sorted(tmp.iterdir()):
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _build(config: ModelConfig, state: dict[str, torch.Tensor], where: str) -> Seq2SeqTransformer:
    """A model of `config` holding `state`; aliases of tied tensors may be absent."""
    model = Seq2SeqTransformer(config)
    aliases = _alias_names(model)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{where}: weights do not fit the model config ({detail})") from None
    missing = sorted(set(result.missing_keys) - aliases)
    if missing or result.unexpected_keys:
        problems = []
        if missing:
            problems.append(f"missing {_few(missing)}")
        if result.unexpected_keys:
            problems.append(f"unexpected {_few(sorted(result.unexpected_keys))}")
        raise CheckpointError(
            f"{where}: weights do not match the model config: " + "; ".join(problems)
        )
    return model.eval()


def _alias_names(model: Seq2SeqTransformer) -> set[str]:
    """Names of state-dict entries that share storage with an earlier entry."""
    state = model.state_dict()
    return set(state) - set(unique_tensors(state))


def _few(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more
