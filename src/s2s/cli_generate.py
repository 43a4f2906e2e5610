"""The I/O of `python generate.py` (`s2s.pipeline.generate`): prompts from the command line,
a file or a terminal; checks of its settings; JSON Lines out, with metrics when the prompts
have targets. An existing output_file is replaced only with overwrite=true, and never when it
is the input_file.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from omegaconf import DictConfig

from s2s.files import atomic_write
from s2s.generation.text import TextGenerator
from s2s.metrics import METRICS, corpus_scores, format_scores

QUIT = ":q"
FREE_TEXT_KEYS = ("prompt",)


@dataclass(frozen=True)
class Prompts:
    """Prompts read from an input file, with targets when the file has them."""

    inputs: list[str]
    targets: list[str] | None


def quote_free_text(argv: Sequence[str]) -> list[str]:
    """Command-line arguments with `prompt=...` values wrapped in Hydra quotes.

    Hydra's override grammar rejects unquoted `<`, `>` and more, so `prompt="How <mask>
    doing?"` would fail to parse; quoting it here lets users type prompts as plain text.
    Inside the quotes, quotes and backslashes before them are escaped, and `${` is escaped so
    that OmegaConf does not read it as an interpolation. Already quoted values are left as is.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        already_quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        if key in FREE_TEXT_KEYS and sep and value and not already_quoted:
            value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
            value = value.replace("'", "\\'").replace("${", "\\${")
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def check_device(device: str) -> None:
    """A CUDA device must exist before the model is loaded onto it."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"device={device} but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False): use device=cpu"
        )


def check_attention_plot(path: Path, cfg: DictConfig) -> None:
    """attention_plot= draws the one prompt= into an image file matplotlib can write."""
    from s2s.evaluation.attention_maps import PLOT_FORMATS, require_matplotlib

    if cfg.prompt is None:
        raise ValueError("attention_plot= draws one prompt: give prompt=... too")
    if path.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ValueError(f"attention_plot={path}: name an image file ({', '.join(PLOT_FORMATS)})")
    if path.exists() and not cfg.overwrite:
        raise ValueError(f"attention_plot={path} exists; overwrite=true replaces it")
    require_matplotlib()


def draw_attention(model, tokenizer, source, output, path: Path) -> None:
    """The last decoder layer's cross-attention (mean of heads) while it wrote `output`."""
    from s2s.evaluation.attention_maps import attention_figure, save_plot

    save_plot(attention_figure(model, tokenizer, source, output), path)
    print(f"cross-attention picture: {path}", file=sys.stderr)


def check_output_file(input_file: Path, output_file: Path, overwrite: bool) -> None:
    """Never write over the input; replace an existing output only when asked to."""
    if output_file.exists() and output_file.resolve() == input_file.resolve():
        raise ValueError(f"output_file={output_file} is the input_file: write somewhere else")
    if output_file.exists() and not overwrite:
        raise ValueError(
            f"output_file={output_file} exists: choose another name or add overwrite=true"
        )


def read_prompts(path: Path) -> Prompts:
    """A dataset file in either record format, or plain text with one prompt a line."""
    from s2s.data.records import RecordError, decode_utf8, read_bytes, read_records

    text = decode_utf8(path, read_bytes(path))
    if text.lstrip()[:1] in ("[", "{"):
        records = read_records(path)
        return Prompts(list(records.inputs), records.targets)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise RecordError(path, "no prompts: the file is empty")
    return Prompts(lines, None)


def generate_file(
    generator: TextGenerator,
    prompts: Prompts,
    output: Path,
    batch_size: int,
    stdout: TextIO,
    metrics: Sequence[str] = METRICS,
) -> None:
    """Generate for every prompt (progress bar on stderr), write JSON Lines, print metrics."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("generating", total=len(prompts.inputs))
        outputs = generator.run_batches(
            prompts.inputs, batch_size, lambda n: progress.advance(task, n)
        )
    write_jsonl(output, prompts, outputs)
    print(f"wrote {len(outputs)} outputs to {output}", file=stdout)
    if generator.truncated:
        print(
            f"note: {generator.truncated} of {len(outputs)} prompts were cut to "
            f"{generator.max_source_length} tokens (set max_source_length= to change that)",
            file=sys.stderr,
        )
    if prompts.targets is not None:
        print(format_metrics(outputs, prompts.targets, metrics), file=stdout)


def write_jsonl(path: Path, prompts: Prompts, outputs: Sequence[str]) -> None:
    with atomic_write(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for i, (source, output) in enumerate(zip(prompts.inputs, outputs, strict=True)):
            row = {"input": source, "output": output}
            if prompts.targets is not None:
                row["target"] = prompts.targets[i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def format_metrics(
    outputs: Sequence[str], targets: Sequence[str], metrics: Sequence[str] = METRICS
) -> str:
    """The `metrics` (s2s.metrics: BLEU, chrF, ROUGE) and the percentage of outputs equal to
    their target (surrounding whitespace ignored)."""
    exact = sum(o.strip() == t.strip() for o, t in zip(outputs, targets, strict=True))
    scores = format_scores(corpus_scores(outputs, targets, metrics))
    share = f"{100 * exact / len(targets):.1f}% ({exact}/{len(targets)})"
    return f"{scores}  exact match {share}".strip()


def interactive(generator: TextGenerator, stdin: TextIO, stdout: TextIO) -> None:
    """Read a prompt a line, print the answer; `:q` or end of input (Ctrl-D) quits.

    On a terminal a `> ` prompt and a hint are shown; through a pipe only answers are
    printed, one line each, so the output can be read by another program.
    """
    tty = stdin.isatty()
    if tty:
        print(f"Type text (<mask> marks a blank). {QUIT} or Ctrl-D quits.", file=sys.stderr)
    while True:
        line = _read_line(stdin, tty)
        if line is None or line.strip() == QUIT:
            return
        if not line.strip():
            continue
        print(generator([line.strip()])[0], file=stdout, flush=True)


def _read_line(stdin: TextIO, tty: bool) -> str | None:
    """The next line without its newline, or None at end of input."""
    if tty and stdin is sys.stdin:
        try:
            return input("> ")  # line editing and history on a terminal
        except EOFError:
            print(file=sys.stderr)
            return None
    line = stdin.readline()
    return None if line == "" else line.rstrip("\n")
