"""Writing a prepared directory (`s2s.data.prepared`'s format) so that a failed or killed
`python -m s2s.prepare` never costs the dataset already there, and a killed one is resumed.

Everything is written into a staging directory inside the output and swapped in when complete:

    OUT/.staging/progress.json   the run's fingerprint and tokenizer checksum, and every
                                 finished shard (documents, tokens, sha256): rewritten as
                                 shards finish, so a killed run's finished shards are reused
    OUT/.staging/...             the new tokenizer.json, shards and, last, manifest.json

`publish` (once the staging manifest exists): the old manifest goes first (from then the old
dataset is gone and the new one is complete in staging), the new files are renamed over the
old, old shards the new manifest does not list are deleted, and the manifest is renamed in
last. A run killed while publishing leaves the staging manifest: the next run finishes it.
Until then a bad record, a full disk or a kill leaves the old dataset as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from s2s.data.prepared import MANIFEST, TOKENIZER, Manifest, Shard, sha256_file
from s2s.files import atomic_write, remove_stale_tmp_files

log = logging.getLogger(__name__)
STAGING = ".staging"
PROGRESS = "progress.json"


class ShardWriter:
    """Appends documents to numbered shards of one stream, each at most ~`shard_tokens` long,
    continuing after `done` (finished shards of a killed run: their documents are dropped)."""

    def __init__(
        self,
        directory: Path,
        stream: str,
        dtype: np.dtype,
        separator: Sequence[int],
        shard_tokens: int,
        done: Sequence[Shard] | None = None,
    ) -> None:
        self.directory, self.stream, self.dtype = directory, stream, np.dtype(dtype)
        self.separator = np.asarray(separator, dtype=self.dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[Shard] = list(done or [])
        self.skip = sum(s.documents for s in self.shards)  # documents already in finished shards
        self._pieces: list[np.ndarray] = []
        self._starts: list[int] = []
        self._size = 0

    def add(self, documents: Iterable[Sequence[int]], first: int) -> None:
        """Append `documents`, the first of which is document number `first` of the stream."""
        for index, ids in enumerate(documents, start=first):
            if index < self.skip:
                continue
            self._starts.append(self._size)
            piece = np.asarray(ids, dtype=self.dtype)
            self._pieces.append(piece)
            self._size += len(piece)
            if len(self.separator):
                self._pieces.append(self.separator)
                self._size += len(self.separator)
            if self._size >= self.shard_tokens:
                self._flush()

    def close(self) -> list[Shard]:
        if self._starts or not self.shards:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = f"{self.stream}-{len(self.shards):05d}"
        tokens = np.concatenate(self._pieces) if self._pieces else np.zeros(0, self.dtype)
        index = np.asarray([*self._starts, self._size], dtype=np.int64)
        data = {".bin": tokens.tobytes(), ".idx": index.tobytes()}
        for suffix, content in data.items():
            write_bytes(self.directory / f"{name}{suffix}", content)
        digest = shard_digest(data[".bin"], data[".idx"])
        self.shards.append(Shard(name, len(self._starts), int(self._size), digest))
        self._pieces, self._starts, self._size = [], [], 0


def shard_digest(tokens: bytes, index: bytes) -> str:
    return hashlib.sha256(hashlib.sha256(tokens).digest() + index).hexdigest()


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through `s2s.files.atomic_write` (renamed only once complete)."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


class Staging:
    """The staging directory of one `prepare` run (fingerprint `fingerprint`) into `output`."""

    def __init__(self, output: Path, fingerprint: str) -> None:
        self.output, self.directory = output, output / STAGING
        self.fingerprint = fingerprint

    def resume(self) -> tuple[dict[str, list[Shard]], str | None]:
        """Open the staging directory: ({stream: finished shards}, tokenizer sha256) of a killed
        run with the same fingerprint whose files check out; else ({}, None), emptied."""
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp_files(self.directory)
        try:
            progress = json.loads((self.directory / PROGRESS).read_text(encoding="utf-8"))
            if progress["fingerprint"] == self.fingerprint:
                tokenizer = self.directory / TOKENIZER
                if tokenizer.is_file() and sha256_file(tokenizer) == progress["tokenizer"]:
                    shards = {
                        stream: self._intact([Shard(**s) for s in listed])
                        for stream, listed in progress["shards"].items()
                    }
                    return shards, progress["tokenizer"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no usable record: start over
        shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        return {}, None

    def _intact(self, shards: list[Shard]) -> list[Shard]:
        """The leading shards whose files exist with their recorded checksum."""
        for i, shard in enumerate(shards):
            paths = [self.directory / f"{shard.name}{suffix}" for suffix in (".bin", ".idx")]
            if not all(p.is_file() for p in paths):
                return shards[:i]
            if shard_digest(*(p.read_bytes() for p in paths)) != shard.sha256:
                return shards[:i]
        return shards

    def record(self, tokenizer_sha256: str, shards: dict[str, list[Shard]]) -> None:
        """Note the finished shards (after each one), for a run that resumes this one."""
        progress = {
            "fingerprint": self.fingerprint,
            "tokenizer": tokenizer_sha256,
            "shards": {name: [asdict(s) for s in listed] for name, listed in shards.items()},
        }
        write_bytes(self.directory / PROGRESS, json.dumps(progress).encode())

    def finish(self, manifest: Manifest) -> None:
        """The staged dataset is complete: write its manifest, then publish it."""
        write_bytes(self.directory / MANIFEST, manifest.to_json().encode())
        publish(self.output)


def publish(output: Path) -> None:
    """Swap a complete staged dataset (OUT/.staging/manifest.json present) into `output`;
    safe to run again after a kill at any point (module docstring)."""
    staging = output / STAGING
    manifest = Manifest.from_json(staging / MANIFEST)
    (output / MANIFEST).unlink(missing_ok=True)
    keep = {TOKENIZER} | {
        f"{shard.name}{suffix}"
        for shards in manifest.shards.values()
        for shard in shards
        for suffix in (".bin", ".idx")
    }
    for name in sorted(keep):
        if (staging / name).exists():
            os.replace(staging / name, output / name)
    for old in [*output.glob("*.bin"), *output.glob("*.idx")]:
        if old.name not in keep:
            old.unlink()
    os.replace(staging / MANIFEST, output / MANIFEST)
    shutil.rmtree(staging)
