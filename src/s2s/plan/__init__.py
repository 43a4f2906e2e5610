"""Capacity planning: will a run fit a device, and how long will it take?

    python -m s2s.plan [Hydra overrides as for train.py] [--device h100-80gb] [--memory 80GB]
                       [--mfu 0.4 | --mfu report.md] [--json]

Pieces: `job` (the composed config -> a Job), `devices` (memory and peaks), `states` (weights,
gradients, optimiser state under one device / DDP / FSDP), `activations` (one micro-batch,
tensor by tensor), `planner` (all of it -> a Plan), `render` (the text), `measure` (live tensor
bytes of real CPU steps, which the tests hold the prediction to). docs/scaling.md: nanoT5's job.
"""

from s2s.plan.planner import Plan, count_parameters, make_plan

__all__ = ["Plan", "count_parameters", "make_plan"]
