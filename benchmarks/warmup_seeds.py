"""Does the copy warm-up learn to copy, seed by seed? The default recipe's first 300 steps.

    python benchmarks/warmup_seeds.py 1 2 3 4 5 [--steps 300] [-- OVERRIDES]

For each seed runs `python train.py seed=S trainer.max_steps=STEPS scheduler.total_steps=750`
(the default schedule's learning rates, stopped after the warm-up) into /tmp/s2s-seeds/sS and
prints one table row: wall seconds, and val/loss and the masked-line probe's copy rate (64
validation lines) at each validation. Run it alone: it is timed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOSS = re.compile(r"step (\d+)(?: \(before training\))?: val/loss ([\d.]+)")
COPY = re.compile(r"step (\d+): masked lines: copy ([\d.]+)%")
DONE = re.compile(r"copy warm-up done after (\d+) steps|copy warm-up: (\d+) steps .* copies only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seeds", nargs="+", type=int)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("/tmp/s2s-seeds"))
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1 :]  # more train.py overrides, after --
    args.out.mkdir(parents=True, exist_ok=True)
    print("| seed | wall | warm-up ended | val/loss by step | copy by step |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        log = args.out / f"s{seed}.log"
        command = [
            sys.executable,
            "train.py",
            f"seed={seed}",
            f"trainer.max_steps={args.steps}",
            "scheduler.total_steps=750",
            f"hydra.run.dir={args.out / f's{seed}'}",
            "overwrite=true",
            "callbacks.progress_bar=null",
            *args.overrides,
        ]
        start = time.perf_counter()
        with log.open("w") as handle:
            done = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.exit(f"seed {seed}: train.py failed ({done.returncode}); see {log}")
        text = log.read_text()
        losses = " / ".join(f"{s}: {v}" for s, v in LOSS.findall(text))
        copies = " / ".join(f"{s}: {v}%" for s, v in COPY.findall(text))
        done = DONE.search(text)
        ended = (
            "-" if done is None else (done[1] and f"step {done[1]}") or f"not copying ({done[2]})"
        )
        wall = time.perf_counter() - start
        print(f"| {seed} | {wall:.0f} s | {ended} | {losses} | {copies} |", flush=True)


if __name__ == "__main__":
    main()
