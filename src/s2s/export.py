"""Export a trained model: `python -m s2s.export CKPT DIR [--format bundle|hf]`.

    bundle (default)  DIR/config.json, model.safetensors, tokenizer.json (see s2s.bundle)
    hf                a `transformers` T5ForConditionalGeneration directory (T5-style
                      configs only): save_pretrained files plus tokenizer.json and a
                      tokenizer_config.json naming its special tokens

CKPT is an s2s `.ckpt` or a bundle directory. Problems print one `error: ...` line and exit 1
(the entry points' shared error boundary, `s2s.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from s2s.bundle import TOKENIZER_FILE, build_pretrained, publish, read_pretrained, save_bundle
from s2s.cli import cli_status
from s2s.model.transformer import Seq2SeqTransformer
from s2s.tokenizer import EOS, MASK, PAD, Tokenizer

FORMATS = ("bundle", "hf")


def export_hf(
    model: Seq2SeqTransformer, tokenizer: Tokenizer, directory: str | os.PathLike
) -> Path:
    """Write a `transformers`-loadable T5 directory; ValueError if T5 cannot express the config."""
    from s2s.interop.hf import to_hf  # imports transformers: only when asked for

    hf_model = to_hf(model).eval()

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(tmp)
        tokenizer.save(tmp / TOKENIZER_FILE)
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(_tokenizer_config(tokenizer), indent=2) + "\n", encoding="utf-8"
        )

    return publish(directory, write)


def _tokenizer_config(tokenizer: Tokenizer) -> dict:
    """What `AutoTokenizer` needs to wrap tokenizer.json with the right special tokens."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": PAD, "eos_token": EOS}
    if tokenizer.mask_id is not None:
        config["mask_token"] = MASK
    return config


def export(source: str | os.PathLike, directory: str | os.PathLike, fmt: str = "bundle") -> Path:
    """Load `source` (.ckpt or bundle) and write it to `directory` in format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} must be one of {', '.join(FORMATS)}")
    loaded = read_pretrained(source)
    model, tokenizer = build_pretrained(loaded)
    if fmt == "hf":
        return export_hf(model, tokenizer, directory)
    return save_bundle(model, tokenizer, directory, loaded.framing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s2s.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("ckpt", help="an s2s .ckpt file or a bundle directory")
    parser.add_argument("directory", help="where to write the export")
    parser.add_argument("--format", choices=FORMATS, default="bundle", dest="fmt")
    args = parser.parse_args(argv)
    return cli_status(_export_and_report, args.ckpt, args.directory, args.fmt)


def _export_and_report(source: str, directory: str, fmt: str) -> None:
    out = export(source, directory, fmt)
    print(f"wrote {fmt} export to {out}")


if __name__ == "__main__":
    sys.exit(main())
