"""Single-core throughput of the noising functions, with padding collation into torch batches.

Run: python benchmarks/data_throughput.py [--examples 2048] [--repeats 7]

Inputs are random token ids: T5 texts are cropped to the raw length that span-corrupts into
exactly 512 inputs (`compute_input_and_target_lengths(512, 0.15, 3)`, i.e. 568 tokens); BART
texts are 512 tokens. Each example gets its own `noise_rng(seed, epoch, index)` (as the data
module will), and every batch of 32 is padded (numpy) and turned into torch tensors. Tokens/s
counts raw text tokens noised. Reported: median over repeats, after one warm-up pass.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from s2s.data.infilling import bart_text_infilling
from s2s.data.noising import (
    NoisedExample,
    compute_input_and_target_lengths,
    noise_rng,
    t5_span_corruption,
)

PAD, EOS, BOS, MASK, VOCAB = 0, 1, 2, 3, 32_000
SENTINELS = np.arange(4, 104)
BATCH = 32


def pad_batch(rows: list[np.ndarray], pad_id: int) -> torch.Tensor:
    """Right-pad 1-D id arrays into a (B, max_len) int64 tensor."""
    lengths = np.array([len(r) for r in rows])
    out = np.full((len(rows), lengths.max()), pad_id, dtype=np.int64)
    out[np.arange(lengths.max()) < lengths[:, None]] = np.concatenate(rows)
    return torch.from_numpy(out)


def run_epoch(
    texts: list[np.ndarray], noise: Callable[[np.ndarray, np.random.Generator], NoisedExample]
) -> int:
    """Noise every text and collate batches; returns the number of raw tokens processed."""
    tokens = 0
    for start in range(0, len(texts), BATCH):
        examples = []
        for index in range(start, min(start + BATCH, len(texts))):
            examples.append(noise(texts[index], noise_rng(0, 1, index)))
            tokens += len(texts[index])
        pad_batch([e.input_ids for e in examples], PAD)
        pad_batch([e.target_ids for e in examples], PAD)
    return tokens


def t5_noise(ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
    return t5_span_corruption(
        ids,
        noise_density=0.15,
        mean_noise_span_length=3.0,
        sentinel_ids=SENTINELS,
        eos_id=EOS,
        rng=rng,
    )


def bart_noise(ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
    return bart_text_infilling(ids, mask_id=MASK, eos_id=EOS, bos_id=BOS, rng=rng)


def bart_whole_word_noise(ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
    # Word starts are a pure function of the ids here (about 1 token in 1.3 starts a word).
    word_starts = ids % 10 < 8
    sentence_ends = ids % 20 == 0
    return bart_text_infilling(
        ids,
        mask_id=MASK,
        eos_id=EOS,
        bos_id=BOS,
        rng=rng,
        word_starts=word_starts,
        sentence_end_mask=sentence_ends,
        random_ratio=0.1,
        random_ids=np.arange(104, VOCAB),
    )


def measure(texts: list[np.ndarray], noise: Callable, repeats: int) -> float:
    """Median tokens per second over `repeats` timed passes (one untimed warm-up)."""
    run_epoch(texts, noise)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = run_epoch(texts, noise)
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    t5_length, _ = compute_input_and_target_lengths(512, 0.15, 3.0)
    t5_texts = [rng.integers(104, VOCAB, size=t5_length) for _ in range(args.examples)]
    bart_texts = [rng.integers(104, VOCAB, size=512) for _ in range(args.examples)]
    rows = [
        ("t5 span corruption", t5_length, t5_texts, t5_noise),
        ("bart text infilling", 512, bart_texts, bart_noise),
        ("bart + words, sentences, random", 512, bart_texts, bart_whole_word_noise),
    ]
    print(f"{'objective':<34}{'text len':>9}{'examples/s':>12}{'tokens/s':>14}")
    for name, length, texts, noise in rows:
        rate = measure(texts, noise, args.repeats)
        print(f"{name:<34}{length:>9}{rate / length:>12,.0f}{rate:>14,.0f}")


if __name__ == "__main__":
    main()
