"""Where `python -m s2s.prepare` reads documents from, one at a time (no file is held whole
except a JSON array, which has to be parsed whole).

    FILE.json                 a JSON array (or wrapped array) of {"Text"} or {"Input","Target"}
    FILE.jsonl[.gz]           one record a line, same keys (C4's files are .json.gz lines)
    FILE.txt[.gz] / .md       plain text; each blank-line-separated paragraph is a document
    FILE.parquet              a column `Text`/`text` (or --text-field), or `Input` + `Target`
    DIR                       every such file below it (sorted), or a Hugging Face `datasets`
                              folder written by `save_to_disk`
    hf:NAME[:CONFIG][@SPLIT]  a Hugging Face hub dataset, streamed (needs `datasets` and a
                              network; split defaults to train)

A document is a str (text records) or a (input, target) pair of str. Every bad record raises a
`RecordError` naming the file and line or record.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2s.data.records import INPUT_KEY, TARGET_KEY, TEXT_KEY, RecordError, read_records

Document = str | tuple[str, str]
TEXT_SUFFIXES = (".txt", ".md", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
SUFFIXES = (".json", ".parquet", *JSONL_SUFFIXES, *TEXT_SUFFIXES)
TEXT_FIELDS = (TEXT_KEY, "text")


@dataclass(frozen=True)
class Source:
    """One input: a file, a Hugging Face folder, or a hub name."""

    name: str  # what the user wrote (or the file found below a directory)
    kind: str  # "file" | "hf_folder" | "hf_hub"

    def signature(self) -> dict[str, Any]:
        """What identifies this input's contents for the manifest fingerprint: path, bytes,
        modification time (as make and rsync judge change) and a hash of sampled blocks of
        each file (`sample_sha256`: an edit that keeps the size and the time), or the hub
        name."""
        if self.kind == "hf_hub":
            return {"source": self.name}
        path = Path(self.name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns, sample_sha256(f)) for f in files]
        return {
            "source": str(path.resolve()),
            "bytes": sum(s[1] for s in stats),
            "files": [
                [str(Path(f).relative_to(path)) if path.is_dir() else f, *rest]
                for f, *rest in stats
            ],
        }


SAMPLE_BLOCK = 1 << 16  # bytes; sample_sha256 reads three: ~200 KiB a file, ~200 MiB for C4


def sample_sha256(path: Path) -> str:
    """SHA-256 of the first, middle and last SAMPLE_BLOCK bytes of `path` (all of a file up to
    three blocks): cheap at any size, and it sees a same-size edit in those blocks (an edit
    elsewhere that keeps size and modification time is missed: hashing whole files would read
    the corpus once more)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset in sorted(
            {0, max(0, size // 2 - SAMPLE_BLOCK // 2), max(0, size - SAMPLE_BLOCK)}
        ):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BLOCK))
    return digest.hexdigest()[:20]


def expand(inputs: list[str]) -> list[Source]:
    """The sources named by the command line, files below directories in sorted order."""
    sources: list[Source] = []
    for name in inputs:
        if name.startswith("hf:"):
            sources.append(Source(name, "hf_hub"))
            continue
        path = Path(name)
        if not path.exists():
            raise RecordError(path, "not found")
        if path.is_dir() and _is_hf_folder(path):
            sources.append(Source(str(path), "hf_folder"))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p))
            if not found:
                raise RecordError(path, f"no dataset files below it (looked for {SUFFIXES})")
            sources.extend(Source(str(p), "file") for p in found)
        elif _suffix(path):
            sources.append(Source(str(path), "file"))
        else:
            raise RecordError(path, f"unsupported file type (expected one of {SUFFIXES})")
    return sources


def documents(source: Source, text_field: str | None = None) -> Iterator[Document]:
    if source.kind == "hf_hub":
        yield from _hf_rows(_load_hub(source.name), source.name, text_field)
    elif source.kind == "hf_folder":
        yield from _hf_rows(_load_folder(source.name), source.name, text_field)
    else:
        path = Path(source.name)
        suffix = _suffix(path)
        if suffix == ".json":
            records = read_records(path)
            if records.targets is None:
                yield from records.inputs
            else:
                yield from zip(records.inputs, records.targets, strict=True)
        elif suffix in JSONL_SUFFIXES:
            yield from _jsonl(path, text_field)
        elif suffix in TEXT_SUFFIXES:
            yield from _paragraphs(path)
        else:
            yield from _parquet(path, text_field)


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


def _jsonl(path: Path, text_field: str | None) -> Iterator[Document]:
    try:
        with _open_text(path) as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise RecordError(path, f"invalid JSON ({err.msg})", line=number) from None
                yield _document(path, record, text_field, line=number)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise RecordError(path, f"cannot read the file ({err})") from None


def _document(path: Path, item: Any, text_field: str | None, **where: int) -> Document:
    if not isinstance(item, dict):
        raise RecordError(path, f"expected an object, got {type(item).__name__}", **where)
    fields = (text_field,) if text_field else TEXT_FIELDS
    for key in fields:
        if key in item:
            return _string(path, item, key, where)
    if INPUT_KEY in item or TARGET_KEY in item:
        return _string(path, item, INPUT_KEY, where), _string(path, item, TARGET_KEY, where)
    keys = ", ".join(sorted(map(str, item))[:6])
    raise RecordError(
        path,
        f"no text field: expected {' or '.join(fields)} (or Input + Target); it has: {keys}",
        **where,
    )


def _string(path: Path, record: dict, key: str, where: dict) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise RecordError(path, f'field "{key}" is {what}', **where)
    return value


def _paragraphs(path: Path) -> Iterator[str]:
    """Blank-line-separated paragraphs, read a line at a time."""
    try:
        with _open_text(path) as lines:
            paragraph: list[str] = []
            for line in lines:
                if line.strip():
                    paragraph.append(line.rstrip("\n"))
                elif paragraph:
                    yield "\n".join(paragraph)
                    paragraph = []
            if paragraph:
                yield "\n".join(paragraph)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise RecordError(path, f"cannot read as UTF-8 text ({err})") from None


def _parquet(path: Path, text_field: str | None) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RecordError(path, "reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise RecordError(path, f"not a readable Parquet file ({err})") from None
    names = table.schema_arrow.names
    fields = [text_field] if text_field else [f for f in TEXT_FIELDS if f in names][:1]
    if not fields or fields[0] not in names:
        fields = [INPUT_KEY, TARGET_KEY]
        if not set(fields) <= set(names):
            raise RecordError(
                path, f"no column {text_field or 'Text/text'} (or Input + Target); has {names}"
            )
    row = 0
    for batch in table.iter_batches(columns=fields, batch_size=4096):
        columns = [batch.column(name).to_pylist() for name in fields]
        for values in zip(*columns, strict=True):
            row += 1
            if not all(isinstance(v, str) for v in values):
                raise RecordError(path, f"column {fields} holds a non-string value", record=row)
            yield values[0] if len(values) == 1 else (values[0], values[1])


def _is_hf_folder(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ValueError(
            "Hugging Face dataset inputs need the `datasets` package: pip install datasets"
        ) from None
    return datasets


def _load_folder(name: str):
    data = _datasets().load_from_disk(name)
    if hasattr(data, "keys"):  # a DatasetDict: its train split
        if "train" not in data:
            raise RecordError(Path(name), f"a dataset dict without a train split ({list(data)})")
        data = data["train"]
    return data


def _load_hub(name: str):
    spec, _, split = name[3:].partition("@")
    path, _, config = spec.partition(":")
    os.environ.setdefault("HF_DATASETS_TRUST_REMOTE_CODE", "0")
    return _datasets().load_dataset(path, config or None, split=split or "train", streaming=True)


def _hf_rows(rows, name: str, text_field: str | None) -> Iterator[Document]:
    where = Path(name)
    for number, record in enumerate(rows, 1):
        yield _document(where, record, text_field, record=number)
