"""What an s2s training checkpoint holds beyond Lightning's own keys, and how to read it safely.

A Lightning `.ckpt` written by `s2s.pipeline.train` is a dict with (among Lightning's keys)

    "state_dict"   model weights, keys prefixed with "model." (the LightningModule attribute)
    "s2s"          {"format": 1, "model_config": ModelConfig.to_dict(), "tokenizer": JSON text,
                    "framing": Framing.to_dict() (how training framed inputs; absent in
                    checkpoints written before it existed)}

so one file is enough to rebuild the model and its tokenizer. Everything in it is plain data
(dicts, lists, strings, numbers, tensors): `torch.load(..., weights_only=True)` reads it, and a
file that needs unpickling of arbitrary objects is refused. Only local files are read (never a
URL), and the stored config is checked (`check_loadable`) before any model is built from it.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer

from s2s.config import ModelConfig, check_size
from s2s.tokenizer import Tokenizer

S2S_KEY = "s2s"
FORMAT = 1
MODEL_PREFIX = "model."
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe, or not an s2s checkpoint."""


@dataclass(frozen=True)
class Framing:
    """How the model's inputs and targets are framed, so training and generation agree.

    max_source_length: source tokens (EOS included) inputs are cut to; None: not recorded.
    add_bos: whether inputs and targets start with <s> (s2s's own data never does; BART's do).
    forced_bos_token_id: the token generation always emits first (Hugging Face BART's
        `forced_bos_token_id`); None: none.
    forced_eos_token_id: the token generation emits when it reaches max_new_tokens
        (BART's `forced_eos_token_id`); None: none.
    """

    max_source_length: int | None = None
    add_bos: bool = False
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any, source: str) -> Framing:
        """Checked: a damaged entry is a CheckpointError naming `source`. Keys missing (files
        written before they existed) take their defaults."""
        if isinstance(values, dict) and set(values) <= {f.name for f in dataclasses.fields(cls)}:
            length = values.get("max_source_length")
            add_bos = values.get("add_bos", False)
            forced = [values.get(k) for k in ("forced_bos_token_id", "forced_eos_token_id")]
            length_ok = length is None or (type(length) is int and length >= 2)
            forced_ok = all(i is None or (type(i) is int and i >= 0) for i in forced)
            if length_ok and forced_ok and type(add_bos) is bool:
                return cls(length, add_bos, *forced)
        raise CheckpointError(f"{source}: damaged s2s framing {values!r}")


def metadata(
    config: ModelConfig, tokenizer: Tokenizer, framing: Framing | None = None
) -> dict[str, Any]:
    """The "s2s" entry stored in every checkpoint."""
    meta = {
        "format": FORMAT,
        "model_config": config.to_dict(),
        "tokenizer": tokenizer.backend.to_str(),
    }
    if framing is not None:
        meta["framing"] = framing.to_dict()
    return meta


@dataclass(frozen=True)
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]  # model weights, "model." prefix removed
    config: ModelConfig
    tokenizer: Tokenizer
    raw: dict[str, Any]  # the whole checkpoint (optimizer state, loops, ...); {} for a bundle
    source: str = ""  # the file the weights came from, for error messages
    framing: Framing = Framing()  # how training framed inputs (defaults where not recorded)
    origin: str = "s2s"  # "hf": read from a Hugging Face model directory


def is_url(path: str | Path) -> bool:
    """Whether `path` names a remote location (`http://...`, `s3://...`), not a local file."""
    return bool(_URL.match(str(path)))


def refuse_url(path: str | Path, key: str) -> None:
    """CheckpointError for a URL: s2s reads weights from local files only."""
    if is_url(path):
        raise CheckpointError(
            f"{key}={path}: only local files are read (download the file first, and check "
            "where it came from)"
        )


def check_loadable(config: ModelConfig, tokenizer: Tokenizer, source: str) -> None:
    """Refuse a stored config too large to build, or a tokenizer with ids the model lacks."""
    try:
        check_size(config, source)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocabulary only {config.vocab_size} (model vocab_size): they do not belong together"
        )


def read_checkpoint(path: str | Path, key: str = "checkpoint") -> LoadedCheckpoint:
    """Read a local s2s `.ckpt` with `weights_only=True`; clear `CheckpointError` on any problem.

    `key` names the setting the path came from (`init_from`, `ckpt_path`) in the URL error.
    """
    refuse_url(path, key)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch.save zip archive)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: the checkpoint holds objects that are not plain data or "
            f"tensors ({_unpickler_reason(err)}); s2s never unpickles code"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(raw, dict) or S2S_KEY not in raw or "state_dict" not in raw:
        raise CheckpointError(
            f"{path}: not an s2s checkpoint (no {S2S_KEY!r} and 'state_dict' entries)"
        )
    meta = raw[S2S_KEY]
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        tokenizer = Tokenizer(HFTokenizer.from_str(meta["tokenizer"]))
    except Exception as err:  # KeyError, a bad value, or the tokenizers library refusing
        raise CheckpointError(f"{path}: damaged s2s metadata ({err})") from None
    check_loadable(config, tokenizer, str(path))
    framing = Framing.from_dict(meta.get("framing", {}), str(path))
    state = {
        key[len(MODEL_PREFIX) :]: value
        for key, value in raw["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }
    return LoadedCheckpoint(state, config, tokenizer, raw, str(path), framing)


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's long weights-only error that names what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported" in line or "Unpickler error" in line]
    reason = (named or lines or [type(err).__name__])[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", reason).split(". Please use")[0]
