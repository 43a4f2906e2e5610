"""Tokenise each dataset file once and cache the ids on disk.

A cache entry is keyed by the file's bytes and the tokenizer's JSON, so a second run with the
same data and tokenizer loads ids in milliseconds instead of re-tokenising, and any change to
either makes a new entry. Entries are written to a temporary file and renamed into place: a
crash (or two DDP ranks writing the same entry) never leaves a half-written file.

Ids are stored ragged: one flat int32 array plus offsets, row i = ids[offsets[i]:offsets[i+1]].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2s.data.records import Records, read_bytes, read_records
from s2s.files import atomic_write
from s2s.tokenizer import Tokenizer

CACHE_VERSION = 2  # 2: {"Text"} records read literal special-token strings as text


@dataclass(frozen=True)
class Ragged:
    """Variable-length rows of token ids: row i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # (N_tokens,) int32
    offsets: np.ndarray  # (N_rows + 1,) int64

    @classmethod
    def from_rows(cls, rows: list[list[int]]) -> Ragged:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class TokenizedFile:
    """One dataset file as token ids (no special tokens added): inputs, and targets for pairs."""

    path: Path
    kind: str  # "text" | "pairs"
    inputs: Ragged
    targets: Ragged | None


def fingerprint(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:20]


def tokenize_file(
    path: str | Path, tokenizer: Tokenizer, cache_dir: str | Path | None
) -> TokenizedFile:
    """Read, validate and tokenise `path`, or load the ids from the cache."""
    path = Path(path)
    raw = read_bytes(path)  # a located RecordError when missing or unreadable
    entry = None
    if cache_dir is not None:
        key = fingerprint(str(CACHE_VERSION).encode(), raw, tokenizer.backend.to_str().encode())
        entry = Path(cache_dir) / f"{path.stem}-{key}.npz"
        if entry.is_file():
            return _load(path, entry)
    records = read_records(path)
    tokenized = _tokenize(records, tokenizer)
    if entry is not None:
        _save(tokenized, entry)
    return tokenized


def _tokenize(records: Records, tokenizer: Tokenizer) -> TokenizedFile:
    # clean text is noised by the data module: a literal "<mask>" in it is text; in pairs it is
    # the mask token (pre-masked inputs)
    specials = records.kind == "pairs"
    inputs = Ragged.from_rows(tokenizer.encode_batch(records.inputs, specials))
    targets = None
    if records.targets is not None:
        targets = Ragged.from_rows(tokenizer.encode_batch(records.targets))
    return TokenizedFile(records.path, records.kind, inputs, targets)


def _save(tokenized: TokenizedFile, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"inputs_ids": tokenized.inputs.ids, "inputs_offsets": tokenized.inputs.offsets}
    if tokenized.targets is not None:
        arrays |= {
            "targets_ids": tokenized.targets.ids,
            "targets_offsets": tokenized.targets.offsets,
        }
    with atomic_write(entry) as tmp, tmp.open("wb") as handle:
        np.savez(handle, kind=np.array(tokenized.kind), **arrays)


def _load(path: Path, entry: Path) -> TokenizedFile:
    with np.load(entry) as data:
        inputs = Ragged(data["inputs_ids"], data["inputs_offsets"])
        targets = None
        if "targets_ids" in data:
            targets = Ragged(data["targets_ids"], data["targets_offsets"])
        return TokenizedFile(path, str(data["kind"]), inputs, targets)
