"""Bundles: a directory holding a trained model in files that need no unpickling.

    DIR/config.json         ModelConfig.to_json()
    DIR/model.safetensors   the weights (safetensors: a JSON header and raw tensor bytes)
    DIR/tokenizer.json      the tokenizer

    model, tokenizer = load_pretrained("DIR")            # a bundle
    model, tokenizer = load_pretrained("last.ckpt")      # a training checkpoint

Loading a bundle never runs pickle; loading a `.ckpt` goes through
`s2s.checkpoint.read_checkpoint` (`torch.load(..., weights_only=True)`). `read_pretrained` is the
one reader of weights for every path that loads them (generate, export, init_from): local files
only, the config checked for size and against the tokenizer before anything is built.
Tied weights (one embedding shared by the encoder, decoder and LM head) are stored once. The
weights file records the digest of the tokenizer it was saved with; a bundle whose
tokenizer.json was swapped for another loads with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from s2s import kernels
from s2s.checkpoint import (
    CheckpointError,
    Framing,
    LoadedCheckpoint,
    check_loadable,
    read_checkpoint,
    refuse_url,
)
from s2s.config import ModelConfig
from s2s.files import new_file_mode
from s2s.interop.hf_dir import is_hf_directory, read_hf_directory
from s2s.interop.hf_hub import is_hub_name
from s2s.interop.hf_hub import resolve as resolve_hub_name
from s2s.model.meta import meta_model
from s2s.model.transformer import Seq2SeqTransformer
from s2s.tokenizer import Tokenizer, TokenizerError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
BUNDLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
TOKENIZER_DIGEST = "s2s_tokenizer_sha256"  # safetensors metadata key
FRAMING = "s2s_framing"  # safetensors metadata key: Framing.to_dict() as JSON
log = logging.getLogger(__name__)


class BundleError(CheckpointError):
    """A bundle directory is missing, incomplete or damaged."""


class Pretrained(NamedTuple):
    model: Seq2SeqTransformer  # in eval mode
    tokenizer: Tokenizer


def load_pretrained(path: str | os.PathLike) -> Pretrained:
    """Model (eval mode, `s2s.kernels` installed unless S2S_KERNELS=0) and tokenizer from a
    bundle directory or an s2s `.ckpt` file."""
    return build_pretrained(read_pretrained(path))


def build_pretrained(loaded: LoadedCheckpoint) -> Pretrained:
    """The model and tokenizer of what `read_pretrained` read."""
    # built on the meta device, then given the loaded tensors themselves: no random
    # initialisation to overwrite, no second copy of the weights in memory
    model = meta_model(loaded.config)
    load_weights(model, loaded.state_dict, loaded.source, assign=True)
    return Pretrained(kernels.install(model).eval(), loaded.tokenizer)


def read_pretrained(path: str | os.PathLike, key: str = "checkpoint") -> LoadedCheckpoint:
    """Weights, config and tokenizer of a bundle directory or an s2s `.ckpt` (not yet a model).

    `key` names the setting the path came from (`ckpt`, `init_from`) in error messages.
    """
    refuse_url(path, key)
    if is_hub_name(path):
        path = resolve_hub_name(str(path), key)
    path = Path(path)
    if path.is_dir() and is_hf_directory(path):
        return read_hf_directory(path)
    if path.is_dir():
        return read_bundle(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or bundle directory")
    return read_checkpoint(path, key)


def read_bundle(directory: str | os.PathLike) -> LoadedCheckpoint:
    """A bundle's parts, checked in the order that allocates least: config, tokenizer, weights."""
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
    check_loadable(config, tokenizer, str(directory / CONFIG_FILE))
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(weights)
        with safe_open(weights, "pt") as handle:
            stored = handle.metadata() or {}
        stored_digest = stored.get(TOKENIZER_DIGEST)
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"{weights}: not readable weights ({err})") from None
    framing = _framing(stored.get(FRAMING, "{}"), str(weights))
    if stored_digest is not None and stored_digest != tokenizer.digest():
        log.warning(
            "warning: %s is not the tokenizer %s was saved with: outputs may be gibberish",
            directory / TOKENIZER_FILE,
            weights,
        )
    return LoadedCheckpoint(state, config, tokenizer, {}, str(weights), framing)


def save_bundle(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    directory: str | os.PathLike,
    framing: Framing | None = None,
) -> Path:
    """Write a bundle into `directory` (created if needed); nothing half-written is left.
    `framing` (how training framed inputs) goes into the weights file's metadata."""

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(model.config.to_json() + "\n", encoding="utf-8")
        metadata = {"format": "pt", TOKENIZER_DIGEST: tokenizer.digest()}
        if framing is not None:
            metadata[FRAMING] = json.dumps(framing.to_dict())
        save_file(unique_tensors(model.state_dict()), tmp / WEIGHTS_FILE, metadata=metadata)
        tokenizer.save(tmp / TOKENIZER_FILE)

    return publish(directory, write)


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor kept under its first name only (safetensors
    refuses aliases); `load_weights` accepts their absence, the model's own tying restores
    them."""
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
    was; a crash can at worst leave a hidden `.name.tmp*` folder beside it. The files get the
    mode a newly created file gets (0644 under the usual umask), not the temporary 0600."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BundleError(f"{directory}: exists and is not a directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp"))
    try:
        write(tmp)
        directory.mkdir(exist_ok=True)
        mode = new_file_mode()
        for item in sorted(tmp.iterdir()):
            if item.is_file():
                item.chmod(mode)
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_weights(
    model: Seq2SeqTransformer, state: dict[str, torch.Tensor], where: str, assign: bool = False
) -> None:
    """Load `state` into `model`, strictly: a missing, unexpected or wrongly shaped tensor is a
    `CheckpointError` naming `where`; only aliases of tied tensors may be absent. `assign`
    makes the model's parameters the tensors of `state` (for a model built on the meta
    device)."""
    aliases = _alias_names(model)
    try:
        result = model.load_state_dict(state, strict=False, assign=assign)
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


def _alias_names(model: Seq2SeqTransformer) -> set[str]:
    """Names of state-dict entries that are an earlier entry's tensor under another name (by
    identity, which holds on the meta device too, where every storage address is 0)."""
    seen: set[int] = set()
    aliases = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            aliases.add(name)
        seen.add(id(tensor))
    return aliases


def _framing(text: str, source: str) -> Framing:
    """The framing stored in a bundle's weights metadata (JSON), checked."""
    try:
        values = json.loads(text)
    except ValueError:
        values = text  # Framing.from_dict refuses it, naming the file
    return Framing.from_dict(values, source)


def _few(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more
