"""How hard is the probe's fill? A count-based infiller that is told the span's length.

    python benchmarks/fill_baseline.py                      # the README's two probe texts
    python benchmarks/fill_baseline.py --lines 200 FILE ...

A reference point for `fill` in `python -m s2s.evaluate` (not a model): for each masked line of
the probe (`s2s.evaluation.masked_lines`, the same lines and seed as the evaluation), fill the
mask with the word sequence of the masked span's length (an oracle a model never gets) that
follows the word before the mask and precedes the word after it most often in the training
text; without such a sequence, the most frequent one after the word before, then before the
word after, then the most frequent word, repeated. Prints a Markdown table: the fill rate
overall and by span length, and chrF of the filled lines.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from denoise_recipe import PROBE_FILES, REPO  # the texts the recipe benchmark probes

from s2s.evaluate import texts_of
from s2s.evaluation.masked_lines import MAX_SPAN_WORDS, MaskedLine, make_masked_lines, score

TRAIN = REPO / "datasets/shakespeare/train.json"
START, END = "<s>", "</s>"

Context = tuple[str, str, int]  # (word before the span, word after it, span length)


def context(line: MaskedLine) -> Context:
    words = [START, *line.words, END]
    return words[line.start], words[line.start + line.length + 1], line.length


class Infiller:
    """Span counts from the training text, kept only for the contexts the probes ask about."""

    def __init__(self, texts: list[str], wanted: set[Context]) -> None:
        lefts = {(before, n) for before, _, n in wanted}
        rights = {(after, n) for _, after, n in wanted}
        self.both: dict[Context, Counter] = defaultdict(Counter)
        self.left: dict[tuple[str, int], Counter] = defaultdict(Counter)
        self.right: dict[tuple[str, int], Counter] = defaultdict(Counter)
        self.words: Counter = Counter()
        for text in texts:
            for raw in text.splitlines():
                words = [START, *raw.split(), END]
                self.words.update(words[1:-1])
                for n in range(1, MAX_SPAN_WORDS + 1):
                    for i in range(1, len(words) - n):
                        span, before, after = tuple(words[i : i + n]), words[i - 1], words[i + n]
                        if (before, n) in lefts:
                            self.left[before, n][span] += 1
                            if (before, after, n) in wanted:
                                self.both[before, after, n][span] += 1
                        if (after, n) in rights:
                            self.right[after, n][span] += 1

    def fill(self, line: MaskedLine) -> tuple[str, ...]:
        before, after, n = context(line)
        for counts in (
            self.both.get((before, after, n)),
            self.left.get((before, n)),
            self.right.get((after, n)),
        ):
            if counts:
                return counts.most_common(1)[0][0]
        return (self.words.most_common(1)[0][0],) * n


def filled(line: MaskedLine, span: tuple[str, ...]) -> str:
    words = line.words
    return " ".join([*words[: line.start], *span, *words[line.start + line.length :]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, default=list(PROBE_FILES.values()))
    parser.add_argument("--train", type=Path, default=TRAIN, help="the text to count spans in")
    parser.add_argument("--lines", type=int, default=200, help="masked lines per file")
    parser.add_argument("--seed", type=int, default=0, help="the probe's seed (as s2s.evaluate)")
    args = parser.parse_args()
    probes = {f: make_masked_lines(texts_of(f), args.lines, args.seed) for f in args.files}
    wanted = {context(line) for lines in probes.values() for line in lines}
    infiller = Infiller(texts_of(args.train), wanted)
    print(f"count-based infiller (span length given), spans counted in {args.train.name}")
    print("| text | lines | fill | 1-word spans | 2-word | 3-word | chrF |")
    print("|---|---|---|---|---|---|---|")
    for path, lines in probes.items():
        outputs = [filled(line, infiller.fill(line)) for line in lines]
        cells = []
        for n in range(1, MAX_SPAN_WORDS + 1):
            pairs = [(o, line) for o, line in zip(outputs, lines, strict=True) if line.length == n]
            rate = score([o for o, _ in pairs], [line for _, line in pairs]).fill_rate
            cells.append(f"{100 * rate:.1f}% of {len(pairs)}")
        total = score(outputs, lines)
        print(
            f"| {path.name} ({path.parent.name}) | {total.lines} | {100 * total.fill_rate:.1f}% "
            f"| {' | '.join(cells)} | {total.chrf:.1f} |"
        )


if __name__ == "__main__":
    main()
