"""The plan as text: one screen, the numbers a user compares before renting hardware."""

from __future__ import annotations

from s2s.plan.activations import Activations
from s2s.plan.planner import Memory, Plan

GIB = 2**30


def render(plan: Plan) -> str:
    job, device, p = plan.job, plan.device, plan.parameters
    lines = [
        f"model       {p.total:,} parameters (embeddings {p.embeddings:,}; "
        f"{p.encoder_layer:,} per encoder layer x {job.model.n_encoder_layers}, "
        f"{p.decoder_layer:,} per decoder layer x {job.model.n_decoder_layers}); "
        f"vocab {job.model.vocab_size:,} (model.vocab_size)",
        f"step        global batch {job.global_batch} x ({job.source_len} -> {job.target_len})"
        f" = {plan.tokens_per_step:,} tokens; {plan.flops_per_step:.3g} training FLOPs",
        f"run         {job.world} x {device.name} ({_gib(device.memory)}, "
        f"{_gib(device.usable_memory)} usable), {job.strategy}, {job.precision}, "
        f"{job.optimizer}, micro-batch {job.micro_batch} x {job.accumulation} accumulation, "
        f"activation checkpointing {'on' if job.checkpointing else 'off'}, "
        f"attention {job.attention_backend}",
        "",
        "memory per device (GiB)   " + "  ".join(f"{name:>9}" for name in plan.by_strategy),
    ]
    rows = ("weights", "gradients", "optimizer", "activations", "total")
    for row in rows:
        cells = "  ".join(f"{_g(m.as_dict()[row]):>9}" for m in plan.by_strategy.values())
        lines.append(f"  {row:<24}{cells}")
    lines += ["", "activations of one micro-batch (GiB)", *_parts(plan.memory.activations)]
    flipped = "off" if job.checkpointing else "on"
    lines.append(f"  with checkpointing {flipped:<6}{_g(plan.checkpointing_flipped.peak):>9}")
    lines.append("")
    fits = plan.memory.total <= device.usable_memory
    verdict = "fits" if fits else "does NOT fit"
    lines.append(
        f"fit         micro-batch {job.micro_batch} {verdict} ({_g(plan.memory.total)} of "
        f"{_g(device.usable_memory)} GiB); largest that fits: {plan.max_micro_batch} "
        f"(accumulation {job.global_batch // (plan.max_micro_batch * job.world)})"
    )
    lines.append(
        f"time        {plan.step_seconds:.3g} s/step at MFU {plan.mfu:.0%} of "
        f"{device.peak(job.compute_dtype) / 1e12:.4g} TFLOP/s per device; "
        f"{job.max_steps:,} steps: {_duration(plan.run_seconds)}"
    )
    return "\n".join(lines)


def _parts(a: Activations) -> list[str]:
    parts = {
        "encoder layers": a.encoder_layers,
        "decoder layers": a.decoder_layers,
        "embeddings, norms, bias": a.encoder_other + a.decoder_other,
        "loss (logits' 12V)": a.loss,
        "recomputed layer": a.recomputed_layer,
        "layer backward": a.layer_backward,
        "(V, D) gradient": a.embedding_grad,
    }
    lines = [f"  {name:<24}{_g(value):>9}" for name, value in parts.items() if value]
    return [*lines, f"  {'peak':<24}{_g(a.peak):>9}"]


def summary(memory: Memory) -> str:
    return ", ".join(f"{k} {_g(v)}" for k, v in memory.as_dict().items())


def _g(value: int) -> str:
    return f"{value / GIB:.2f}"


def _gib(value: int) -> str:
    return f"{value / GIB:.0f} GiB"


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "n/a (trainer.max_steps unset)"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"
