"""The run report: what a finished run printed last, and `report.md` in its run directory.

config diff from the defaults (conf/train.yaml composed without overrides)
wall time, steps, tokens seen, throughput and MFU (s2s.throughput)
best and final validation metrics (ValidationHistory), where checkpoints and logs went
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from s2s.files import atomic_write
from s2s.paths import project_root

REPORT_FILE = "report.md"
LOWER_IS_BETTER = ("val/loss", "val/ppl")  # every other val/* metric: higher is better
MAX_DIFF_ROWS = 80


class ValidationHistory(L.Callback):
    """The val/* metrics of every validation after the sanity check, by step."""

    def __init__(self) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("val/") and value.numel() == 1
        }
        if values:
            self.history.append((trainer.global_step, values))

    def best_and_final(self) -> dict[str, tuple[float, int, float]]:
        """metric -> (best value, its step, final value)."""
        out: dict[str, tuple[float, int, float]] = {}
        for key in sorted({k for _, values in self.history for k in values}):
            seen = [(values[key], step) for step, values in self.history if key in values]
            pick = min if key in LOWER_IS_BETTER else max
            best, step = pick(seen, key=lambda pair: pair[0])
            out[key] = (best, step, seen[-1][0])
        return out


def config_diff(cfg: DictConfig) -> list[tuple[str, Any, Any]] | None:
    """(key, default, this run) for every leaf of `cfg` that differs from conf/train.yaml
    composed without overrides (values unresolved, as written); None where the defaults
    cannot be composed (no conf/ directory)."""
    conf = Path(project_root()) / "conf"
    if not (conf / "train.yaml").is_file():
        return None
    if GlobalHydra.instance().is_initialized():  # inside `python train.py`
        defaults = compose(config_name="train")
    else:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            defaults = compose(config_name="train")
    ours, theirs = _leaves(_container(cfg)), _leaves(_container(defaults))
    absent = "(absent)"
    return [
        (key, theirs.get(key, absent), ours.get(key, absent))
        for key in sorted(set(ours) | set(theirs))
        if not key.startswith("hydra.") and ours.get(key, absent) != theirs.get(key, absent)
    ]


def run_facts(
    result: dict[str, Any], trainer: L.Trainer, module: Any, wall_seconds: float
) -> dict[str, Any]:
    """What the report says about a finished run: `result` (train()'s) plus the trainer's
    step, tokens (all devices), throughput, log locations and validation history."""
    speed = module.throughput
    throughput: dict[str, Any] = {
        "seconds": speed.seconds,
        "tokens_per_sec": speed.tokens_per_sec,
        "tflops": speed.flops_per_sec / 1e12,
    }
    if module.peak_source:
        throughput["mfu"] = speed.flops_per_sec / module.peak_flops
        throughput["peak"] = f"{module.peak_flops / 1e12:.3g} TFLOP/s ({module.peak_source})"
    history = next((c for c in trainer.callbacks if isinstance(c, ValidationHistory)), None)
    return {
        **result,
        "wall_seconds": wall_seconds,
        "steps": trainer.global_step,
        "tokens": module.tokens_seen,
        "throughput": throughput,
        "logs": log_locations(trainer.loggers, Path(result["output_dir"])),
        "validation": history.best_and_final() if history else {},
    }


def log_locations(loggers: list[Any], output_dir: Path) -> list[tuple[str, str]]:
    """(name, where) of the run's logs: TensorBoard (as the command that opens it), CSV, and
    the log file `python train.py` writes."""
    out = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            out.append(("tensorboard", f"tensorboard --logdir {output_dir}"))
        elif isinstance(logger, CSVLogger):
            out.append(("csv", str(Path(logger.log_dir) / "metrics.csv")))
    if (output_dir / "train.log").is_file():
        out.append(("log", str(output_dir / "train.log")))
    return out


def write_report(output_dir: Path, text: str) -> Path:
    path = output_dir / REPORT_FILE
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def render(run: dict[str, Any], diff: list[tuple[str, Any, Any]] | None) -> str:
    """report.md from the run's facts (`run_facts`) and its config diff."""
    lines = ["# Run report", "", *[f"- {line}" for line in summary_lines(run)], ""]
    lines += ["## Config diff from the defaults", ""]
    if diff is None:
        lines.append("(conf/ not found: no defaults to compare with)")
    elif not diff:
        lines.append("(none: the default config)")
    else:
        lines += ["| key | default | this run |", "|---|---|---|"]
        lines += [f"| `{k}` | {_cell(a)} | {_cell(b)} |" for k, a, b in diff[:MAX_DIFF_ROWS]]
        if len(diff) > MAX_DIFF_ROWS:
            lines.append(f"\n({len(diff) - MAX_DIFF_ROWS} more: see config.yaml)")
    lines += ["", "## Validation", ""]
    if run["validation"]:
        lines += ["| metric | best | at step | final |", "|---|---|---|---|"]
        for key, (best, step, final) in run["validation"].items():
            lines.append(f"| {key} | {best:.4g} | {step} | {final:.4g} |")
    else:
        lines.append("(no validation ran)")
    return "\n".join(lines) + "\n"


def summary_lines(run: dict[str, Any]) -> list[str]:
    """The end-of-run summary, one fact a line (printed, and the head of report.md)."""
    lines = [f"run directory:   {run['output_dir']}"]
    wall = run["wall_seconds"]
    speed = run["throughput"]
    lines.append(
        f"wall time:       {_duration(wall)} (training batches {_duration(speed['seconds'])})"
    )
    lines.append(f"steps:           {run['steps']} (optimiser steps)")
    lines.append(f"tokens seen:     {run['tokens']:,} (source + target, no padding, all devices)")
    if speed["seconds"]:
        line = f"throughput:      {speed['tokens_per_sec']:,.0f} tokens/s"
        line += f", {speed['tflops']:.3g} TFLOP/s per device"
        if "mfu" in speed:
            line += f", MFU {100 * speed['mfu']:.1f}% of {speed['peak']}"
        lines.append(line)
    for key in ("last_checkpoint", "best_checkpoint"):
        if key in run:
            lines.append(f"{key.replace('_', ' '):16} {run[key]}")
    lines += [f"{name + ':':16} {where}" for name, where in run["logs"]]
    final = {k: v for k, v in run["metrics"].items() if k.startswith("val/") or k == "train/loss"}
    if final:
        lines.append("final metrics:   " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))
    return lines


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _container(cfg: DictConfig) -> dict[str, Any]:
    values = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(values, dict)
    return values


def _leaves(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of a nested mapping (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


def _cell(value: Any) -> str:
    """A config value as YAML writes it (null, true, ''), in a Markdown table cell."""
    if isinstance(value, str):
        text = value or "''"
    else:
        text = json.dumps(value)  # null, true, 3, [1, 2], {"hours": 1}
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"
