"""Small synthetic corpora for the prepared-data tests: seeded texts, JSONL files, and a data
module set up on prepared directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from s2s.data.config import DataConfig
from s2s.data.datamodule import S2SDataModule

WORDS = ["the", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with"]


def texts(
    n: int, seed: int = 0, *, words: list[str] = WORDS, lengths: tuple[int, int] = (2, 30)
) -> list[str]:
    """n texts of `words` drawn with replacement, each of lengths[0] .. lengths[1] - 1 words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(*lengths)))) for _ in range(n)]


def jsonl(path: Path, lines: list[str]) -> Path:
    """`path` written with one {"Text": line} record per line."""
    path.write_text("".join(json.dumps({"Text": t}) + "\n" for t in lines), encoding="utf-8")
    return path


def data_module(tokenizer, tmp_path: Path, **paths) -> S2SDataModule:
    """A data module over `paths` (train_dir=..., val_dir=...), set up for fitting."""
    config = DataConfig(
        **paths,
        max_source_length=24,
        max_target_length=24,
        batch_size=4,
        num_workers=0,
        cache_dir=str(tmp_path / "cache"),
    )
    dm = S2SDataModule(config, tokenizer=tokenizer)
    dm.setup("fit")
    return dm
