"""Prepare a corpus once, stream it in training: `python -m s2s.prepare INPUT... --output DIR`.

    python -m s2s.prepare corpus/*.jsonl.gz --output data/c4-train --workers 8
    python -m s2s.prepare held-out.jsonl --output data/c4-val --tokenizer data/c4-train
    python train.py data=stream data.train_dir=data/c4-train data.val_dir=data/c4-val

Reads the inputs (`s2s.data.sources`: JSON/JSONL of either record kind, plain text, Parquet,
Hugging Face folders or hub names), tokenises them in worker processes, and writes the
prepared format (`s2s.data.prepared`: shards, tokenizer, manifest). Without --tokenizer a BPE
tokenizer is trained on --sample-documents documents spread over every input (the manifest's
`tokenizer_sample` says how many of each); --tokenizer takes a
tokenizer.json or another prepared directory (validation data must share the training
tokenizer). Running again on unchanged inputs and settings does nothing; a failed or killed run
leaves the dataset already in the output as it was, and a killed one is resumed
(`s2s.data.writing`).

Text documents each end in the tokenizer's EOS id (`end_of_document`); empty ones are dropped
(counted in the manifest's `empty_documents`). A literal `<mask>` or `<extra_id_0>` in a text is
encoded as text unless --pre-masked says the corpus holds them as tokens (pairs always do).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from s2s.cli import run_cli
from s2s.data.prepared import (
    MANIFEST,
    STREAMS,
    TOKENIZER,
    VERSION,
    Manifest,
    PreparedError,
    Shard,
    end_of_document,
    open_prepared,
    sha256_file,
)
from s2s.data.sources import Document, Source, documents, expand
from s2s.data.writing import STAGING, ShardWriter, Staging, publish
from s2s.files import atomic_write
from s2s.tokenizer import Tokenizer, TokenizerConfig

log = logging.getLogger("s2s.prepare")
CHUNK = 512  # documents per task sent to a worker
SAMPLE = "tokenizer_sample.json"  # staging: the inputs the tokenizer was trained on


def prepare(
    inputs: Sequence[str],
    output: str | Path,
    *,
    tokenizer: str | None = None,
    workers: int = 1,
    vocab_size: int = 8192,
    num_sentinels: int = 100,
    sample_documents: int = 100_000,
    shard_tokens: int = 1 << 27,
    text_field: str | None = None,
    pre_masked: bool = False,
    progress: bool = True,
) -> Manifest:
    """Write the prepared dataset of `inputs` to `output` (or find it up to date); its manifest.

    Written into `output/.staging` and swapped in when complete (`s2s.data.writing`): a bad
    record or a kill leaves the dataset already in `output` as it was, and a run killed with
    the same inputs and settings is resumed (its finished shards checked and reused).
    `pre_masked`: literal special-token strings in text documents are those tokens (else
    text; pairs always read them as tokens)."""
    output = Path(output)
    sources = expand(list(inputs))
    settings = {
        "tokenizer": _tokenizer_signature(tokenizer, vocab_size, num_sentinels, sample_documents),
        "shard_tokens": shard_tokens,
        "text_field": text_field,
        "pre_masked": pre_masked,
        "format": VERSION,  # a new format (or its rules for ids) prepares again
    }
    fingerprint = _fingerprint([s.signature() for s in sources], settings)
    if (output / STAGING / MANIFEST).is_file():  # a run killed while swapping its data in
        publish(output)
    if (output / MANIFEST).is_file():
        try:
            current = open_prepared(output)
            if current.manifest.fingerprint == fingerprint:
                log.info("%s is up to date (same inputs and settings): nothing to do", output)
                return current.manifest
        except PreparedError:
            pass  # damaged: prepare again
    staging = Staging(output, fingerprint)
    done, tokenizer_sha256 = staging.resume()
    if tokenizer_sha256 is None:
        tok, sample = _tokenizer_for(
            tokenizer, sources, text_field, vocab_size, num_sentinels, sample_documents
        )
        tok.save(staging.directory / TOKENIZER)
        with atomic_write(staging.directory / SAMPLE) as tmp:
            tmp.write_text(json.dumps(sample), encoding="utf-8")
        tokenizer_sha256 = sha256_file(staging.directory / TOKENIZER)
    else:
        tok = Tokenizer.load(staging.directory / TOKENIZER)
        sample_file = staging.directory / SAMPLE
        sample = (
            json.loads(sample_file.read_text(encoding="utf-8")) if sample_file.is_file() else {}
        )
        reused = sum(len(shards) for shards in done.values())
        log.info("%s: resuming a killed run (%d finished shards reused)", output, reused)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)
    tally = _Tally()
    stream = _all_documents(sources, text_field, tally)
    first = next(stream, None)
    if first is None:
        raise ValueError(f"{', '.join(inputs)}: no documents (or only empty ones)")
    kind = "text" if isinstance(first, str) else "pairs"
    separator = end_of_document(tok) if kind == "text" else []
    writers = {
        name: ShardWriter(staging.directory, name, dtype, separator, shard_tokens, done.get(name))
        for name in STREAMS[kind]
    }
    start = time.perf_counter()
    shards, count = _write_shards(
        itertools.chain([first], stream),
        kind,
        writers,
        staging,
        tokenizer_sha256,
        workers=workers,
        specials=pre_masked or kind == "pairs",
        progress=progress,
    )
    manifest = Manifest(
        kind=kind,
        dtype=dtype.name,
        separator=list(separator),
        shards=shards,
        documents=count,
        tokens=sum(s.tokens for streams in shards.values() for s in streams),
        sources=[s.signature() | {"kind": s.kind} for s in sources],
        fingerprint=fingerprint,
        tokenizer_sha256=tokenizer_sha256,
        tokenizer_sample=sample,
        empty_documents=tally.empty,
        pre_masked=pre_masked or kind == "pairs",
    )
    staging.finish(manifest)
    seconds = time.perf_counter() - start
    log.info(
        "%s: %d %s documents (%d empty ones dropped), %d tokens in %d shard(s), %.1f s "
        "(%.0f tokens/s)",
        output,
        count,
        kind,
        tally.empty,
        manifest.tokens,
        sum(len(s) for s in shards.values()),
        seconds,
        manifest.tokens / max(seconds, 1e-9),
    )
    return manifest


def _write_shards(
    docs: Iterator[Document],
    kind: str,
    writers: dict[str, ShardWriter],
    staging: Staging,
    tokenizer_sha256: str,
    *,
    workers: int,
    specials: bool,
    progress: bool,
) -> tuple[dict[str, list[Shard]], int]:
    """Tokenise `docs` into each stream's writer, recording every finished shard; documents in
    the finished shards of a killed run (the writers' `skip`) are read but not tokenised again.
    Returns the shards and the number of documents."""
    count = min(w.skip for w in writers.values())  # every stream holds these documents
    finished = sum(len(w.shards) for w in writers.values())
    with _progress(progress) as (bar, task):
        for chunk in _tokenised(
            itertools.islice(docs, count, None),
            staging.directory / TOKENIZER,
            workers,
            specials,
        ):
            for name, ids in zip(STREAMS[kind], chunk, strict=True):
                writers[name].add(ids, first=count)
            count += len(chunk[0])
            if sum(len(w.shards) for w in writers.values()) != finished:
                staging.record(tokenizer_sha256, {n: w.shards for n, w in writers.items()})
                finished = sum(len(w.shards) for w in writers.values())
            if bar is not None:
                bar.update(task, completed=count)
    return {name: writer.close() for name, writer in writers.items()}, count


class _Tally:
    empty = 0  # text documents dropped as empty or whitespace only


def _all_documents(
    sources: Iterable[Source], text_field: str | None, tally: _Tally | None = None
) -> Iterator[Document]:
    """Every document of `sources` in order, empty texts left out (counted in `tally`): they
    would add nothing but an end-of-document id."""
    kind = None
    for source in sources:
        for doc in documents(source, text_field):
            if isinstance(doc, str) and not doc.strip():
                if tally is not None:
                    tally.empty += 1
                continue
            this = "text" if isinstance(doc, str) else "pairs"
            if kind is None:
                kind = this
            elif this != kind:
                raise ValueError(
                    f"{source.name}: holds {this} records after {kind} records in the inputs "
                    "before it: prepare text and pairs into separate directories"
                )
            yield doc


def _tokenised(
    docs: Iterator[Document], tokenizer_path: Path, workers: int, specials: bool
) -> Iterator[tuple[list[list[int]], ...]]:
    """Chunks of token ids per stream, in input order, tokenised in `workers` processes;
    `specials`: literal special-token strings are those tokens (else text)."""
    chunks = (list(itertools.islice(docs, CHUNK)) for _ in itertools.count())
    chunks = itertools.takewhile(bool, chunks)
    encode = partial(_encode_chunk, specials=specials)
    if workers <= 1:  # in this process: the Rust tokenizer may use its own threads
        _load_tokenizer(tokenizer_path)
        yield from map(encode, chunks)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    with context.Pool(workers, _init_worker, (tokenizer_path,)) as pool:
        yield from pool.imap(encode, chunks, chunksize=1)


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_path: Path) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # processes, not threads, scale
    _load_tokenizer(tokenizer_path)


def _load_tokenizer(tokenizer_path: Path) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer.load(tokenizer_path)


def _encode_chunk(chunk: list[Document], specials: bool) -> tuple[list[list[int]], ...]:
    tok = _WORKER_TOKENIZER
    assert tok is not None
    if isinstance(chunk[0], str):
        return (tok.encode_batch(chunk, specials),)
    inputs, targets = zip(*chunk, strict=True)
    return tok.encode_batch(list(inputs), specials), tok.encode_batch(list(targets), specials)


def _tokenizer_for(
    given: str | None,
    sources: list[Source],
    text_field: str | None,
    vocab_size: int,
    num_sentinels: int,
    sample_documents: int,
) -> tuple[Tokenizer, dict[str, int]]:
    """The given tokenizer, or one trained on documents from every input; and how many
    documents of each input it was trained on (empty when given)."""
    if given:
        return Tokenizer.load(_tokenizer_file(given)), {}
    texts, counts = tokenizer_sample(sources, text_field, sample_documents)
    config = TokenizerConfig(vocab_size=vocab_size, num_sentinels=num_sentinels)
    source = f"{len(counts)} input(s)"
    return Tokenizer.from_config(config, texts, source=source), counts


def tokenizer_sample(
    sources: list[Source], text_field: str | None, n: int
) -> tuple[list[str], dict[str, int]]:
    """About `n` documents spread over every input: the first n / k documents of each of the k
    inputs, then, when some inputs hold fewer, more from those that hold more (not the first n
    in path order: a corpus of prose files then code files would train on prose only). One
    input is open at a time. Returns the texts and the count taken from each input."""
    taken: dict[str, list[Document]] = {s.name: [] for s in sources}
    exhausted: set[str] = set()
    while sum(map(len, taken.values())) < n and len(exhausted) < len(sources):
        left = [s for s in sources if s.name not in exhausted]
        quota = -(-(n - sum(map(len, taken.values()))) // len(left))  # ceil
        for source in left:
            have = len(taken[source.name])
            new = list(itertools.islice(_all_documents([source], text_field), have, have + quota))
            taken[source.name] += new
            if len(new) < quota:
                exhausted.add(source.name)
    texts = [
        text for docs in taken.values() for doc in docs
        for text in ([doc] if isinstance(doc, str) else doc)
    ]  # fmt: skip
    return texts, {name: len(docs) for name, docs in taken.items()}


def _tokenizer_file(given: str) -> Path:
    path = Path(given)
    if path.is_dir():
        path = path / TOKENIZER
    if not path.is_file():
        raise ValueError(f"--tokenizer {given}: no tokenizer.json there")
    return path


def _tokenizer_signature(given, vocab_size, num_sentinels, sample_documents) -> dict:
    if given:
        return {"sha256": sha256_file(_tokenizer_file(given))}
    return {"vocab_size": vocab_size, "sentinels": num_sentinels, "sample": sample_documents}


def _fingerprint(signatures: list[dict], settings: dict) -> str:
    blob = json.dumps({"sources": signatures, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class _progress:
    """A rich progress line (documents, tokens, rate), or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self):
        if not self.enabled:
            return None, None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("tokenising: {task.completed:,} documents"),
            TimeElapsedColumn(),
        )
        self.bar.__enter__()
        return self.bar, self.bar.add_task("prepare", total=None)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s2s.prepare",
        description="Tokenise corpora into a sharded dataset that training streams "
        "(data=stream data.train_dir=DIR).",
    )
    parser.add_argument("inputs", nargs="+", help="files, directories, or hf:NAME[:CONFIG][@SPLIT]")
    parser.add_argument("--output", required=True, help="the prepared directory to write")
    parser.add_argument("--tokenizer", help="a tokenizer.json, or a prepared directory to share")
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--num-sentinels", type=int, default=100)
    parser.add_argument(
        "--sample-documents",
        type=int,
        default=100_000,
        help="documents the tokenizer is trained on (without --tokenizer)",
    )
    parser.add_argument("--shard-tokens", type=int, default=1 << 27, help="tokens per shard")
    parser.add_argument("--text-field", help="the text field of JSONL/Parquet/HF records")
    parser.add_argument(
        "--pre-masked",
        action="store_true",
        help="text documents hold <mask> / <extra_id_N> as tokens (default: as literal text)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    job = partial(
        prepare,
        tokenizer=args.tokenizer,
        workers=args.workers,
        vocab_size=args.vocab_size,
        num_sentinels=args.num_sentinels,
        sample_documents=args.sample_documents,
        shard_tokens=args.shard_tokens,
        text_field=args.text_field,
        pre_masked=args.pre_masked,
        progress=not args.no_progress,
    )
    run_cli(job, args.inputs, args.output)


if __name__ == "__main__":
    main()
