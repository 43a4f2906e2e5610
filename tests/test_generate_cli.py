"""`python generate.py` end to end: prompt mode, interactive mode through a pipe, one-line
errors (as subprocesses, started together since each pays Python + torch start-up), and the
file mode with metrics (in process, through `s2s.pipeline.generate`)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.generation import tiny_model, write_ckpt
from rouge_score import rouge_scorer

from s2s import load_pretrained
from s2s.bundle import read_pretrained, save_bundle
from s2s.checkpoint import CheckpointError, Framing
from s2s.cli_generate import quote_free_text
from s2s.export import export
from s2s.generation import GenerationConfig
from s2s.generation.text import TextGenerator
from s2s.pipeline import generate

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = ["generate.max_new_tokens=6"]
PROMPTS = ["How <mask> doing?", "To be, or not to be"]
ERROR_CASES = {
    "missing checkpoint": ["ckpt={dir}/missing.ckpt", "prompt=hello"],
    "bundle missing a file": ["ckpt={dir}/incomplete", "prompt=hello"],
    "unknown strategy": ["ckpt={dir}/tiny.ckpt", "prompt=hello", "generate.strategy=foo"],
    "empty prompt": ["ckpt={dir}/tiny.ckpt", "prompt="],
}


@pytest.fixture(scope="module")
def files(tokenizer, tmp_path_factory) -> Path:
    """tiny.ckpt (a random model with large weights, so its answers are not empty) and a
    bundle directory `incomplete` that lacks its tokenizer."""
    directory = tmp_path_factory.mktemp("cli")
    model = tiny_model(tokenizer.vocab_size, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
    write_ckpt(directory / "tiny.ckpt", model, tokenizer)
    save_bundle(model, tokenizer, directory / "incomplete")
    (directory / "incomplete" / "tokenizer.json").unlink()
    return directory


def greedy_by_recompute(model, tokenizer, prompt: str, max_new: int) -> str:
    """Greedy decoding written out plainly, as a second implementation to compare with:
    the whole teacher-forced forward again at every step (no KV cache, no processors, no
    s2s.generation code), argmax of the last position, stop at EOS."""
    source = torch.tensor([[*tokenizer.encode(prompt), tokenizer.eos_id]])
    output = [model.config.decoder_start_token_id]
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(source, torch.tensor([output]))  # (1, t, V)
            output.append(int(logits[0, -1].argmax()))
            if output[-1] == tokenizer.eos_id:
                break
    return tokenizer.decode(output[1:])


@pytest.fixture(scope="module")
def expected(files) -> dict[str, str]:
    """What the model answers to each prompt, by `greedy_by_recompute` (not TextGenerator:
    the CLI is built on it, so it would agree with any bug the two share)."""
    model, tokenizer = load_pretrained(files / "tiny.ckpt")
    model.eval()
    answers = {p: greedy_by_recompute(model, tokenizer, p, 6) for p in PROMPTS}
    assert all(a.strip() for a in answers.values())  # a meaningful comparison
    return answers


@pytest.fixture(scope="module")
def cli(files) -> dict[str, subprocess.CompletedProcess]:
    """Every subprocess run of the module, started at once and awaited together."""
    runs = {
        "prompt": ([f"ckpt={files}/tiny.ckpt", f"prompt={PROMPTS[0]}", *MAX_NEW], None),
        "interactive": (
            [f"ckpt={files}/tiny.ckpt", *MAX_NEW],
            "\n".join([*PROMPTS, "", ":q", "never answered"]) + "\n",
        ),
    }
    for name, args in ERROR_CASES.items():
        runs[name] = ([a.format(dir=files) for a in args], None)
    started = {}
    for name, (args, stdin) in runs.items():
        # the prompt run lists what it imports (on stderr): generation must not load Lightning
        python = [sys.executable, "-X", "importtime"] if name == "prompt" else [sys.executable]
        process = subprocess.Popen(
            [*python, str(REPO / "generate.py"), *args],
            cwd=files,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[name] = (process, args, stdin)
    done = {}
    for name, (process, args, stdin) in started.items():
        out, err = process.communicate(stdin, timeout=600)
        done[name] = subprocess.CompletedProcess(args, process.returncode, out, err)
    return done


@pytest.mark.slow  # spawns processes
def test_prompt_mode_prints_the_answer(cli, expected, files):
    result = cli["prompt"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [expected[PROMPTS[0]]]
    assert sorted(p.name for p in files.iterdir()) == ["incomplete", "tiny.ckpt"]  # no litter


@pytest.mark.slow  # spawns processes
def test_generation_never_imports_lightning(cli):
    """s2s.pipeline imports Lightning inside train() only: it takes seconds to import."""
    lines = cli["prompt"].stderr.splitlines()
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert {"torch", "s2s.pipeline"} <= imported  # the listing is complete enough to judge
    assert not [name for name in imported if name.split(".")[0] == "lightning"]


@pytest.mark.slow  # spawns processes
def test_interactive_mode_through_a_pipe(cli, expected):
    result = cli["interactive"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [expected[p] for p in PROMPTS]  # stops at :q


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
@pytest.mark.slow  # spawns processes
def test_errors_are_one_line(cli, case):
    result = cli[case]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    wanted = {
        "missing checkpoint": "missing.ckpt",
        "bundle missing a file": "missing tokenizer.json",
        "unknown strategy": "generate.strategy='foo' must be one of greedy, beam, sample",
        "empty prompt": "prompt is empty",
    }
    assert wanted[case] in lines[0]


def test_file_mode_writes_jsonl_and_scores_targets(files, expected, tmp_path, capsys, cfg_generate):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"Input": p, "Target": t} for p, t in zip(PROMPTS, ["x", expected[PROMPTS[1]]], strict=True)
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out" / "preds.jsonl"
    cfg = cfg_generate(f"ckpt={files}/tiny.ckpt", f"input_file={pairs}", f"output_file={out}",
                 "batch_size=1", *MAX_NEW)  # fmt: skip
    generate(cfg)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == [
        {"input": p, "output": expected[p], "target": r["Target"]}
        for p, r in zip(PROMPTS, rows, strict=True)
    ]
    printed = capsys.readouterr().out
    assert "BLEU" in printed and "chrF" in printed and "exact match 50.0% (1/2)" in printed
    # ROUGE as Google's rouge-score computes it (stemmed), averaged over the two pairs
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for name, label in (("rouge1", "ROUGE-1"), ("rougeL", "ROUGE-L")):
        scores = [
            scorer.score(r["Target"], expected[p])[name].fmeasure
            for p, r in zip(PROMPTS, rows, strict=True)
        ]
        assert f"{label} {100 * sum(scores) / 2:.2f}  " in printed
    generate(cfg_generate(f"ckpt={files}/tiny.ckpt", f"input_file={pairs}", f"output_file={out}",
               "overwrite=true", "metrics=[bleu]", *MAX_NEW))  # fmt: skip
    printed = capsys.readouterr().out
    assert "BLEU" in printed and "chrF" not in printed and "ROUGE" not in printed

    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")
    again = [f"input_file={text}", f"output_file={out}", "overwrite=true", *MAX_NEW]
    generate(cfg_generate(f"ckpt={files}/tiny.ckpt", *again))
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == [{"input": p, "output": expected[p]} for p in PROMPTS]
    assert "BLEU" not in capsys.readouterr().out


def test_interactive_mode_ends_at_end_of_input(files, expected, cfg_generate):
    stdout = io.StringIO()
    generate(
        cfg_generate(f"ckpt={files}/tiny.ckpt", *MAX_NEW),
        stdin=io.StringIO(PROMPTS[1]),
        stdout=stdout,
    )
    assert stdout.getvalue().splitlines() == [expected[PROMPTS[1]]]


def test_free_text_prompts_are_quoted_for_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in ["How <mask> doing?", "it's a \\ test \\", "a ${x} b", "x=[1, 2], {a: b}"]:
        (arg,) = quote_free_text([f"prompt={text}"])
        value = parser.parse_override(arg).value()
        assert value.replace("\\${", "${") == text
    assert quote_free_text(["prompt='already'", "generate.top_k=5"]) == [
        "prompt='already'",
        "generate.top_k=5",
    ]


def test_learned_position_models_cut_prompts_to_their_table(tokenizer):
    model = tiny_model(tokenizer.vocab_size, positions="learned", max_positions=12)
    config = GenerationConfig(max_new_tokens=4)
    long_prompt = "To be, or not to be, that is the question: whether tis nobler in the mind"
    assert len(tokenizer.encode(long_prompt)) > 12
    generator = TextGenerator(model, tokenizer, config)
    assert generator.max_source_length == 12
    answer = generator([long_prompt, PROMPTS[0]])  # no "beyond max_positions" error
    assert generator.truncated == 1
    explicit = TextGenerator(model, tokenizer, config, max_source_length=12)
    assert answer == explicit([long_prompt, PROMPTS[0]])
    ids, _ = generator.encode([long_prompt])
    assert ids.shape == (1, 12) and ids[0, -1] == tokenizer.eos_id
    # a larger explicit cap cannot exceed the table either
    assert TextGenerator(model, tokenizer, config, max_source_length=40).max_source_length == 12
    # other position schemes have no table to outgrow: no cap unless asked for
    rotary = TextGenerator(tiny_model(tokenizer.vocab_size), tokenizer, config)
    assert rotary.max_source_length is None
    assert rotary.encode([long_prompt])[0].shape[1] > 12 and rotary.truncated == 0


@pytest.mark.slow  # six generation runs and an export
def test_generate_frames_inputs_as_training_did(files, tokenizer, tmp_path, capsys, cfg_generate):
    # a checkpoint trained on 4-token sources: generate.py cuts prompts to 4 tokens unasked,
    # and so does a bundle exported from it; max_source_length= still wins
    model, _ = load_pretrained(files / "tiny.ckpt")
    framed = write_ckpt(tmp_path / "framed.ckpt", model, tokenizer, Framing(4, False))
    export(framed, tmp_path / "bundle")
    assert read_pretrained(tmp_path / "bundle").framing == Framing(4, False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    common = [f"input_file={prompts}", f"output_file={tmp_path / 'out.jsonl'}", "overwrite=true"]
    for ckpt, extra, cut in [
        (framed, [], True),
        (tmp_path / "bundle", [], True),
        (framed, ["max_source_length=64"], False),
        (files / "tiny.ckpt", [], False),  # no framing recorded: no limit
    ]:
        generate(cfg_generate(f"ckpt={ckpt}", *common, *extra, *MAX_NEW))
        note = "2 of 2 prompts were cut to 4 tokens"
        assert (note in capsys.readouterr().err) == cut, (ckpt, extra)


def test_damaged_framing_is_refused(files, tokenizer, tmp_path):
    model, _ = load_pretrained(files / "tiny.ckpt")
    path = write_ckpt(tmp_path / "bad.ckpt", model, tokenizer)
    raw = torch.load(path, weights_only=True)
    raw["s2s"]["framing"] = {"max_source_length": "long"}
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"bad\.ckpt: damaged s2s framing"):
        read_pretrained(path)


@pytest.mark.parametrize(
    "value, message", [("bleu", "metrics='bleu' must be a list"), ("[bleu,bert]", "'bert'")]
)
def test_bad_metrics_are_refused_before_loading(value, message, tmp_path, cfg_generate):
    cfg = cfg_generate(f"ckpt={tmp_path}/never_read.ckpt", "prompt=hello", f"metrics={value}")
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(cfg)
