"""The GPU acceptance run: one command, one table, for the first session with a CUDA device.

Run: python benchmarks/gpu_check.py [--dry-run] [--out DIR]

In order (each row of the table is one check, with its result and seconds):
  1. pytest -m gpu                        tests/test_gpu.py: SDPA vs math on CUDA, bf16, the
                                           kernel twins on CUDA, greedy decoding = the CPU's,
                                           a Lightning bf16 run + resume, train.py under DDP
                                           on one GPU (eager and compiled)
  2. train throughput, nanoT5's shape      T5 v1.1 base, 512 -> 114, bf16 autocast: s2s eager,
                                           s2s + torch.compile and transformers' T5 on the same
                                           weights (benchmarks/train_throughput.py); tokens/s,
                                           s/step for a global batch of 128 through
                                           accumulation, MFU against the data-sheet peak
  3. train throughput, the tiny shape      the same at benchmarks/train_throughput.py's tiny
  4. s2s.prepare                           a synthetic text corpus (seeded random words)
                                           prepared for data=stream
  5. 100 steps of experiment=t5_base_c4    on that corpus, then a resume for 10 more steps
  6. planner vs max_memory_allocated       s2s.plan's predicted per-device memory of the step
                                           against torch.cuda.max_memory_allocated of real steps
  7. generation throughput                 benchmarks/generate_throughput.py (s2s vs
                                           transformers, greedy and beam; that script times
                                           the CPU, with s2s.kernels)

--dry-run runs the same steps on the CPU at tiny sizes (under a minute; tests/test_plan.py
runs it in CI, so this script cannot rot before a GPU appears). Budget on an H100/H200: about
5-10 minutes (an estimate: not yet run on a GPU). What the planner predicts for nanoT5's
whole job: docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
WORDS = 2000  # synthetic vocabulary of the corpus
GLOBAL_BATCH = 128


def run(args: list[str], timeout: int) -> str:
    """Run a command from the repository; its output, or RuntimeError with its tail."""
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError((done.stdout + done.stderr).strip().splitlines()[-1][:300])
    return done.stdout


def check_pytest(dry: bool) -> str:
    """`pytest -m gpu`: every test marked gpu; the dry run collects them (on the CPU they are
    skipped), so a test that no longer imports fails here first."""
    args = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"]
    if dry:
        out = run([*args, "--collect-only"], 300)
        tests = [line for line in out.splitlines() if "::" in line]
        if not tests:
            raise RuntimeError("pytest -m gpu collected no tests")
        return f"{len(tests)} tests collected (dry run: not run)"
    return run(args, 900).strip().splitlines()[-1]


def check_throughput(dry: bool, shape: str) -> str:
    import train_throughput as tt

    tt.SHAPES.setdefault(
        "t5_v1_1_base",  # nanoT5's model and lengths (Nawrot 2023)
        tt.Shape(
            dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12,
                 num_heads=12, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
            src_len=512, tgt_len=114, batch={"cpu": 1, "cuda": 32},
        ),
    )  # fmt: skip
    device = torch.device("cpu" if dry else "cuda")
    name = "tiny" if dry else shape
    args = argparse.Namespace(
        batch_size=2 if dry else None, dtypes=["bfloat16"], warmup=1 if dry else 3,
        steps=1 if dry else 10, dropout=0.0, compile=not dry, matmul_size=256 if dry else 4096,
        padding=0.0,
    )  # fmt: skip
    if dry:  # the tiny shape, smaller still: a CPU step in well under a second
        tt.SHAPES["tiny"] = tt.Shape(
            dict(vocab_size=512, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                 feed_forward_proj="gated-silu", tie_word_embeddings=False),
            src_len=16, tgt_len=16, batch={"cpu": 2, "cuda": 2},
        )  # fmt: skip
    rows = tt.run_shape(name, args, device)
    micro = args.batch_size or tt.SHAPES[name].batch[device.type]
    shape_ = tt.SHAPES[name]
    tokens = micro * (shape_.src_len + shape_.tgt_len)
    peak = _peak_flops(device)
    cells = []
    for _, _, runner, per_second, *_ in rows:
        rate = float(per_second.replace(",", ""))
        step = GLOBAL_BATCH * (shape_.src_len + shape_.tgt_len) / rate
        flops = _train_flops(shape_, micro) * rate / tokens
        mfu = f", MFU {100 * flops / peak:.1f}%" if peak else ""
        cells.append(f"{runner} {rate:,.0f} tok/s, {step:.3g} s/step @128{mfu}")
    return "; ".join(cells)


def _train_flops(shape, micro: int) -> float:
    from transformers import T5Config

    from s2s.interop.hf import config_from_hf
    from s2s.throughput import train_flops

    config = config_from_hf(T5Config(**shape.hf_config))
    return train_flops(config, micro, shape.src_len, shape.tgt_len)


def _peak_flops(device: torch.device) -> float | None:
    from s2s.throughput import gpu_peak_flops

    if device.type != "cuda":
        return None
    return gpu_peak_flops(torch.cuda.get_device_name(device), torch.bfloat16)


def write_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    """JSONL of seeded random "sentences" over a fixed word list (no download needed)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(WORDS)]
    with path.open("w", encoding="utf-8") as out:
        for _ in range(documents):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(200, 800)))
            out.write(json.dumps({"text": text}) + "\n")
    return path


def check_prepare(dry: bool, work: Path) -> str:
    docs = 200 if dry else 4000
    for split, count in (("train", docs), ("val", max(20, docs // 20))):
        corpus = write_corpus(work / f"{split}.jsonl", count, seed=hash(split) % 1000)
        extra = ["--tokenizer", str(work / "train")] if split == "val" else []
        vocab = ["--vocab-size", "600" if dry else "32000"] if split == "train" else []
        run([sys.executable, "-m", "s2s.prepare", str(corpus), "--output", str(work / split),
             "--no-progress", *vocab, *extra], 600)  # fmt: skip
    return f"{docs} train documents -> {work / 'train'}"


def _train_overrides(dry: bool, work: Path) -> list[str]:
    overrides = [
        "experiment=t5_base_c4",
        f"data.train_dir={work / 'train'}",
        f"data.val_dir={work / 'val'}",
        f"paths.output_dir={work / 'run'}",
        f"hydra.run.dir={work / 'hydra'}",
        "trainer.val_check_interval=50",
        "trainer.limit_val_batches=2",
        "logger=csv",
        "callbacks.progress_bar=null",
        "eval.generation_examples=0",
        "data.num_workers=2",
    ]
    if dry:
        overrides += ["model.d_model=32", "model.d_ff=64", "model.n_heads=2", "model.d_head=16",
                      "model.n_encoder_layers=1", "model.n_decoder_layers=1", "trainer=cpu",
                      "data.max_source_length=64", "data.max_target_length=20",
                      "data.batch_size=4", "data.num_workers=0", "trainer.val_check_interval=2",
                      "trainer.limit_val_batches=1"]  # fmt: skip
    return overrides


def check_train_and_resume(dry: bool, work: Path) -> str:
    steps = 4 if dry else 100
    overrides = _train_overrides(dry, work)
    run([sys.executable, "train.py", *overrides, f"trainer.max_steps={steps}"], 1800)
    out = run(
        [sys.executable, "train.py", *overrides, "ckpt_path=last",
         f"trainer.max_steps={steps + (2 if dry else 10)}"],
        1800,
    )  # fmt: skip
    loss = [line for line in out.splitlines() if "loss" in line.lower()][-1:]
    return f"{steps} steps, resumed to {steps + (2 if dry else 10)}; " + " ".join(loss)[:150]


def check_planner_memory(dry: bool) -> str:
    """Predicted per-device memory of a micro-batch vs the measured peak of real steps."""
    from s2s.plan.__main__ import compose_train
    from s2s.plan.devices import device
    from s2s.plan.job import job_from_config
    from s2s.plan.planner import memory_at

    if dry:
        from s2s.plan.measure import measure_step_peak

        rows, s, t = 2, 32, 16
        job = job_from_config(compose_train(["model=tiny", f"data.max_source_length={s}",
                                             f"data.max_target_length={t}"]))  # fmt: skip
        predicted = memory_at(job, device("cpu"), rows).total
        measured = measure_step_peak(job.model, rows, s, t).peak
    else:
        rows = 16
        job = job_from_config(compose_train(["experiment=t5_base_c4"]))
        predicted = memory_at(job, device("h100-80gb"), rows).total
        measured = _cuda_step_peak(job, rows)
    return (
        f"micro-batch {rows}: predicted {predicted / 2**30:.2f} GiB, measured "
        f"{measured / 2**30:.2f} GiB (ratio {predicted / measured:.2f})"
    )


def _cuda_step_peak(job, rows: int) -> int:
    """max_memory_allocated of a bf16-autocast step (second micro-batch of two, adamw_scale)."""
    from s2s import optim
    from s2s.lit_module import Seq2SeqLitModule
    from s2s.model import Seq2SeqTransformer

    model = Seq2SeqTransformer(job.model).cuda().train()
    opt = optim.adamw_scale(model)
    module = argparse.Namespace(model=model, _forward=model, label_smoothing=0.0)
    v = job.model.vocab_size

    def micro_batch() -> None:
        ids = torch.randint(3, v, (rows, job.source_len), device="cuda")
        labels = torch.randint(3, v, (rows, job.target_len), device="cuda")
        batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        with torch.autocast("cuda", torch.bfloat16):
            loss, _ = Seq2SeqLitModule.loss(module, batch)
        loss.backward()

    for _ in range(2):
        micro_batch()
    opt.step()
    opt.zero_grad(set_to_none=True)
    micro_batch()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    micro_batch()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def check_generation(dry: bool) -> str:
    args = ["--d-model", "64", "--layers", "1", "--vocab", "512", "--new-tokens", "8",
            "--repeats", "2", "--clock", "wall"] if dry else []  # fmt: skip
    out = run([sys.executable, "benchmarks/generate_throughput.py", *args], 600)
    rows = [line.split() for line in out.splitlines() if line.startswith(("greedy", "beam"))]
    return "; ".join(f"{r[0]} batch {r[1]}: s2s {r[2]} vs HF {r[3]} tok/s" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps, tiny, on CPU")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: temp)")
    args = parser.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("error: no CUDA device (torch.cuda.is_available() is False); use --dry-run")
    work = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("pytest -m gpu", lambda: check_pytest(dry)),
        ("train tok/s, nanoT5 shape", lambda: check_throughput(dry, "t5_v1_1_base")),
        ("train tok/s, tiny shape", lambda: check_throughput(dry, "tiny")),
        ("s2s.prepare synthetic corpus", lambda: check_prepare(dry, work)),
        ("t5_base_c4 train + resume", lambda: check_train_and_resume(dry, work)),
        ("planner vs peak memory", lambda: check_planner_memory(dry)),
        ("generation vs transformers", lambda: check_generation(dry)),
    ]
    table, failed = [], 0
    for name, check in checks:
        start = time.perf_counter()
        try:
            result, status = check(), "ok"
        except Exception as err:  # a failed check is a row of the table, not the end of it
            result, status, failed = f"{type(err).__name__}: {err}", "FAIL", failed + 1
        table.append((name, status, f"{time.perf_counter() - start:.0f}", result))
        print(f"# {name}: {status}", flush=True)
    device = "CPU (dry run)" if dry else torch.cuda.get_device_name()
    print(f"\ngpu_check on {device}, torch {torch.__version__}")
    print("| check | status | s | result |\n|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
