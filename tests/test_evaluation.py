"""The masked-line denoising probe: line choice, scoring, determinism, the CLI and validation."""

from __future__ import annotations

import json

import pytest
from helpers.generation import tiny_model, write_ckpt

from s2s.evaluation.masked_lines import (
    MASK,
    MaskedLine,
    candidate_lines,
    make_masked_lines,
    score,
    score_line,
)

TEXT = (
    "MACBETH.\n"
    "So foul and fair a day I have not seen.\n"
    "[Enter three Witches.]\n"
    "Speak, if you can: what are you?\n"
    "All hail, Macbeth! hail to thee, Thane of Glamis!\n"
    "Too short.\n"
    "What, can the devil speak true?\n"
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tokenizer, tmp_path_factory):
    return write_ckpt(
        tmp_path_factory.mktemp("eval") / "tiny.ckpt", tiny_model(tokenizer.vocab_size), tokenizer
    )


def test_candidate_lines_skip_labels_directions_and_short_lines():
    lines = candidate_lines([TEXT, "So   foul and fair a day I have not seen."])
    assert lines == [
        "So foul and fair a day I have not seen.",  # the whitespace variant is a duplicate
        "Speak, if you can: what are you?",
        "All hail, Macbeth! hail to thee, Thane of Glamis!",
        "What, can the devil speak true?",
    ]


def test_masked_line_replaces_its_span_by_one_mask():
    line = MaskedLine("So foul and fair a day", start=1, length=2)
    assert line.masked == f"So {MASK} fair a day"
    assert line.span == ["foul", "and"]


def test_a_perfect_copier_copies_every_line_and_a_perfect_filler_fills_them():
    lines = make_masked_lines([TEXT] * 3, 10)
    copies = [
        " ".join(line.words[: line.start] + ["X"] + line.words[line.start + line.length :])
        for line in lines
    ]
    assert score(copies, lines).copy_rate == 1.0
    assert score(copies, lines).fill_rate == 0.0
    perfect = score([line.text for line in lines], lines)
    assert (perfect.copy_rate, perfect.fill_rate) == (1.0, 1.0)
    assert perfect.chrf == pytest.approx(100.0)


@pytest.mark.parametrize(
    "output",
    [
        "foul and fair a day I have not seen.",  # first word dropped
        "So so foul and fair a day I have not seen.",  # word added before the mask
        "So foul and fair a day I have not seen. again",  # word added at the end
        "So foul and fair a day I have seen.",  # word dropped after the mask
        "So foul and fair a day I have not seen",  # punctuation changed
        "so foul and fair a day I have not seen.",  # case changed
    ],
)
def test_one_word_wrong_outside_the_mask_fails_the_line(output):
    line = MaskedLine("So foul and fair a day I have not seen.", start=4, length=2)
    result = score_line(output, line)
    assert not result.copied and not result.filled


def test_the_fill_is_judged_only_inside_the_mask():
    line = MaskedLine("So foul and fair a day I have not seen.", start=4, length=2)
    assert score_line("So foul and fair a day I have not seen.", line).filled
    other = score_line("So foul and fair the night I have not seen.", line)
    assert other.copied and not other.filled
    longer = score_line("So foul and fair a long day I have not seen.", line)
    assert longer.copied and not longer.filled
    empty = score_line("So foul and fair I have not seen.", line)
    assert empty.copied and not empty.filled
    punctuation = score_line("So foul and fair, I  have not seen.", line)  # a fill of ","
    assert punctuation.copied and not punctuation.filled
    for glued in ("So foul and fairest I have not seen.", "So foul and fair aI have not seen."):
        assert not score_line(glued, line).copied  # a neighbour word changed
    first = MaskedLine("Not cast aside so soon.", start=0, length=1)
    assert score_line("Do not cast aside so soon.", first).copied
    assert not score_line("Docast aside so soon.", first).copied


def test_masked_lines_are_the_same_in_every_run_and_change_with_the_seed():
    texts = [TEXT, "And then the king came home to find his castle burning bright tonight."]
    first = make_masked_lines(texts, 4, seed=0)
    assert first == make_masked_lines(list(texts), 4, seed=0)
    assert first != make_masked_lines(texts, 4, seed=1)
    for line in first:
        assert 1 <= line.length <= 3
        assert all(any(c.isalpha() for c in w) for w in line.span)


def test_fewer_lines_than_asked_gives_all_of_them():
    assert len(make_masked_lines([TEXT], 100)) == 4
    assert make_masked_lines([], 5) == []
    assert score([], []).lines == 0
    with pytest.raises(ValueError, match="outputs"):
        score(["a"], [])


def test_evaluate_cli_scores_a_checkpoint_on_two_files(tiny_checkpoint, tmp_path, capsys):
    from s2s.evaluate import main

    prose = tmp_path / "prose.txt"
    prose.write_text("The quick brown fox jumps over the lazy dog today.\n" * 3, encoding="utf-8")
    pairs = tmp_path / "pairs.json"
    pairs.write_text(
        json.dumps([{"Input": "x", "Target": "Now is the winter of our discontent here."}]),
        encoding="utf-8",
    )
    main([str(tiny_checkpoint), str(prose), str(pairs), "--lines", "5", "--show", "1"])
    out = capsys.readouterr().out
    assert f"{prose}: 1 lines, copy" in out  # duplicates collapse to one line
    assert f"{pairs}: 1 lines, copy" in out
    assert "masked: " in out and MASK in out


def test_evaluate_cli_reports_a_missing_file_in_one_line(tiny_checkpoint, tmp_path, capsys):
    from s2s.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_checkpoint), str(tmp_path / "nope.json")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.json" in err[0] and err[0].startswith("error:")


def test_probe_outputs_may_run_past_the_prompt_length(tokenizer):
    """A fill can be longer than its one mask token: the probe lets the model write EXTRA_TOKENS
    past the longest prompt. A model that always says " the" (its logits bias) and never EOS
    writes exactly that many tokens, one word each."""
    from s2s.evaluation.denoise import EXTRA_TOKENS, denoise_outputs

    the = tokenizer.token_to_id("Ġthe")
    assert the is not None and tokenizer.decode([the, the]) == " the the"
    model = tiny_model(tokenizer.vocab_size, final_logits_bias=True)
    model.final_logits_bias[the] = 1e4
    lines = [MaskedLine("So foul and fair a day I have not seen.", 2, 2), MaskedLine("To be", 0, 1)]
    longest = max(len(tokenizer.encode(line.masked)) for line in lines)
    outputs = denoise_outputs(model, tokenizer, lines)
    assert [len(out.split()) for out in outputs] == [longest + EXTRA_TOKENS] * 2
    assert set(" ".join(outputs).split()) == {"the"}
