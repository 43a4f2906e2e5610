"""Score a denoiser on held-out text: `python -m s2s.evaluate CKPT FILE [FILE ...]`.

    python -m s2s.evaluate outputs/<run>/checkpoints/last.ckpt \\
        datasets/shakespeare/validation.json datasets/bible_modern/test.json

For each FILE (a dataset in either record format, or plain text with one line a line; for
Input -> Target pairs the Targets are the text) it builds the masked-line probe of
`s2s.evaluation.masked_lines` (the same lines for the same file and --seed), decodes greedily
and prints copy rate, fill rate and chrF, with a few examples (--show). CKPT is an s2s `.ckpt`
a bundle directory or a Hugging Face T5 / BART directory. Problems print one `error: ...`
line and exit 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from s2s.cli import run_cli
from s2s.evaluation.masked_lines import DenoiseScores, MaskedLine, make_masked_lines


def texts_of(path: Path) -> list[str]:
    """The clean texts of a file: Text records, the Targets of pairs, or plain-text lines."""
    from s2s.data.records import RecordError, read_records

    if not path.is_file():
        raise RecordError(path, "file not found")
    try:
        head = path.read_text(encoding="utf-8-sig").lstrip()[:1]
    except UnicodeDecodeError as err:
        raise RecordError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    if head in ("[", "{"):
        records = read_records(path)
        return list(records.targets if records.targets is not None else records.inputs)
    return path.read_text(encoding="utf-8-sig").splitlines()


def evaluate_files(
    ckpt: str, files: list[str], *, lines: int, seed: int, batch_size: int, show: int
) -> dict[str, DenoiseScores]:
    from s2s import kernels  # torch and the model: after the cheap checks
    from s2s.bundle import build_pretrained, read_pretrained
    from s2s.evaluation.denoise import evaluate_denoising

    probes: dict[str, list[MaskedLine]] = {}
    for name in files:
        probes[name] = make_masked_lines(texts_of(Path(name)), lines, seed=seed)
        if not probes[name]:
            raise ValueError(f"{name}: no line of 4-24 words to mask")
    loaded = read_pretrained(ckpt)
    model, tokenizer = build_pretrained(loaded)
    results: dict[str, DenoiseScores] = {}
    with kernels.decoding_session(model):
        for name, masked in probes.items():
            start = time.perf_counter()
            scores, outputs = evaluate_denoising(
                model, tokenizer, masked, batch_size=batch_size, add_bos=loaded.framing.add_bos
            )
            results[name] = scores
            print(
                f"{name}: {scores.lines} lines, copy {scores.copy_rate:.1%}, "
                f"fill {scores.fill_rate:.1%}, chrF {scores.chrf:.1f} "
                f"({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
            for line, output in list(zip(masked, outputs, strict=True))[:show]:
                print(f"    masked: {line.masked}\n    output: {output}\n    target: {line.text}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s2s.evaluate",
        description="Copy rate, fill rate and chrF of a denoiser on masked held-out lines.",
    )
    parser.add_argument(
        "ckpt", help="an s2s .ckpt file, a bundle directory or a Hugging Face model directory"
    )
    parser.add_argument("files", nargs="+", help="dataset files (JSON/JSONL) or plain text")
    parser.add_argument("--lines", type=int, default=200, help="masked lines per file")
    parser.add_argument("--seed", type=int, default=0, help="which lines and spans (default 0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--show", type=int, default=3, help="examples printed per file")
    args = parser.parse_args(argv)
    if args.lines < 1 or args.batch_size < 1 or args.show < 0:
        parser.error("--lines and --batch-size must be >= 1, --show >= 0")
    run_cli(
        lambda: evaluate_files(
            args.ckpt,
            args.files,
            lines=args.lines,
            seed=args.seed,
            batch_size=args.batch_size,
            show=args.show,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
