"""Evaluations beyond the loss: the masked-line denoising probe (copy / fill / chrF)."""

from s2s.evaluation.masked_lines import (
    DenoiseScores,
    LineScore,
    MaskedLine,
    candidate_lines,
    make_masked_lines,
    score,
    score_line,
)

__all__ = [
    "DenoiseScores",
    "LineScore",
    "MaskedLine",
    "candidate_lines",
    "make_masked_lines",
    "score",
    "score_line",
]
