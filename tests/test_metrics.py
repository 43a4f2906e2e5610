"""BLEU, chrF and ROUGE of outputs against references (s2s.metrics)."""

from __future__ import annotations

import re

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from s2s.lit_module import EvalConfig
from s2s.metrics import check_metrics, corpus_scores, format_scores, rouge

OUTPUTS = ["the cat sat on the mat", "The cats were running home.", "no overlap at all"]
REFERENCES = ["the cat is on the mat", "A cat runs home", "something else entirely"]


def test_rouge_by_hand():
    # unigrams: 5 of 6 shared each way; bigrams: "the cat", "on the", "the mat" of 5 each;
    # longest common subsequence "the cat on the mat": 5 of 6 each way
    scores = rouge(OUTPUTS[:1], REFERENCES[:1])
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6)
    assert scores["rougeLsum"] == pytest.approx(100 * 5 / 6)  # one line: = rougeL


def test_rouge_stems_and_lowercases():
    # Porter stemming: "cats" -> "cat", "running" -> "run"; "The" -> "the"
    assert rouge(["The cats running"], ["the cat run"])["rouge1"] == pytest.approx(100.0)


def test_rouge_equals_rouge_score_and_sacrebleu():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    per_pair = [scorer.score(ref, out) for out, ref in zip(OUTPUTS, REFERENCES, strict=True)]
    scores = corpus_scores(OUTPUTS, REFERENCES)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        mean = sum(s[name].fmeasure for s in per_pair) / len(per_pair)
        assert scores[name] == pytest.approx(100 * mean), name
    assert scores["bleu"] == sacrebleu.corpus_bleu(OUTPUTS, [REFERENCES]).score
    assert scores["chrf"] == sacrebleu.corpus_chrf(OUTPUTS, [REFERENCES]).score


def test_only_the_metrics_asked_for():
    assert set(corpus_scores(OUTPUTS, REFERENCES, ["chrf"])) == {"chrf"}
    assert set(corpus_scores(OUTPUTS, REFERENCES, ["rouge"])) == {
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
    }
    assert format_scores({"bleu": 1.0, "rougeL": 2.5}) == "BLEU 1.00  ROUGE-L 2.50"


@pytest.mark.parametrize(
    "value, message",
    [
        (["bleu", "meteor"], "eval.metrics: unknown metric 'meteor'; choose from"),
        ("rouge", "eval.metrics='rouge' must be a list of metric names"),
        ([1], "eval.metrics=[1] must be a list"),
    ],
)
def test_bad_metric_lists_name_the_key(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_metrics(value, "eval.metrics")
    with pytest.raises(ValueError, match=re.escape(message)):
        EvalConfig(metrics=value)
