"""Export a trained model: `python -m s2s.export CKPT DIR [--format bundle|hf]`.

    bundle (default)  DIR/config.json, model.safetensors, tokenizer.json (see s2s.bundle)
    hf                a Hugging Face directory that `transformers` loads with
                      AutoModelForSeq2SeqLM / AutoTokenizer: T5ForConditionalGeneration for
                      T5-style configs, BartForConditionalGeneration for BART-style ones
                      (config.json, generation_config.json, model.safetensors,
                      tokenizer.json with the model's framing, tokenizer_config.json)

CKPT is an s2s `.ckpt`, a bundle directory or a Hugging Face directory. Writing needs no
`transformers`. Problems print one `error: ...` line and exit 1 (the entry points' shared
error boundary, `s2s.cli`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from s2s.bundle import build_pretrained, publish, read_pretrained, save_bundle
from s2s.checkpoint import Framing
from s2s.cli import cli_status
from s2s.interop.hf_dir import write_hf_files
from s2s.model.transformer import Seq2SeqTransformer
from s2s.tokenizer import Tokenizer

FORMATS = ("bundle", "hf")


def export_hf(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    directory: str | os.PathLike,
    framing: Framing | None = None,
) -> Path:
    """Write a `transformers`-loadable T5 or BART directory; HFConfigError (a ValueError)
    listing what neither can express."""
    framing = framing or Framing()
    return publish(directory, lambda tmp: write_hf_files(tmp, model, tokenizer, framing))


def export(source: str | os.PathLike, directory: str | os.PathLike, fmt: str = "bundle") -> Path:
    """Load `source` (.ckpt or bundle) and write it to `directory` in format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} must be one of {', '.join(FORMATS)}")
    loaded = read_pretrained(source)
    model, tokenizer = build_pretrained(loaded)
    if fmt == "hf":
        return export_hf(model, tokenizer, directory, loaded.framing)
    return save_bundle(model, tokenizer, directory, loaded.framing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s2s.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "ckpt", help="an s2s .ckpt, a bundle directory or a Hugging Face model directory"
    )
    parser.add_argument("directory", help="where to write the export")
    parser.add_argument("--format", choices=FORMATS, default="bundle", dest="fmt")
    args = parser.parse_args(argv)
    return cli_status(_export_and_report, args.ckpt, args.directory, args.fmt)


def _export_and_report(source: str, directory: str, fmt: str) -> None:
    out = export(source, directory, fmt)
    print(f"wrote {fmt} export to {out}")


if __name__ == "__main__":
    sys.exit(main())
