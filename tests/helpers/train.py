"""Training helpers: tiny-model overrides, composing `conf/train.yaml` and `conf/generate.yaml`,
recording batches."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = [
    "model.d_model=32",
    "model.d_ff=64",
    "model.n_heads=2",
    "model.n_encoder_layers=1",
    "model.n_decoder_layers=1",
    "model.dropout=0.1",
]


def overrides_for(tiny_data, tmp_path: Path, kind: str = "text") -> list[str]:
    return [
        *TINY_MODEL,
        f"data.train_path={tiny_data[kind + '_train']}",
        f"data.val_path={tiny_data[kind + '_val']}",
        "data.test_path=null",
        "data.max_source_length=48",
        "data.max_target_length=48",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.tokenizer.vocab_size=600",
        "data.tokenizer.num_sentinels=16",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'run'}",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "copy_warmup.steps=0",  # the data path itself; test_synthetic.py covers the warm-up
        "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1",
        "scheduler.warmup_steps=2",
        "eval.generation_examples=4",
        "eval.max_new_tokens=8",
        "callbacks.progress_bar=null",
        "logger=csv",
    ]


# Keys whose values are per-test paths: set after composing, so that tests differing only in
# their tmp_path share one composition (Hydra's compose takes ~0.3 s; the quick loop composes
# about a hundred times).
PATH_KEYS = ("data.train_path", "data.val_path", "data.cache_dir", "paths.output_dir")


def compose_train(overrides: list[str]) -> DictConfig:
    """`conf/train.yaml` composed with `overrides` (a fresh copy: tests may change it)."""
    last, fixed = {}, []  # the last value of each path key wins, as in Hydra
    for override in overrides:
        key, _, value = override.partition("=")
        if key in PATH_KEYS:
            last[key] = value
        else:
            fixed.append(override)
    fixed += [f"{key}={value}" for key, value in last.items() if value in ("", "null")]
    cfg = copy.deepcopy(_compose("train", "1.3", tuple(fixed)))
    for key, value in last.items():  # plain strings, as Hydra's override parser reads a path
        if value not in ("", "null"):
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def compose_generate(*overrides: str) -> DictConfig:
    return copy.deepcopy(_compose("generate", None, overrides))


@functools.cache
def _compose(name: str, version_base: str | None, overrides: tuple[str, ...]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=version_base):
        return compose(config_name=name, overrides=list(overrides))


def record(path: Path) -> list[str]:
    return [
        "+callbacks.record._target_=helpers.recording.RecordBatches",
        f"+callbacks.record.path={path}",
    ]


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}
    if "-m" not in args:  # keep Hydra's own run directory out of the repository
        args = [*args, f"hydra.run.dir={cwd / 'hydra'}"]
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_ddp_records(overrides: list[str], tmp_path: Path, steps: int = 3) -> list[list[dict]]:
    """`train.py` as 2 CPU processes (trainer=ddp_cpu) for `steps` steps, recording batches;
    the records of rank 0 and rank 1."""
    from helpers.recording import read_records

    path = tmp_path / "ddp.json"
    args = [
        *overrides,
        *record(path),
        "trainer=ddp_cpu",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
    ]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return [read_records(path, rank) for rank in (0, 1)]
