"""The prepared (tokenised, sharded) dataset format that `python -m s2s.prepare` writes and
`data.train_dir` streams.

The layout of the large-scale trainers' indexed datasets (fairseq's / Megatron's `.bin` +
`.idx`, nanoGPT's and OLMo's flat token files), kept as plain files a user can inspect:

    DIR/manifest.json       what is here (below); written LAST, so its presence means complete
    DIR/tokenizer.json      the tokenizer the ids belong to
    DIR/text-00000.bin      token ids, flat (uint16 when the vocabulary fits, else int32); for
                            text records each document is followed by the end-of-document id
                            (the tokenizer's EOS; version 1 wrote the ids of "\\n\\n")
    DIR/text-00000.idx      int64 start offset of each document in the .bin, then the end
    DIR/input-*.{bin,idx}   pair records: the Inputs ...
    DIR/target-*.{bin,idx}  ... and the Targets (no separators), document i <-> document i

The manifest holds the format version, record kind, dtype, separator ids (the end-of-document
id), every shard's name, documents and tokens, the empty documents dropped, whether literal
special-token strings were read as specials (`--pre-masked`), the sources (path, bytes, mtime,
a hash of sampled blocks) and a fingerprint of sources + tokenizer + settings + format version
(re-running `prepare` with the same fingerprint does nothing). Version-1 directories (documents
joined by "\\n\\n", the same ids as a paragraph break) still read; the data module warns.

Safety: `prepare` writes a new version into `DIR/.staging/` and swaps it in only once complete
(`s2s.data.writing`), so a failed or killed run leaves the old dataset as it was; a directory
without a manifest is refused by `open_prepared` with a message, and so is a shard whose size
disagrees with the manifest (naming it). Reads use `os.pread`, one small read per block, so memory
stays flat however large the corpus is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from s2s.data.handles import OpenFiles
from s2s.tokenizer import Tokenizer

FORMAT = "s2s-prepared"
VERSION = 2  # 2: an end-of-document id after each text document, literal specials as text
READABLE = (1, 2)
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
STREAMS = {"text": ("text",), "pairs": ("input", "target")}


def end_of_document(tok: Tokenizer) -> list[int]:
    """The ids after every text document: the tokenizer's EOS `</s>`, as fairseq's binarized
    data (`</s>` after every line; `complete_doc` blocks) and Megatron's `--append-eod` mark a
    document's end. EOS rather than a new token: every tokenizer s2s reads has one, and adding
    a token would change the vocabulary of a given one (T5's, BART's) and of the model. Text
    never yields the id: our byte-level BPE splits the string `</s>` into pieces, and texts are
    encoded with specials off (a tokenizer whose `</s>` is an added token reads it as text), so
    it sits at document boundaries only. `s2s.data.datamodule` joins in-memory {"Text"}
    records with it too: both paths give the same rows."""
    return [tok.eos_id]


class PreparedError(ValueError):
    """A prepared directory is missing, incomplete or inconsistent (message names the file)."""


@dataclass(frozen=True)
class Shard:
    name: str  # file stem: NAME.bin, NAME.idx
    documents: int
    tokens: int
    sha256: str = ""  # of the .bin's sha256 + the .idx (s2s.data.writing.shard_digest)


@dataclass(frozen=True)
class Manifest:
    kind: str  # "text" | "pairs"
    dtype: str  # "uint16" | "int32"
    separator: list[int]  # ids after every text document: [EOS] (version 1: "\n\n"); pairs: []
    shards: dict[str, list[Shard]]  # stream name -> its shards, in order
    documents: int
    tokens: int
    sources: list[dict]
    fingerprint: str
    tokenizer_sha256: str
    # documents of each input the tokenizer was trained on ({} when it was given or for
    # manifests written before this was recorded)
    tokenizer_sample: dict[str, int] = field(default_factory=dict)
    empty_documents: int = 0  # empty or whitespace-only text documents dropped
    # literal "<mask>", "<extra_id_N>" in texts were read as those tokens (prepare --pre-masked;
    # version 1 always did); pairs always are (their Inputs may be pre-masked)
    pre_masked: bool = True
    format: str = FORMAT
    version: int = VERSION

    @property
    def end_of_document(self) -> int | None:
        """The id that ends every text document (None for pairs and version-1 text, whose
        documents end in the ids of a paragraph break)."""
        return self.separator[0] if self.kind == "text" and self.version >= 2 else None

    def legacy_warning(self, directory: Path) -> str | None:
        """One line for a directory whose documents are joined by a paragraph break."""
        if self.kind != "text" or self.version >= 2:
            return None
        return (
            f"{directory}: prepared by an older s2s (format version {self.version}): documents "
            'are joined by "\\n\\n", the same ids as a paragraph break, not an end-of-document '
            "token; run `python -m s2s.prepare` again to get one"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, path: Path) -> Manifest:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != FORMAT:
                raise PreparedError(f"{path}: not an s2s prepared dataset manifest")
            if raw.get("version") not in READABLE:
                raise PreparedError(
                    f"{path}: format version {raw.get('version')}, this s2s reads "
                    f"{', '.join(map(str, READABLE))}: prepare the corpus again"
                )
            raw["shards"] = {k: [Shard(**s) for s in v] for k, v in raw["shards"].items()}
            return cls(**raw)
        except (OSError, json.JSONDecodeError, TypeError, KeyError, AttributeError) as err:
            raise PreparedError(f"{path}: unreadable manifest ({err})") from None


def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a directory `prepare` wrote (or was writing)."""
    path = Path(path)
    return path.is_dir() and (
        (path / MANIFEST).is_file() or any(path.glob("*.bin")) or any(path.glob("*.tmp-*"))
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> Manifest:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise PreparedError(f"{directory}: no such directory (prepare it: python -m s2s.prepare)")
    if not path.is_file():
        raise PreparedError(
            f"{directory}: no {MANIFEST}: not a prepared dataset, or its `python -m s2s.prepare` "
            "run did not finish (run it again)"
        )
    return Manifest.from_json(path)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class TokenFile:
    """One stream's shards read as one flat array of ids with `os.pread` (files opened lazily,
    per process and a bounded number at a time: `s2s.data.handles`, so a reader pickles into
    DataLoader workers as paths and thousands of shards stay under `ulimit -n`)."""

    def __init__(self, directory: Path, shards: list[Shard], dtype: str) -> None:
        self.directory, self.shards, self.dtype = directory, shards, np.dtype(dtype)
        self.starts = np.concatenate([[0], np.cumsum([s.tokens for s in shards])]).astype(np.int64)
        self.doc_starts = np.concatenate([[0], np.cumsum([s.documents for s in shards])]).astype(
            np.int64
        )
        for shard in shards:
            for suffix, size in (
                (".bin", shard.tokens * self.dtype.itemsize),
                (".idx", (shard.documents + 1) * 8),
            ):
                path = directory / f"{shard.name}{suffix}"
                if not path.is_file():
                    raise PreparedError(f"{path}: missing (the manifest lists it)")
                if path.stat().st_size != size:
                    raise PreparedError(
                        f"{path}: {path.stat().st_size} bytes, the manifest says {size}: "
                        "the file is truncated or from another run; prepare again"
                    )
        self.files = OpenFiles()  # a few descriptors at a time, however many shards

    @property
    def tokens(self) -> int:
        return int(self.starts[-1])

    @property
    def documents(self) -> int:
        return int(self.doc_starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """ids[start:stop] of the whole stream (may span shards)."""
        stop = min(stop, self.tokens)
        pieces = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.starts[shard + 1]))
            local = start - int(self.starts[shard])
            pieces.append(self._pread(shard, ".bin", local, end - start, self.dtype))
            start, shard = end, shard + 1
        if not pieces:
            return np.zeros(0, dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def document(self, index: int, trim: int = 0) -> np.ndarray:
        """Document `index` (global), without its last `trim` ids (its separator)."""
        shard = int(np.searchsorted(self.doc_starts, index, side="right")) - 1
        local = index - int(self.doc_starts[shard])
        begin, end = self._pread(shard, ".idx", local, 2, np.dtype(np.int64))
        offset = int(self.starts[shard])
        return self.read(offset + int(begin), offset + int(end) - trim)

    def document_lengths(self, trim: int = 0) -> np.ndarray:
        """(documents,) lengths: reads every .idx (8 bytes a document)."""
        parts = [
            np.diff(self._pread(i, ".idx", 0, s.documents + 1, np.dtype(np.int64)))
            for i, s in enumerate(self.shards)
        ]
        return (np.concatenate(parts) if parts else np.zeros(0, np.int64)) - trim

    def _pread(self, shard: int, suffix: str, first: int, count: int, dtype: np.dtype):
        path = self.directory / (self.shards[shard].name + suffix)
        size = count * dtype.itemsize
        data = self.files.pread(path, size, first * dtype.itemsize)
        if len(data) != size:
            raise PreparedError(f"{path}: short read (file changed under us?)")
        return np.frombuffer(data, dtype=dtype)


@dataclass
class Prepared:
    """An opened prepared directory: its manifest and one `TokenFile` per stream."""

    directory: Path
    manifest: Manifest
    streams: dict[str, TokenFile]

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / TOKENIZER


def open_prepared(directory: str | Path) -> Prepared:
    """Open and check a prepared directory (manifest, tokenizer, shard sizes)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.kind not in STREAMS or set(manifest.shards) != set(STREAMS[manifest.kind]):
        raise PreparedError(f"{directory / MANIFEST}: inconsistent kind / streams")
    if not (directory / TOKENIZER).is_file():
        raise PreparedError(f"{directory / TOKENIZER}: missing (the manifest needs it)")
    streams = {
        name: TokenFile(directory, shards, manifest.dtype)
        for name, shards in manifest.shards.items()
    }
    return Prepared(directory, manifest, streams)


class PackedBlocks:
    """A text stream cut into rows of `block_length` ids: row i = stream[i*L:(i+1)*L].

    The stream is the documents joined by the separator (the trailing one dropped), exactly as
    `s2s.data.examples.pack` joins in-memory rows, so both paths give the same rows. O(1)
    memory: nothing is read until a row is asked for.
    """

    def __init__(self, tokens: TokenFile, block_length: int, separator_length: int) -> None:
        self.tokens, self.block_length = tokens, block_length
        self.total = max(0, tokens.tokens - separator_length)

    def __len__(self) -> int:
        return -(-self.total // self.block_length)

    def __getitem__(self, index: int) -> np.ndarray:
        start = index * self.block_length
        if not 0 <= start < self.total:
            raise IndexError(index)
        return self.tokens.read(start, min(start + self.block_length, self.total))

    @property
    def lengths(self) -> np.ndarray:
        """(rows,) lengths, for samplers that bucket by length (O(rows) memory)."""
        lengths = np.full(len(self), self.block_length, dtype=np.int64)
        if len(self):
            lengths[-1] = self.total - (len(self) - 1) * self.block_length
        return lengths


class Documents:
    """A stream's documents as rows (pairs, or unpacked text), separator trimmed."""

    def __init__(self, tokens: TokenFile, separator_length: int = 0) -> None:
        self.tokens, self.trim = tokens, separator_length

    def __len__(self) -> int:
        return self.tokens.documents

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.tokens.document(index, self.trim)

    @property
    def lengths(self) -> np.ndarray:
        return self.tokens.document_lengths(self.trim)
