"""Does a denoiser copy what it sees and fill what is masked? Masked lines and their scores.

The probe (pure functions, no model): take single lines of held-out text, replace ONE span of
1-3 whole words by `<mask>`, let the model rewrite each line, and compare word by word:

    original   Never was such a sudden scholar made;
    masked     Never was such a <mask> scholar made;
    output     Never was such a strange scholar made;   copied: yes   filled: no

- copied: the output starts with every word before the span and ends with every word after it,
  exactly (case and punctuation included; runs of whitespace count as one space). Dropping,
  adding or changing any word outside the mask fails the line; what stands at the mask is not
  judged, even punctuation that touches a neighbour ("Not cast, soon." copies "Not cast <mask>
  soon."), but letters glued onto a neighbour change that word ("Not castle soon." does not).
- filled: the output equals the original line word for word (copied, and the masked words
  came back exactly).
- chrF (Popovic 2015, sacrebleu's implementation) of the outputs against the original lines:
  partial credit for near misses.

This is what a BART-style model is trained to do (Lewis et al. 2020, Sec. 2.2: the decoder
reconstructs the whole original text), asked on short units the model never saw. The lines
and spans depend only on the texts and `seed`, never on the run, so every run and every
checkpoint is scored on the same lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import sacrebleu

MASK = "<mask>"
MIN_WORDS = 4  # shorter lines leave too little context to copy around the mask
MAX_WORDS = 24  # longer ones (rare in verse, common in prose) are skipped, not cut
MAX_SPAN_WORDS = 3


@dataclass(frozen=True)
class MaskedLine:
    """One probe: `text` with words [start, start + length) replaced by a single `<mask>`."""

    text: str
    start: int
    length: int

    @property
    def words(self) -> list[str]:
        return self.text.split()

    @property
    def masked(self) -> str:
        words = self.words
        return " ".join([*words[: self.start], MASK, *words[self.start + self.length :]])

    @property
    def span(self) -> list[str]:
        return self.words[self.start : self.start + self.length]


@dataclass(frozen=True)
class LineScore:
    copied: bool
    filled: bool


@dataclass(frozen=True)
class DenoiseScores:
    """Rates in [0, 1] over `lines` probes; chrF in [0, 100]."""

    copy_rate: float
    fill_rate: float
    chrf: float
    lines: int


def candidate_lines(texts: Iterable[str]) -> list[str]:
    """The lines of `texts` fit to probe: MIN_WORDS..MAX_WORDS words, with some letters, not a
    speaker label ("MACBETH."), a stage direction ("[Exit.]") or text holding special tokens.

    Whitespace inside a line is normalised to single spaces; duplicates are kept once, in
    first-seen order.
    """
    seen: dict[str, None] = {}
    for text in texts:
        for raw in text.splitlines():
            line = " ".join(raw.split())
            words = line.split()
            if not MIN_WORDS <= len(words) <= MAX_WORDS:
                continue
            if line.startswith("[") or "<" in line or ">" in line:
                continue
            if line.isupper() or sum(_has_letter(w) for w in words) < MIN_WORDS:
                continue
            seen.setdefault(line, None)
    return list(seen)


def make_masked_lines(texts: Iterable[str], n: int, seed: int = 0) -> list[MaskedLine]:
    """`n` probes (fewer if the texts have fewer lines), the same for the same texts and seed.

    Lines are drawn without replacement; each gets one span of 1..MAX_SPAN_WORDS words (uniform)
    at a uniform position among spans made only of words that contain a letter (a masked
    "--" or "&c." says nothing about filling).
    """
    if n < 0:
        raise ValueError(f"the number of masked lines must be >= 0, got {n}")
    lines = candidate_lines(texts)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lines))
    probes: list[MaskedLine] = []
    for index in order:
        if len(probes) == n:
            break
        words = lines[index].split()
        length = int(rng.integers(1, MAX_SPAN_WORDS + 1))
        starts = [
            s
            for s in range(len(words) - length + 1)
            if all(_has_letter(w) for w in words[s : s + length])
        ]
        if not starts:
            continue
        probes.append(MaskedLine(lines[index], int(starts[rng.integers(len(starts))]), length))
    return probes


def score_line(output: str, line: MaskedLine) -> LineScore:
    """Compare one output with the original line around and inside the mask."""
    out, words = " ".join(output.split()), line.words
    before = " ".join(words[: line.start])
    after = " ".join(words[line.start + line.length :])
    copied = _keeps_around(out, before, after)
    return LineScore(copied=copied, filled=copied and out.split() == words)


def _keeps_around(out: str, before: str, after: str) -> bool:
    """`out` is `before` + a fill + `after`, and the fill does not run into a copied word.

    Compared as text, not as whitespace-split words, so that a fill of punctuation ("Not cast,
    soon." for "Not cast <mask> soon.") does not count as changing the word beside it; a fill
    that glues letters onto it ("castle") does.
    """
    fill_start, fill_end = len(before), len(out) - len(after)
    if fill_start > fill_end or not (out.startswith(before) and out.endswith(after)):
        return False
    if before and fill_start < len(out) and out[fill_start].isalnum():
        return False
    return not (after and fill_end > 0 and out[fill_end - 1].isalnum())


def score(outputs: Sequence[str], lines: Sequence[MaskedLine]) -> DenoiseScores:
    """Copy rate, fill rate and corpus chrF of `outputs` (one per line, in order)."""
    if len(outputs) != len(lines):
        raise ValueError(f"{len(outputs)} outputs for {len(lines)} masked lines")
    if not lines:
        return DenoiseScores(copy_rate=0.0, fill_rate=0.0, chrf=0.0, lines=0)
    scores = [score_line(o, line) for o, line in zip(outputs, lines, strict=True)]
    chrf = sacrebleu.corpus_chrf(list(outputs), [[line.text for line in lines]]).score
    return DenoiseScores(
        copy_rate=sum(s.copied for s in scores) / len(scores),
        fill_rate=sum(s.filled for s in scores) / len(scores),
        chrf=float(chrf),
        lines=len(scores),
    )


def _has_letter(word: str) -> bool:
    return any(c.isalpha() for c in word)
