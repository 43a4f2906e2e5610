"""Run directories and resume checkpoints: nothing is overwritten or loaded by accident.

A run directory holds what `train()` writes (RUN_FILES: config.yaml, model_config.json,
tokenizer.json, checkpoints/, csv/, tensorboard/) beside Hydra's `.hydra/`. A new run into a
directory that already holds one is refused unless

    it resumes that run     ckpt_path=last, or ckpt_path is a checkpoint inside the directory
    overwrite=true          the earlier run's files are deleted first (`replace_earlier_run`)

The check runs as a Hydra callback (`RunDirGuard`, conf/hydra/default.yaml) before Hydra
writes `.hydra/` into the directory, and again in `train()` for callers that pass
`paths.output_dir` themselves; both first take the directory's lock (s2s.run_lock), so that a
second process started into it at the same time is refused too. Only the process of global
rank 0 checks: the other DDP ranks start later, into the directory rank 0 has already claimed.

`ckpt_path` is resolved here: `last` means this run directory's checkpoints/last.ckpt, URLs and
bundle directories are refused with a line that says what to do instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from s2s import run_lock
from s2s.checkpoint import CheckpointError, refuse_url
from s2s.cli import run_cli

RUN_FILES = ("config.yaml", "model_config.json", "tokenizer.json", "checkpoints", "csv")
RUN_FILES += ("tensorboard",)
LAST = "last"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def check_run_dir(output_dir: Path, *, overwrite: bool, ckpt_path: str | None) -> None:
    """Refuse to start a new run in `output_dir` when it holds an earlier run (module doc)."""
    if overwrite or not _global_rank_zero():
        return
    used = [name for name in RUN_FILES if (output_dir / name).exists()]
    if not used or (ckpt_path is not None and _resumes(ckpt_path, output_dir)):
        return
    raise ValueError(
        f"{output_dir}: holds an earlier run ({', '.join(used)}): give a new hydra.run.dir, "
        "resume that run with ckpt_path=last, or add overwrite=true to replace its files"
    )


def lock_run_dir(output_dir: Path) -> None:
    """Hold `output_dir` for this run (s2s.run_lock), or refuse in one line if another process
    holds it; on global rank 0 only."""
    if _global_rank_zero():
        run_lock.hold(output_dir)


def unlock_run_dir(output_dir: Path) -> None:
    if _global_rank_zero():
        run_lock.release(output_dir)


def replace_earlier_run(output_dir: Path, *, ckpt_path: str | None) -> list[Path]:
    """With overwrite=true: delete the earlier run's files (RUN_FILES) before this run writes
    its own, so that no stale checkpoint (Lightning would save beside it as last-v1.ckpt),
    event file or metrics.csv mixes with the new run's. A run that resumes from a checkpoint
    in the directory keeps everything. Returns what was removed."""
    if not _global_rank_zero() or (ckpt_path is not None and _resumes(ckpt_path, output_dir)):
        return []
    removed = []
    for name in RUN_FILES:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """The local checkpoint file `ckpt_path` names (`last`: this run's last.ckpt), or None."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == LAST:
        last = output_dir / LAST_CHECKPOINT
        if not last.is_file():
            raise CheckpointError(
                f"ckpt_path=last: no checkpoint at {last}; `last` resumes the run whose "
                "directory is given with hydra.run.dir=DIR (this one is new), or give the "
                "checkpoint's path"
            )
        return last
    refuse_url(ckpt_path, "ckpt_path")
    path = Path(str(ckpt_path))
    if path.is_dir():
        raise CheckpointError(
            f"ckpt_path={path}: is a directory (a bundle?); resuming needs the training "
            "checkpoint .ckpt (it holds the optimizer state); to start from a bundle's "
            f"weights use init_from={path}"
        )
    return path


class RunDirGuard(Callback):
    """Hydra callback: `check_run_dir` before Hydra writes anything into the run directory."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        for directory in _planned_dirs(config):
            run_cli(lock_run_dir, directory)  # held until the process ends
            run_cli(_check_config, directory, config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        jobs = [p for p in sweep.iterdir() if p.is_dir()] if sweep.is_dir() else []
        for directory in jobs:
            run_cli(_check_config, directory, config)


def _check_config(directory: Path, config: DictConfig) -> None:
    ckpt_path = config.get("ckpt_path")
    overwrite = bool(config.get("overwrite", False))
    check_run_dir(directory, overwrite=overwrite, ckpt_path=ckpt_path)


def _planned_dirs(config: DictConfig) -> list[Path]:
    """hydra.run.dir, and paths.output_dir when it is set to somewhere else."""
    dirs = [Path(str(config.hydra.run.dir))]
    try:
        output_dir = config.paths.output_dir  # ${hydra:runtime.output_dir} is not set yet
    except Exception:  # an unresolvable interpolation: it means hydra.run.dir
        return dirs
    if output_dir and Path(str(output_dir)) != dirs[0]:
        dirs.append(Path(str(output_dir)))
    return dirs


def _resumes(ckpt_path: str, output_dir: Path) -> bool:
    if str(ckpt_path) == LAST:
        return True
    try:
        Path(str(ckpt_path)).resolve().relative_to(output_dir.resolve())
    except ValueError:
        return False
    return True


def _global_rank_zero() -> bool:
    """False in a process that a launcher started as a non-zero rank (DDP, SLURM)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) > 0:
            return False
    return True
