"""Text-generation metrics of outputs against references: BLEU, chrF and ROUGE.

Which run is a list (`eval.metrics` in training, `metrics` in generate.py), any of

    bleu    corpus BLEU (Papineni et al. 2002), sacrebleu's defaults (13a tokenisation)
    chrf    corpus chrF (Popović 2015), sacrebleu's defaults (character 6-grams, beta 2)
    rouge   rouge1, rouge2, rougeL, rougeLsum (Lin 2004) with Google's reference
            implementation (`rouge-score`): its default tokeniser (lower-cased; runs of
            a-z and 0-9 are tokens, every other character separates them, so non-ASCII
            letters are dropped), Porter stemming on (`use_stemmer=True`, as in the
            summarisation literature), F-measure per example averaged over examples.
            rougeLsum is the summary-level LCS over newline-separated sentences: on
            one-line texts it equals rougeL.

All scores are on a 0-100 scale.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

METRICS = ("bleu", "chrf", "rouge")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def check_metrics(value: Any, key: str) -> tuple[str, ...]:
    """The metric names of a config list, checked; errors name `key`."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}={value!r} must be a list of metric names, e.g. [bleu, rouge]")
    unknown = [name for name in value if name not in METRICS]
    if unknown:
        raise ValueError(f"{key}: unknown metric {unknown[0]!r}; choose from {list(METRICS)}")
    return tuple(value)


def corpus_scores(
    outputs: Sequence[str], references: Sequence[str], metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """{"bleu": .., "chrf": .., "rouge1": .., "rouge2": .., "rougeL": .., "rougeLsum": ..}
    for the metrics asked for (see the module docstring)."""
    import sacrebleu

    outputs, references = list(outputs), list(references)
    scores: dict[str, float] = {}
    if "bleu" in metrics:
        scores["bleu"] = sacrebleu.corpus_bleu(outputs, [references]).score
    if "chrf" in metrics:
        scores["chrf"] = sacrebleu.corpus_chrf(outputs, [references]).score
    if "rouge" in metrics:
        scores.update(rouge(outputs, references))
    return scores


def rouge(outputs: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F-measure x 100 of each ROUGE type over the (output, reference) pairs."""
    from rouge_score import rouge_scorer

    # rouge-score logs "Using default tokenizer." through absl at every scorer: nothing to act on
    logging.getLogger("absl").setLevel(logging.WARNING)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for output, reference in zip(outputs, references, strict=True):
        # score(target, prediction): the reference comes first
        for name, score in scorer.score(reference, output).items():
            totals[name] += score.fmeasure
    n = max(len(outputs), 1)
    return {name: 100 * total / n for name, total in totals.items()}


def format_scores(scores: dict[str, float]) -> str:
    """'BLEU 12.34  chrF 45.67  ROUGE-1 ...' for printing."""
    names = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2"}
    names |= {"rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
    return "  ".join(f"{names[key]} {value:.2f}" for key, value in scores.items())
