"""The deliberate bugs of the test review (issue 31), each with the test that must catch it.

    python tests/mutants/review.py            # every mutant: copy the repo, apply, run its test
    python tests/mutants/review.py copy_rate  # one mutant by name
    python tests/mutants/review.py --list

Each mutant is applied to a copy of the repository (under the system temp directory), never to
this working tree; its catching test then runs there with the copy's `src` first on the path.
A mutant is "caught" when that test fails. Not part of the pytest run (`docs/testing.md`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file under the repository
    old: str  # occurs exactly once in the file
    new: str
    test: str  # the pytest node that must fail


MUTANTS = [
    Mutant(
        "dropout_seed_per_epoch",
        "src/s2s/resume.py",
        "trainer.fit_loop.total_batch_idx, trainer.global_rank",
        "batch_idx, trainer.global_rank",
        "tests/test_resume.py::test_dropout_masks_differ_between_epochs",
    ),
    Mutant(
        "bart_zero_length_spans_dropped",
        "src/s2s/data/infilling.py",
        "lengths = rng.permutation(lengths)",
        "lengths = rng.permutation(lengths[lengths > 0])",
        "tests/test_noising.py::test_zero_length_spans_insert_a_mask",
    ),
    Mutant(
        "trainer_without_atomic_io",
        "src/s2s/trainer.py",
        "plugins=[AtomicCheckpointIO()],",
        "",
        "tests/test_trainer.py::test_checkpoints_are_written_by_the_atomic_io",
    ),
    Mutant(
        "copy_rate_logs_fill_rate",
        "src/s2s/lit_module.py",
        'self.log("val/copy_rate", scores.copy_rate',
        'self.log("val/copy_rate", scores.fill_rate',
        "tests/test_lit_module.py::test_the_probe_logs_each_rate_under_its_own_key",
    ),
    Mutant(
        "probe_cut_to_4_tokens",
        "src/s2s/evaluation/denoise.py",
        "GenerationConfig(max_new_tokens=longest + EXTRA_TOKENS)",
        "GenerationConfig(max_new_tokens=4)",
        "tests/test_evaluation.py::test_probe_outputs_may_run_past_the_prompt_length",
    ),
    Mutant(
        "warmup_rows_ignore_rank",
        "src/s2s/lit_module.py",
        "batch_idx, self.global_rank)",
        "batch_idx, 0)",
        "tests/test_lit_module.py::test_warmup_rows_differ_between_ranks",
    ),
    Mutant(
        "copy_accuracy_always_one",
        "src/s2s/lit_module.py",
        "return ((logits.argmax(-1) == labels) & real).sum() / real.sum().clamp(min=1)",
        "return torch.tensor(1.0)",
        "tests/test_lit_module.py::test_copy_accuracy_hand_worked",
    ),
    Mutant(
        "precision_dropped",
        "src/s2s/trainer.py",
        'values.pop("peak_tflops", None)',
        'values.pop("peak_tflops", None)\n    values.pop("precision", None)',
        "tests/test_trainer.py::test_bf16_mixed_reaches_the_forward_pass",
    ),
    Mutant(
        "max_time_dropped",
        "src/s2s/trainer.py",
        'values.pop("peak_tflops", None)',
        'values.pop("peak_tflops", None)\n    values.pop("max_time", None)',
        "tests/test_train.py::test_max_time_stops_a_run",
    ),
    Mutant(
        "tokens_from_source_only",
        "src/s2s/lit_module.py",
        'real = batch["attention_mask"].sum() + (batch["labels"] != IGNORE_INDEX).sum()',
        'real = batch["attention_mask"].sum()',
        "tests/test_lit_module.py::test_tokens_are_counted_from_source_and_target",
    ),
]

IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"
)


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: {mutant.old!r} is not in {mutant.path} exactly once")
    path.write_text(text.replace(mutant.old, mutant.new))


def run(mutant: Mutant | None, test: str) -> int:
    """pytest's exit code for `test` in a copy of the repository with `mutant` applied."""
    with tempfile.TemporaryDirectory(prefix="s2s-mutant-") as tmp:
        root = Path(tmp) / "repo"
        shutil.copytree(REPO, root, ignore=IGNORE)
        if mutant is not None:
            apply(mutant, root)
        env = os.environ | {"PYTHONPATH": str(root / "src")}
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", test]
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True).returncode


def main(argv: list[str]) -> int:
    if argv == ["--list"]:
        for m in MUTANTS:
            print(f"{m.name:32} {m.path:32} {m.test}")
        return 0
    chosen = [m for m in MUTANTS if not argv or m.name in argv]
    survivors = 0
    for mutant in chosen:
        clean, mutated = run(None, mutant.test), run(mutant, mutant.test)
        verdict = "caught" if clean == 0 and mutated == 1 else "NOT CAUGHT"
        survivors += verdict != "caught"
        print(f"{mutant.name:32} clean rc={clean} mutated rc={mutated} {verdict}: {mutant.test}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
