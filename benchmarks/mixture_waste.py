"""Stream tokens a `data.objective=mixture` row wastes, and how full its inputs and targets are.

Waste is the share of a packed row's tokens that reach neither the input nor the target (a
denoiser that crops the row drops the rest). Each row is made of distinct ids, so where every
token went can be read back from the example. Fill is the mean length of the inputs (targets)
over `data.max_source_length` (`data.max_target_length`): the rest of each is padding. No
tokenizer is needed: mode texts become one id a byte, as a byte-level BPE at worst.

    python benchmarks/mixture_waste.py --lengths 512/512 64/64 --rows 2000

It uses only what every version of `s2s.data.objectives` has, so the same script measures an
older checkout: `PYTHONPATH=<old checkout>/src python benchmarks/mixture_waste.py`.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np

from s2s.data.config import DataConfig
from s2s.data.noising import noise_rng
from s2s.data.objectives import block_length, build_objective

STREAM = 10_000  # row ids from here up: above the stand-in specials, all distinct


def measure(max_source: int, max_target: int, rows: int) -> str:
    try:
        config = DataConfig.from_dict(
            {
                "objective": "mixture",
                "max_source_length": max_source,
                "max_target_length": max_target,
            }
        )
    except ValueError as error:
        return f"{max_source}/{max_target}: refused: {error}"
    tokenizer = SimpleNamespace(
        encode=lambda text, specials=True: [1000 + b for b in text.encode("utf-8")],
        sentinel_ids=list(range(2000, 2300)),
        eos_id=1,
    )
    objective, block = build_objective(config, tokenizer), block_length(config)
    row = np.arange(STREAM, STREAM + block)
    used = inputs = targets = 0
    for index in range(rows):
        example = objective(row, noise_rng(0, 0, index))
        present = np.concatenate([example.input_ids, example.target_ids])
        used += int(np.isin(row, present).sum())
        inputs, targets = inputs + len(example.input_ids), targets + len(example.target_ids)
    return (
        f"{max_source}/{max_target}: block {block}, waste {1 - used / (rows * block):.3f}, "
        f"input fill {inputs / (rows * max_source):.3f}, "
        f"target fill {targets / (rows * max_target):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", default=["512/512", "512/114", "64/64"])
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    print(f"default data.noise.mixture, {args.rows} rows each (max_source/max_target):")
    for lengths in args.lengths:
        source, target = (int(n) for n in lengths.split("/"))
        print(" ", measure(source, target, args.rows))


if __name__ == "__main__":
    main()
