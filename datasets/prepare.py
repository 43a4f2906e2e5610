"""Build the embedded default datasets from the public-domain text in shared/data.

Writes, under ``--out`` (default: this folder):

- ``shakespeare/{train,validation}.json``   pre-training text, ``{"Text": ...}``
- ``bible_modern/{train,validation,test}.json``   KJV -> WEB pairs, ``{"Input", "Target"}``
- ``examples/masked_pairs.json``   pre-masked pairs, ``{"Input": "How <mask> doing?", ...}``

Every split holds out whole works / books. No randomness except the fixed-seed masking of
the examples, so two runs give byte-identical files. Rules and sizes: ``datasets/README.md``.

Usage: ``python datasets/prepare.py [--source DIR] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np

Record = dict[str, str]

# Shakespeare: works held out whole for validation (file stems without "_gut"), ~8% of text.
SHAKESPEARE_VALIDATION = ("henry_v", "lovers_complaint", "macbeth", "twelfth_night")
MIN_CHARS, MAX_CHARS = 150, 1500  # target record length; blocks merged / split to fit
CAST_RE = re.compile(r"(persons represented|dramatis personae)", re.IGNORECASE)
SETTING_RE = re.compile(r"(the )?scene\b", re.IGNORECASE)  # "SCENE: Elsinore." ends the cast

# Bible: books (OSIS abbreviations) held out whole; different testaments and genres.
BIBLE_VALIDATION = ("Josh", "Lam", "Rom")  # history, poetry, epistle
BIBLE_TEST = ("Eccl", "Dan", "John")  # wisdom, prophecy, gospel
# Books left out of train, in this order and only as far as needed to fit the size budget:
# census lists, ritual law and genealogies first, then the longest prophets and the
# histories, so train keeps narrative, poetry, wisdom, minor prophets and the New Testament.
BIBLE_TRAIN_DROP_ORDER = (
    "Num", "Lev", "1Chr", "2Chr", "Ezek", "Jer", "Deut", "1Kgs", "2Kgs", "Exod", "Neh", "Ezra",
    "Isa", "Judg", "1Sam", "2Sam", "Ps",
)  # fmt: skip
MAX_LENGTH_RATIO = 2.5  # longer / shorter side, in characters; above it a pair is misaligned
JSON_BUDGET_BYTES = 10_350_000  # all JSON files together; keeps `du -sh datasets` at 10M

# Masked-pair examples: one or two spans of 1..3 words per line, fixed seed.
MASK_TOKEN = "<mask>"
MASK_SEED = 20240611
N_MASKED = 99
FIRST_EXAMPLE = {"Input": "How <mask> doing?", "Target": "How are you doing?"}


def split_blocks(text: str) -> list[str]:
    """Blank-line separated blocks, each dedented, lines stripped of trailing space."""
    blocks, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            lines.append(line.rstrip())
        elif lines:
            blocks.append(textwrap.dedent("\n".join(lines)))
            lines = []
    return blocks


def strip_front_matter(blocks: list[str]) -> list[str]:
    """Drop the title, the byline, a play's cast list up to its setting line, and "THE END"."""
    body = [b for b in blocks if b.upper() != "THE END"][1:]
    if body and body[0].lower() == "by william shakespeare":
        body = body[1:]
    cast = next((i for i, b in enumerate(body[:3]) if CAST_RE.match(b)), None)
    if cast is not None:
        setting = next(i for i in range(cast, len(body)) if SETTING_RE.match(body[i]))
        body = body[setting + 1 :]
    return body


def split_long(block: str, limit: int) -> list[str]:
    """Split a block longer than ``limit`` at line boundaries into near-equal pieces."""
    if len(block) <= limit:
        return [block]
    target = len(block) / math.ceil(len(block) / limit)
    pieces, current = [], ""
    for line in block.split("\n"):
        if current and len(current) + 1 + len(line) > limit:
            pieces.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
        if len(current) >= target:
            pieces.append(current)
            current = ""
    return [*pieces, current] if current else pieces


def merge_blocks(blocks: list[str]) -> list[str]:
    """Greedily join consecutive blocks with a blank line until a record has MIN_CHARS.

    Pieces are at most MAX_CHARS - MIN_CHARS - 2 long, so a record never exceeds MAX_CHARS;
    a short leftover at the end of a work joins the previous record when it fits.
    """
    pieces = [p for b in blocks for p in split_long(b, MAX_CHARS - MIN_CHARS - 2)]
    records, current = [], ""
    for piece in pieces:
        current = f"{current}\n\n{piece}" if current else piece
        if len(current) >= MIN_CHARS:
            records.append(current)
            current = ""
    if current and records and len(records[-1]) + 2 + len(current) <= MAX_CHARS:
        records[-1] = f"{records[-1]}\n\n{current}"
    elif current:
        records.append(current)
    return records


def build_shakespeare(source: Path) -> dict[str, list[Record]]:
    """Train / validation records from every ``*_gut.txt`` work, works in name order."""
    splits: dict[str, list[Record]] = {"train": [], "validation": []}
    for path in sorted(source.glob("*_gut.txt")):
        blocks = strip_front_matter(split_blocks(path.read_text(encoding="utf-8")))
        split = (
            "validation" if path.stem.removesuffix("_gut") in SHAKESPEARE_VALIDATION else "train"
        )
        splits[split].extend({"Text": text} for text in merge_blocks(blocks))
    return splits


def clean_verse(text: str) -> str:
    """Remove a leaked OSIS ``\\nd`` (divine name) marker and spaces before punctuation."""
    text = text.replace("\\nd ", "")
    return re.sub(r" +([,.;:?!])", r"\1", text).strip()


def is_aligned(pair: Record) -> bool:
    """False for an empty side or a length ratio (longer / shorter) above MAX_LENGTH_RATIO."""
    short, long = sorted((len(pair["Input"]), len(pair["Target"])))
    return short > 0 and long / short <= MAX_LENGTH_RATIO


def read_bible(path: Path) -> tuple[dict[str, list[Record]], list[str]]:
    """Cleaned pairs grouped by book (canonical order kept), and the refs of dropped pairs."""
    books: dict[str, list[Record]] = {}
    dropped = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pair = {"Input": clean_verse(row["input"]), "Target": clean_verse(row["target"])}
        if is_aligned(pair):
            books.setdefault(row["ref"].split(".")[0], []).append(pair)
        else:
            dropped.append(row["ref"])
    return books, dropped


def encode_record(record: Record) -> str:
    """One record as a single JSON line (no trailing comma)."""
    return json.dumps(record, ensure_ascii=False)


def json_bytes(records: list[Record]) -> int:
    """Size in bytes of ``records`` as written by ``write_json``."""
    lines = sum(len(encode_record(r).encode("utf-8")) + 2 for r in records)
    return lines + 3 if records else 3


def build_bible(
    books: dict[str, list[Record]], train_budget: int
) -> tuple[dict[str, list[Record]], list[str]]:
    """Split by book; drop train books in BIBLE_TRAIN_DROP_ORDER until train fits the budget."""
    held_out = set(BIBLE_VALIDATION) | set(BIBLE_TEST)
    train_books = [b for b in books if b not in held_out]
    size = {b: json_bytes(books[b]) for b in train_books}
    left_out = []
    for book in BIBLE_TRAIN_DROP_ORDER:
        if sum(size[b] for b in train_books) <= train_budget:
            break
        train_books.remove(book)
        left_out.append(book)
    if sum(size[b] for b in train_books) > train_budget:
        raise ValueError("Bible train split does not fit its budget; extend the drop order")
    splits = {
        "train": [p for b in train_books for p in books[b]],
        "validation": [p for b in BIBLE_VALIDATION for p in books[b]],
        "test": [p for b in BIBLE_TEST for p in books[b]],
    }
    return splits, left_out


def mask_words(words: list[str], rng: np.random.Generator) -> str:
    """Replace one or two spans of 1..3 words with MASK_TOKEN; spans never touch."""
    n_spans = 1 if len(words) < 8 else int(rng.integers(1, 3))
    bounds = np.linspace(0, len(words), n_spans + 1).astype(int)
    out = list(words)
    for k in reversed(range(n_spans)):  # right to left, so earlier indices stay valid
        lo, hi = int(bounds[k]) + (k > 0), int(bounds[k + 1])  # k > 0: keep a gap word
        length = int(rng.integers(1, 4))
        start = int(rng.integers(lo, hi - length + 1))
        out[start : start + length] = [MASK_TOKEN]
    return " ".join(out)


def build_masked_examples(records: list[Record]) -> list[Record]:
    """FIRST_EXAMPLE, then N_MASKED verse or prose lines from ``records``, masked."""
    lines = [
        " ".join(line.split())
        for r in records
        for line in r["Text"].split("\n")
        if 30 <= len(line.strip()) <= 100
        and len(line.split()) >= 6
        and line[:1] != "["
        and not SETTING_RE.match(line)  # no stage directions, headings
    ]
    rng = np.random.default_rng(MASK_SEED)
    chosen = np.sort(rng.choice(len(lines), size=N_MASKED, replace=False))
    pairs = [{"Input": mask_words(lines[i].split(), rng), "Target": lines[i]} for i in chosen]
    return [FIRST_EXAMPLE, *pairs]


def write_json(path: Path, records: list[Record]) -> None:
    """A JSON array with one record a line, UTF-8, non-ASCII kept as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(encode_record(r) for r in records)
    path.write_text(f"[\n{body}\n]\n" if records else "[\n]\n", encoding="utf-8")


def summary_row(path: Path, out: Path) -> str:
    """Markdown table row measured from the written file: records, characters, bytes."""
    records = json.loads(path.read_text(encoding="utf-8"))
    chars = sum(len(v) for r in records for v in r.values())
    name = path.relative_to(out).as_posix()
    return f"| `{name}` | {len(records):,} | {chars:,} | {path.stat().st_size:,} |"


def main() -> None:
    default_source = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=default_source)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    shakespeare = build_shakespeare(args.source / "shakespeare")
    examples = build_masked_examples(shakespeare["validation"])
    books, dropped = read_bible(args.source / "bible" / "kjv_to_web.jsonl")
    held_out = [p for b in (*BIBLE_VALIDATION, *BIBLE_TEST) for p in books[b]]
    fixed = sum(json_bytes(r) for r in shakespeare.values()) + json_bytes(examples)
    # Validation and test are written as one file each; sizing them together is exact enough.
    train_budget = JSON_BUDGET_BYTES - fixed - json_bytes(held_out)
    bible, left_out = build_bible(books, train_budget)

    outputs = {
        "shakespeare": shakespeare,
        "bible_modern": bible,
        "examples": {"masked_pairs": examples},
    }
    paths = []
    for folder, splits in outputs.items():
        for split, records in splits.items():
            paths.append(args.out / folder / f"{split}.json")
            write_json(paths[-1], records)

    print(f"Bible pairs dropped (empty side or length ratio > {MAX_LENGTH_RATIO}): {dropped}")
    print(f"Bible books left out of train for size: {left_out}")
    print("| file | records | characters | bytes |\n|---|---:|---:|---:|")
    print("\n".join(summary_row(p, args.out) for p in paths))


if __name__ == "__main__":
    main()
