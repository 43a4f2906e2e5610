"""Decoding throughput of s2s `generate` vs Hugging Face `transformers` on the same weights.

Run: python benchmarks/generate_throughput.py [--d-model 256] [--layers 4] [--vocab 8192]
                                             [--new-tokens 64] [--repeats 5] [--threads 1]
                                             [--clock cpu|wall] [--dtype float32|bfloat16]
                                             [--layouts session|per-call]

A random HF T5 (v1.1 layout: gated-GELU, untied head, T5 relative positions; the vocabulary
of s2s's default tokenizer, 8192, where T5's own has 32128) is built from a config and
converted with `s2s.interop.hf.from_hf`, so both implementations compute the same function.
Each decodes exactly --new-tokens tokens per input (min_new_tokens = max_new_tokens forbids an
early EOS on both sides) for prompts of --src-len tokens, with greedy search and 4-beam
search, at batch 1 and 8. Tokens/s counts generated output tokens (batch * new tokens; beams
are not counted).
Reported: median time over --repeats runs after two warm-up runs, at a fixed thread count.

s2s runs with `s2s.kernels` installed (S2S_KERNELS=0: the plain model) and decodes inside
`kernels.decoding_session(model)`, as generate.py does: the decoder's weights are laid out for
few-row products once, not at every `generate` call (`s2s.kernels.linear`); --layouts
per-call measures bare `generate` calls, each making and dropping its layouts.

--dtype bfloat16 casts both models' weights to bfloat16 (decoding on CPUs with AVX-512 BF16 or
AMX); float32 is the default.

The clock: `cpu` (default) is this process's CPU time, which on a machine shared with other
jobs excludes the time the OS gives to them (with one thread, CPU time equals wall time on
an idle machine); `wall` is elapsed time. One thread by default: on a loaded machine, extra
OpenMP threads spin waiting for each other and tiny per-token kernels slow down tenfold.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import transformers
from transformers import T5Config, T5ForConditionalGeneration

from s2s import kernels
from s2s.generation import GenerationConfig, generate
from s2s.interop.hf import from_hf


def build(d_model: int, layers: int, vocab: int) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=64,
        num_heads=d_model // 64,
        d_ff=2 * d_model,  # as T5 v1.1 small (512 -> 1024, gated)
        num_layers=layers,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def median_seconds(
    runs: dict[str, Callable[[], torch.Tensor]],
    repeats: int,
    expect: tuple[int, int],
    clock: Callable[[], float],
) -> dict[str, float]:
    """Median time of each run. Runs alternate within every repeat, so a change in the load of
    a shared machine hits both implementations alike; two warm-up rounds come first."""
    for _ in range(2):
        for name, fn in runs.items():
            out = fn()  # also checks that both sides generate the same amount
            assert tuple(out.shape) == expect, (name, tuple(out.shape), expect)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--layouts", choices=("session", "per-call"), default="session")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    hf = build(args.d_model, args.layers, args.vocab)
    ours = kernels.install(from_hf(hf).eval())
    dtype = getattr(torch, args.dtype)
    hf, ours = hf.to(dtype), ours.to(dtype)
    n = args.new_tokens
    print(
        f"T5 v1.1-style d_model={args.d_model} layers={args.layers}+{args.layers} "
        f"vocab={args.vocab}; {args.src_len} source tokens, {n} new tokens; "
        f"{args.threads} threads; {args.dtype}; s2s kernels {kernels.enabled()}, layouts "
        f"{args.layouts}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}; "
        f"median of {args.repeats}, {args.clock} clock"
    )
    session = kernels.decoding_session(ours)
    if args.layouts != "session":
        session = contextlib.nullcontext()
    with session:
        table(ours, hf, args, clock)


def table(ours, hf, args: argparse.Namespace, clock: Callable[[], float]) -> None:
    n = args.new_tokens
    print(f"{'strategy':<9}{'batch':>6}{'s2s tok/s':>12}{'HF tok/s':>12}{'s2s/HF':>9}")
    for strategy, beams in (("greedy", 1), ("beam-4", 4)):
        for batch in (1, 8):
            gen = torch.Generator().manual_seed(batch)
            ids = torch.randint(2, args.vocab, (batch, args.src_len), generator=gen)
            mask = torch.ones_like(ids)
            config = GenerationConfig(
                strategy="beam" if beams > 1 else "greedy",
                num_beams=beams,
                max_new_tokens=n,
                min_new_tokens=n,
            )

            def run_s2s(ids=ids, mask=mask, config=config) -> torch.Tensor:
                return generate(ours, ids, mask, config=config)

            def run_hf(ids=ids, mask=mask, beams=beams) -> torch.Tensor:
                with torch.no_grad():
                    out = hf.generate(
                        input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, num_beams=beams, length_penalty=1.0,
                        early_stopping=False, num_return_sequences=1,
                    )  # fmt: skip
                return out[:, 1:]  # drop the decoder start token

            seconds = median_seconds(
                {"s2s": run_s2s, "hf": run_hf}, args.repeats, (batch, n), clock
            )
            ours_tps, hf_tps = batch * n / seconds["s2s"], batch * n / seconds["hf"]
            print(
                f"{strategy:<9}{batch:>6}{ours_tps:>12.1f}{hf_tps:>12.1f}{ours_tps / hf_tps:>8.2f}x"
            )


if __name__ == "__main__":
    main()
