"""Prepared corpora: `python -m s2s.prepare` throughput, and streaming read + noising throughput
with its peak memory as the corpus grows.

    python benchmarks/stream_throughput.py --sizes-mb 250 500 1000 --workers 1 2
    python benchmarks/stream_throughput.py --sizes-mb 50 100 --workers 2     # a quick look

Synthetic corpus: JSONL {"Text"} records of 20-400 random words drawn (Zipf-like) from a
5,000-word list, so the BPE sees a realistic mix of frequent and rare words. For each size:

  prepare   `prepare()` of the file with a tokenizer trained once on a 20k-document sample
            (the tokenizer training is not timed), for each --workers: MB/s and tokens/s.
  stream    T5 span corruption (512 -> 114) of rows read through `S2SDataModule` with
            data.train_dir (os.pread per row, the keyed permutation), batches of 8, no loader
            workers, for --seconds: rows/s and tokens/s; peak RSS of that process
            (`ru_maxrss`), which stays flat if nothing grows with the corpus.

Each measurement runs in its own process so peak RSS belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROW = 568  # raw tokens of a 512-token T5 input (compute_input_and_target_lengths(512, .15, 3))


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(5000)]
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    target = megabytes * 1_000_000
    written = 0
    with path.open("w") as out:
        while written < target:
            picks = rng.choice(len(words), size=(1000, 400), p=weights)
            sizes = rng.integers(20, 400, size=1000)
            lines = [
                json.dumps({"Text": " ".join(words[i] for i in row[:n])}) + "\n"
                for row, n in zip(picks, sizes, strict=True)
            ]
            chunk = "".join(lines)
            out.write(chunk)
            written += len(chunk)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_prepare(corpus: str, out: str, tokenizer: str, workers: int) -> None:
    from s2s.prepare import prepare

    start = time.perf_counter()
    manifest = prepare([corpus], out, tokenizer=tokenizer, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    size = Path(corpus).stat().st_size / 1e6
    print(
        json.dumps(
            {
                "mb_s": size / seconds,
                "tok_s": manifest.tokens / seconds,
                "tokens": manifest.tokens,
                "rss": peak_rss_mib(),
            }
        )
    )


def child_stream(prepared: str, seconds: float) -> None:
    from s2s.data.config import DataConfig
    from s2s.data.datamodule import S2SDataModule

    config = DataConfig(
        train_dir=prepared,
        val_dir=prepared,
        objective="t5",
        max_source_length=512,
        max_target_length=114,
        batch_size=8,
        num_workers=0,
        cache_dir=None,
    )
    dm = S2SDataModule(config)
    dm.setup("fit")
    loader = dm.train_dataloader()
    rows = tokens = 0
    start = time.perf_counter()
    for batch in loader:
        rows += len(batch["input_ids"])
        tokens += int(batch["attention_mask"].sum())
        if time.perf_counter() - start > seconds:
            break
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                "rows_s": rows / elapsed,
                "tok_s": tokens / elapsed,
                "blocks": len(dm.datasets["train"]),
                "rss": peak_rss_mib(),
            }
        )
    )


def child(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--dir", type=Path, default=None, help="scratch dir (default: a tmp)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "prepare":
            child_prepare(rest[0], rest[1], rest[2], int(rest[3]))
        else:
            child_stream(rest[0], float(rest[1]))
        return

    from s2s.prepare import prepare

    scratch = args.dir or Path(tempfile.mkdtemp(prefix="s2s-stream-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    sample = scratch / "sample.jsonl"
    make_corpus(sample, 20)
    prepare(
        [str(sample)], scratch / "tok", vocab_size=32_000, sample_documents=20_000, progress=False
    )
    tokenizer = str(scratch / "tok")
    print("| corpus | stage | workers | MB/s | tokens/s | rows/s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes_mb:
        corpus = scratch / f"corpus-{size}.jsonl"
        make_corpus(corpus, size, seed=size)
        for workers in args.workers:
            out = scratch / f"prepared-{size}-{workers}"
            r = child("prepare", str(corpus), str(out), tokenizer, str(workers))
            print(
                f"| {size} MB ({r['tokens'] / 1e6:.0f}M tokens) | prepare | {workers} | "
                f"{r['mb_s']:.2f} | {r['tok_s']:,.0f} | | {r['rss']:.0f} |",
                flush=True,
            )
        r = child("stream", str(out), str(args.seconds))
        print(
            f"| {size} MB ({r['blocks']:,} rows) | stream T5 512 | 0 | | {r['tok_s']:,.0f} | "
            f"{r['rows_s']:,.0f} | {r['rss']:.0f} |",
            flush=True,
        )
        corpus.unlink()
        for workers in args.workers[:-1]:
            for path in (scratch / f"prepared-{size}-{workers}").iterdir():
                path.unlink()


if __name__ == "__main__":
    main()
