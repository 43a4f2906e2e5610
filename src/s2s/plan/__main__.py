"""`python -m s2s.plan [overrides] [--device NAME] [--memory SIZE] [--mfu X|report.md] [--json]`:
the plan of the run `python train.py [overrides]` would start (see s2s.plan)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig

from s2s.cli import run_cli
from s2s.paths import project_root
from s2s.plan.devices import DEVICE_NAMES, device
from s2s.plan.job import job_from_config
from s2s.plan.planner import make_plan, memory_at
from s2s.plan.render import render

DEFAULT_MFU = 0.4
DEFAULT_GPU = "h100-80gb"  # trainer.accelerator=gpu without --device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m s2s.plan",
        description="Memory, time and the largest micro-batch of a training run, before it runs.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--device", help=f"one of {', '.join(DEVICE_NAMES)}")
    parser.add_argument("--memory", help="the device's memory instead, e.g. 80GB or 40GiB")
    parser.add_argument("--mfu", default=str(DEFAULT_MFU), help="0.4, or a run's report.md")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_intermixed_args(argv)


def compose_train(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with `overrides`, composed as train.py composes it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(Path(project_root()) / "conf"), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    except HydraException as err:
        raise ValueError(str(err)) from None
    finally:
        GlobalHydra.instance().clear()


def mfu_of(text: str) -> float:
    """--mfu: a number, or the MFU an s2s report.md records ("MFU 38.2% of ...")."""
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"--mfu {text!r} is neither a number nor a report file")
    match = re.search(r"MFU ([0-9.]+)%", path.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f"--mfu {text}: the report records no MFU")
    return float(match.group(1)) / 100


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_cli(plan_command, args)


def plan_command(args: argparse.Namespace) -> None:
    cfg = compose_train(args.overrides)
    job = job_from_config(cfg)
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    name = args.device or ("cpu" if accelerator == "cpu" else DEFAULT_GPU)
    plan = make_plan(job, device(name, args.memory), mfu_of(args.mfu))
    if plan.max_micro_batch == 0:
        needed = memory_at(job, plan.device, 1).total
        raise ValueError(
            f"does not fit: even micro-batch 1 needs {needed / 2**30:.1f} GiB per device "
            f"on a {plan.device.name} "
            f"({plan.device.usable_memory / 2**30:.1f} GiB usable); try trainer=fsdp, "
            "activation_checkpointing=true or a larger device"
        )
    print(json.dumps(plan.as_dict(), indent=2) if args.json else render(plan))


if __name__ == "__main__":
    main()
