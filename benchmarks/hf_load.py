"""Loading a Hugging Face T5 directory: s2s vs `transformers`, seconds and peak memory.

Run: python benchmarks/hf_load.py [--dir /tmp/s2s-t5-base] [--shape base|small] [--repeats 3]

Makes (once, if --dir does not hold one) a random T5 v1.1 directory of the given shape with
`transformers` (base: d_model 768, 12+12 layers, vocab 32128, 247.6M parameters, ~990 MB of
float32 safetensors; the tokenizer is the tests' small one), then loads it in fresh
processes, one load per process, so each peak is its own:

    s2s           s2s.load_pretrained(DIR): config, tokenizer, weights tensor by tensor into a
                  model built on the meta device (kernels installed, eval mode)
    transformers  AutoModelForSeq2SeqLM.from_pretrained(DIR)

Printed: median seconds of the load call, and the process's peak RSS (ru_maxrss) minus its
RSS before the call (imports excluded), after the load and after one small forward pass (which
touches every weight: transformers keeps its tensors mapped to the file until then), next
to the size of the weights file.

Also stand-ins for downloaded models in the README walk-through:
    python benchmarks/hf_load.py --make-only --shape small --dir /tmp/t5-demo
    python benchmarks/hf_load.py --make-only --kind bart --dir /tmp/bart-demo
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "base": dict(d_model=768, d_kv=64, num_heads=12, d_ff=2048, num_layers=12,
                 num_decoder_layers=12, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128),
    "small": dict(d_model=512, d_kv=64, num_heads=6, d_ff=1024, num_layers=8,
                  num_decoder_layers=8, relative_attention_num_buckets=32,
                  relative_attention_max_distance=128),
}  # fmt: skip

CHILD = """
import json, resource, sys, time
which, path = sys.argv[1], sys.argv[2]
if which == "s2s":
    from s2s import load_pretrained as load
else:
    from transformers import AutoModelForSeq2SeqLM
    load = AutoModelForSeq2SeqLM.from_pretrained
import torch
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
start = time.perf_counter()
model = load(path)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ids = torch.ones(1, 8, dtype=torch.long)
with torch.no_grad():  # touches every weight (transformers' stay mapped to the file till then)
    if which == "s2s":
        model.model(ids, ids)  # load_pretrained gives (model, tokenizer)
    else:
        model(input_ids=ids, decoder_input_ids=ids)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak": peak, "before": before, "forward": after}))
"""


def make(directory: Path, shape: str, kind: str) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.hf_dirs import make_bart_dir, make_t5_dir

    if kind == "bart":  # the tests' small BART (d_model 64, 2+2 layers, 40 positions)
        make_bart_dir(directory)
    else:
        make_t5_dir(directory, "v1.1", vocab_size=32128, **SHAPES[shape])


def measure(which: str, directory: Path) -> dict:
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(directory)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/s2s-t5-base"))
    parser.add_argument("--shape", choices=list(SHAPES), default="base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--make-only", action="store_true", help="only write the directory")
    parser.add_argument("--kind", choices=["t5", "bart"], default="t5", help="with --make-only")
    args = parser.parse_args()
    if not (args.dir / "config.json").is_file():
        make(args.dir, args.shape, args.kind)
    if args.make_only:
        print(f"wrote a random {args.kind} directory to {args.dir}")
        return
    size = (args.dir / "model.safetensors").stat().st_size
    print(f"weights: {args.dir / 'model.safetensors'} {size / 1e6:.0f} MB")
    print(
        "| loader | load s (median) | peak RSS growth after load, MB | / weights |"
        " ... after one forward, MB | / weights |"
    )
    print("|---|---|---|---|---|---|")
    for which in ("s2s", "transformers"):
        runs = [measure(which, args.dir) for _ in range(args.repeats)]
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak"] - r["before"] for r in runs)
        forward = statistics.median(r["forward"] - r["before"] for r in runs)
        print(
            f"| {which} | {seconds:.2f} | {peak / 1e6:.0f} | {peak / size:.2f}x |"
            f" {forward / 1e6:.0f} | {forward / size:.2f}x |"
        )


if __name__ == "__main__":
    main()
