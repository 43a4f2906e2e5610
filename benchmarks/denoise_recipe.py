"""Time-to-quality of a pre-training recipe: does the default run copy, fill, and fine-tune?

    python benchmarks/denoise_recipe.py                          # the default recipe
    python benchmarks/denoise_recipe.py --name lr3e-3 -- optimizer.lr=3e-3
    python benchmarks/denoise_recipe.py --finetune               # + bible_modern fine-tuning
    python benchmarks/denoise_recipe.py --from-ckpt PRE.ckpt     # only fine-tune PRE.ckpt
    python benchmarks/denoise_recipe.py --name ft3 --from-ckpt PRE.ckpt -- seed=3

Runs `python train.py [OVERRIDES]` as a user would (wall time includes setup), then
`python -m s2s.evaluate` on the masked-line probe of two held-out texts: the validation plays
(in-domain) and the modern-English targets of the Bible test books (another source of English
prose). With --finetune it also runs `experiment=finetune_bible_modern` from the pre-trained
checkpoint and scores the test books with `generate.py`, next to the copy-the-input baseline.
Prints one Markdown table row per stage; outputs go under --out (default /tmp/s2s-recipes).
The overrides go to the pre-training run, or with --from-ckpt (no pre-training) to fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import sacrebleu

REPO = Path(__file__).resolve().parents[1]
PROBE_FILES = {
    "plays": REPO / "datasets/shakespeare/validation.json",
    "prose": REPO / "datasets/bible_modern/test.json",
}
TEST_PAIRS = REPO / "datasets/bible_modern/test.json"
RATES = re.compile(r"(\d+) lines, copy ([\d.]+)%, fill ([\d.]+)%, chrF ([\d.]+)")


def run(cmd: list[str], log: Path) -> float:
    """Run `cmd` in the repository, output to `log`; wall seconds. Exit status checked."""
    start = time.perf_counter()
    with log.open("w") as out:
        status = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if status:
        sys.exit(f"{' '.join(cmd)} failed ({status}); see {log}")
    return time.perf_counter() - start


def probe(ckpt: Path, lines: int, log: Path) -> dict[str, tuple[float, float, float]]:
    """(copy %, fill %, chrF) per probe file."""
    files = [str(f) for f in PROBE_FILES.values()]
    run([sys.executable, "-m", "s2s.evaluate", str(ckpt), *files, "--lines", str(lines)], log)
    found = {}
    for name, path in PROBE_FILES.items():
        for row in log.read_text().splitlines():
            if row.startswith(str(path)) and (m := RATES.search(row)):
                found[name] = (float(m[2]), float(m[3]), float(m[4]))
    return found


def copy_baseline() -> float:
    pairs = json.loads(TEST_PAIRS.read_text())
    return sacrebleu.corpus_bleu([p["Input"] for p in pairs], [[p["Target"] for p in pairs]]).score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="default")
    parser.add_argument("--out", type=Path, default=Path("/tmp/s2s-recipes"))
    parser.add_argument("--lines", type=int, default=200, help="masked lines per probe file")
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--from-ckpt", type=Path, help="skip pre-training: fine-tune this")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="train.py overrides (after --): pre-training's, or with --from-ckpt fine-tuning's",
    )
    args = parser.parse_args()
    out = args.out / args.name
    out.mkdir(parents=True, exist_ok=True)
    common = ["callbacks.progress_bar=null", "overwrite=true"]  # this script owns --out/NAME

    if args.from_ckpt is None:
        pretrain = out / "pretrain"
        wall = run(
            [sys.executable, "train.py", f"hydra.run.dir={pretrain}", *common, *args.overrides],
            out / "pretrain.log",
        )
        ckpt = pretrain / "checkpoints" / "last.ckpt"
        scores = probe(ckpt, args.lines, out / "probe.log")
        print("| recipe | wall | plays copy / fill / chrF | prose copy / fill / chrF |")
        print("|---|---|---|---|")
        cells = [" / ".join(f"{v:.1f}" for v in scores.get(k, ())) for k in PROBE_FILES]
        overrides = " ".join(args.overrides)
        print(f"| {args.name} {overrides} | {wall / 60:.1f} min | {' | '.join(cells)} |")
    else:
        ckpt = args.from_ckpt.resolve()

    if args.finetune or args.from_ckpt is not None:
        tuned = out / "finetune"
        wall = run(
            [
                sys.executable,
                "train.py",
                "experiment=finetune_bible_modern",
                f"init_from={ckpt}",
                f"hydra.run.dir={tuned}",
                *common,
                *(args.overrides if args.from_ckpt is not None else []),
            ],
            out / "finetune.log",
        )
        log = out / "test.log"
        run(
            [
                sys.executable,
                "generate.py",
                f"ckpt={tuned / 'checkpoints' / 'last.ckpt'}",
                f"input_file={TEST_PAIRS}",
                f"output_file={out / 'test_predictions.jsonl'}",
                "generate.max_new_tokens=128",
                "batch_size=32",
                "overwrite=true",
            ],
            log,
        )
        bleu = re.search(r"BLEU ([\d.]+)\s+chrF ([\d.]+)", log.read_text())
        print(
            f"fine-tuned ({wall / 60:.1f} min): test BLEU {bleu[1] if bleu else '?'} "
            f"chrF {bleu[2] if bleu else '?'}; copying the input: BLEU {copy_baseline():.2f}"
        )


if __name__ == "__main__":
    main()
