"""Seq2SeqLitModule: the training loop's view of a `Seq2SeqTransformer`.

Loss (cross-entropy over non-padding targets, optional label smoothing), metrics, the optimiser
and its schedule, validation samples and, for pair data, BLEU / chrF / ROUGE (s2s.metrics). The
model is injected; this module knows nothing of how it is built, and the model knows nothing of
the loop.

Logged keys: train/loss, train/lr, train/tokens_per_sec, train/tflops, train/mfu (model FLOPs
utilisation: `s2s.throughput`), train/padding_fraction, train/copy_acc (during the copy
warm-up: the share of its random tokens predicted right), val/loss, val/ppl, val/token_acc, and
(pairs, as `eval.metrics` asks) val/bleu, val/chrf, val/rouge1, val/rouge2, val/rougeL,
val/rougeLsum, or (Text data, given masked lines) val/copy_rate, val/fill_rate, val/chrf of the
denoising probe (`s2s.evaluation`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor, nn

from s2s.checkpoint import S2S_KEY, Framing, metadata
from s2s.data.examples import IGNORE_INDEX
from s2s.data.synthetic import CopyWarmup, Noise, copyable_ids, random_copy_batch, warmup_rng
from s2s.distributed import fsdp_root
from s2s.evaluation.masked_lines import MaskedLine
from s2s.metrics import METRICS, check_metrics, corpus_scores
from s2s.model import Seq2SeqTransformer
from s2s.throughput import (
    Reading,
    Throughput,
    TrainingMeter,
    compute_dtype,
    peak_flops,
    train_flops,
)
from s2s.tokenizer import Tokenizer

log = logging.getLogger(__name__)
TOKENS_KEY = "s2s_tokens_seen"  # checkpoint entry: training tokens so far (all devices)
WARMUP_KEY = "s2s_copy_warmup"  # checkpoint entry: where the copy warm-up ended, recent scores
# a training batch's entry, set on the host before the batch moves to the device: whether its
# source has padding (without it the model gets no mask: SDPA may skip masking)
SOURCE_PADDED = "s2s_source_padded"
COPYING = 0.5  # without copy_warmup.until: a warm-up that copies less than this gets a warning
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


@dataclass(frozen=True)
class EvalConfig:
    """What validation does besides the loss (`eval.*` in conf/train.yaml)."""

    num_samples: int = 3  # TensorBoard text samples per validation
    generation_examples: int = 64  # validation examples decoded for BLEU / chrF (pairs only)
    max_new_tokens: int = 64
    denoise_lines: int = 64  # masked validation lines for val/copy_rate etc. (Text data only)
    attention_maps: int = 1  # validation samples drawn as cross-attention heat maps
    metrics: tuple[str, ...] = METRICS  # on pair data (s2s.metrics)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", check_metrics(self.metrics, "eval.metrics"))
        for name in ("num_samples", "generation_examples", "denoise_lines", "attention_maps"):
            if getattr(self, name) < 0:
                raise ValueError(f"eval.{name}={getattr(self, name)} must be >= 0")
        if self.max_new_tokens < 1:
            raise ValueError(f"eval.max_new_tokens={self.max_new_tokens} must be >= 1")


class Seq2SeqLitModule(L.LightningModule):
    def __init__(
        self,
        model: Seq2SeqTransformer,
        tokenizer: Tokenizer,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        eval_config: EvalConfig | None = None,
        pairs: bool = False,
        denoise_lines: Sequence[MaskedLine] = (),
        copy_warmup: CopyWarmup | None = None,
        warmup_noise: Noise | None = None,
        seed: int = 0,
        peak_tflops: float | None = None,
        framing: Framing | None = None,
        compile: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"loss.label_smoothing={label_smoothing} must be in [0, 1)")
        self.label_smoothing = label_smoothing  # of the training and validation loss
        self.model = model
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.eval_config = eval_config or EvalConfig()
        self.pairs = pairs  # validation data are input -> target pairs: compute BLEU / chrF
        self.denoise_lines = list(denoise_lines)  # the masked-line probe of Text validation data
        self.copy_warmup = copy_warmup or CopyWarmup()
        self.warmup_noise = warmup_noise  # the data's objective, for noised warm-up rows
        self.seed = seed
        self._copyable = copyable_ids(tokenizer, self.copy_warmup.vocab)
        self._warmup_end: int | None = None  # the step the warm-up ended at, once it copies
        self._copy_scores: list[float] = []  # its token accuracy on the last warm-up batches
        self._warmup_reported = False
        self._forward = model
        if compile:  # `compile` in conf/train.yaml
            # Compiled separately so checkpoints keep plain `model.*` keys; under DDP it is
            # split at DDP's buckets all the same (s2s.trainer.overlap_compiled_ddp).
            object.__setattr__(self, "_forward", torch.compile(model))
        self.framing = framing  # how inputs are framed, stored in checkpoints for generate.py
        self.peak_tflops = peak_tflops  # the device peak MFU is against (None: s2s.throughput)
        self.peak_source = ""  # where the peak came from, for the run report
        self.throughput = Throughput()  # this run's training work on this device
        self.tokens_before = 0  # tokens seen by the runs this one resumes (all devices)
        self.peak_flops = 0.0
        # this logging interval's work, read once per interval (no host-device sync per step)
        self.meter = TrainingMeter()
        self.progress: dict[str, float] = {}  # values for the progress bar, as last read
        self._lr: float | None = None  # this batch's learning rate
        self._read_at = -1  # the global step the meter was last read at
        self._val_batches: list[dict[str, Tensor]] = []
        self._said_no_decoding = False  # under FSDP, validation decodes nothing (said once)

    # -- loss -------------------------------------------------------------------------------

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy over real target tokens, and the logits (B, T, V)."""
        labels = batch["labels"]
        # None when the host saw no padding (`on_before_batch_transfer`): the mask is never read
        # back from the device to decide that
        mask = batch["attention_mask"] if batch.get(SOURCE_PADDED, True) else None
        logits = self._forward(batch["input_ids"], self.model.shift_right(labels), mask)
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1).float(),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )
        return loss, logits

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        warmup = self.in_copy_warmup
        if warmup:
            batch = self._warmup_batch(batch, batch_idx)
        elif self.copy_warmup.steps and not self._warmup_reported:
            self._report_warmup()
        loss, logits = self.loss(batch)
        if warmup:
            self._track_copying(logits, batch["labels"])
        # summed on the device, read once per logging interval (s2s.throughput.TrainingMeter)
        real = batch["attention_mask"].sum() + (batch["labels"] != IGNORE_INDEX).sum()
        total = batch["attention_mask"].numel() + batch["labels"].numel()
        # not prog_bar=True: Lightning reads progress-bar tensors back at every step (a sync);
        # the bar shows `self.progress`, read with the token count
        self.log("train/loss", loss)
        # the padded shapes are what the device computes (train/padding_fraction: how much)
        (rows, source_len), target_len = batch["input_ids"].shape, batch["labels"].shape[1]
        flops = train_flops(self.model.config, rows, source_len, target_len)
        # counted here, not when the batch ends: a checkpoint saved at the end of this batch
        # (callbacks run before this module's on_train_batch_end) must include it (tokens_seen)
        self.meter.add(real, total, flops, loss)
        return loss

    @property
    def in_copy_warmup(self) -> bool:
        """Whether this step trains on random rows to copy (s2s.data.synthetic): the first
        `copy_warmup.steps`, or fewer once the model copies `copy_warmup.until` of them."""
        end = self.copy_warmup.steps if self._warmup_end is None else self._warmup_end
        return self.global_step < end

    def _track_copying(self, logits: Tensor, labels: Tensor) -> None:
        """Log the share of warm-up tokens the model predicts right (train/copy_acc) and end
        the warm-up after this step once the last `window` batches average `until`."""
        score = copy_accuracy(logits.detach(), labels)
        # the mean over ranks: every rank ends the warm-up at the same step
        score = float(self.trainer.strategy.reduce(score, reduce_op="mean"))
        self.log("train/copy_acc", score)
        window = self.copy_warmup.window
        self._copy_scores = [*self._copy_scores, score][-window:]
        until = self.copy_warmup.until
        full = len(self._copy_scores) == window
        if until is not None and full and sum(self._copy_scores) / window >= until:
            self._warmup_end = self.global_step + 1

    def _report_warmup(self) -> None:
        """Say, once, how the warm-up ended: it copies, or it ran out of steps."""
        self._warmup_reported = True
        end = self.copy_warmup.steps if self._warmup_end is None else self._warmup_end
        recent = sum(self._copy_scores) / max(len(self._copy_scores), 1)
        until = self.copy_warmup.until
        enough = COPYING if until is None else until
        if recent >= enough:
            log.info(
                "copy warm-up done after %d steps: copies %.0f%% of its tokens; "
                "training on the data from now on",
                end,
                100 * recent,
            )
        elif self._copy_scores:  # a resume after the warm-up has no scores to judge by
            log.warning(
                "copy warm-up: %d steps (copy_warmup.steps) and the model copies only %.0f%% "
                "of its tokens (wanted: %.0f%%): it may not learn to copy its input; "
                "more copy_warmup.steps, another seed or a larger model.init_std may",
                end,
                100 * recent,
                100 * enough,
            )

    def _warmup_batch(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """The data batch replaced by random rows to copy (s2s.data.synthetic), same row count."""
        synthetic = random_copy_batch(
            batch["input_ids"].shape[0],
            self.copy_warmup,
            self._copyable,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
            rng=warmup_rng(self.seed, self.global_step, batch_idx, self.global_rank),
            noise=self.warmup_noise if self.global_step >= self.copy_warmup.noise_from else None,
        )
        return {k: v.to(batch["input_ids"].device) for k, v in synthetic.items()}

    def on_train_start(self) -> None:
        dtype = compute_dtype(self.trainer.precision)
        self.peak_flops, self.peak_source = peak_flops(self.device, dtype, self.peak_tflops)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Note on a training batch whether its source has padding, read on the host before
        the batch moves to the device (there, reading it would wait for the device)."""
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        on_host = mask is not None and mask.device.type == "cpu"
        if on_host and self._trainer is not None and self.trainer.training:
            batch = {**batch, SOURCE_PADDED: not bool(mask.all())}
        return batch

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.meter.start()  # the first batch, or the first after a validation
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            self._lr = scheduler.get_last_lr()[0]  # a host number, logged with the interval

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """At each logging step (every trainer.log_every_n_steps, where Lightning writes the
        logs): real (non-padding) source + target tokens per second, model TFLOP/s and MFU of
        the batches since the last (loading, forward, backward, optimiser step), on this
        device, and the padding fraction. One read from the device per interval."""
        step, every = self.global_step, self.trainer.log_every_n_steps
        if not every or step == self._read_at or step % every:
            return
        self._read_at = step
        reading = self._read_meter()
        seconds = max(reading.seconds, 1e-9)
        self.log("train/tokens_per_sec", reading.tokens / seconds)
        self.log("train/tflops", reading.flops / seconds / 1e12)
        if self.peak_flops:
            self.log("train/mfu", reading.flops / seconds / self.peak_flops)
        if reading.positions:
            self.log("train/padding_fraction", 1.0 - reading.tokens / reading.positions)
        if self._lr is not None:
            self.log("train/lr", self._lr)
            self.progress["train/lr"] = self._lr
        if reading.loss is not None:
            self.progress["train/loss"] = reading.loss

    def _read_meter(self) -> Reading:
        """The interval's work, added to this run's totals (`throughput`)."""
        reading = self.meter.read(self.device)
        self.throughput.tokens += reading.tokens
        self.throughput.flops += reading.flops
        self.throughput.seconds += reading.seconds
        return reading

    def on_train_end(self) -> None:
        self._read_meter()  # the last, partial interval

    # -- validation -------------------------------------------------------------------------

    def on_validation_start(self) -> None:
        self._read_meter()  # the interval up to here (nothing outside training) ...
        self.meter.stop()  # ... and validation time is not training time

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, logits = self.loss(batch)
        labels = batch["labels"]
        real = labels != IGNORE_INDEX
        n_tokens = real.sum()
        correct = ((logits.argmax(-1) == labels) & real).sum()
        # Token-weighted means over the whole validation set (batches differ in size).
        self.log("val/loss", loss, batch_size=int(n_tokens), sync_dist=True, prog_bar=True)
        self.log("val/token_acc", correct / n_tokens, batch_size=int(n_tokens), sync_dist=True)
        if len(self._val_batches) * labels.shape[0] < max(
            self.eval_config.num_samples, self.eval_config.generation_examples
        ):
            self._val_batches.append({k: v.detach() for k, v in batch.items()})

    def on_validation_epoch_end(self) -> None:
        metrics = self.trainer.callback_metrics
        if "val/loss" in metrics:
            self.log("val/ppl", math.exp(min(float(metrics["val/loss"]), 50.0)), sync_dist=True)
        batches, self._val_batches = self._val_batches, []
        if self.trainer.is_global_zero and "val/loss" in metrics:
            # One line per validation in the console and the run's train.log, also when no
            # progress bar is drawn (output redirected to a file, a batch job). The sanity
            # check before training gives the starting point.
            when = f"step {self.global_step}"
            if self.trainer.sanity_checking:
                when += " (before training)" if self.global_step == 0 else " (sanity check)"
            log.info(
                "%s: val/loss %.4f, val/token_acc %.4f",
                when,
                float(metrics["val/loss"]),
                float(metrics.get("val/token_acc", float("nan"))),
            )
        if self.trainer.sanity_checking or not batches or not self._can_decode():
            return
        outputs = self._decode_examples(batches)
        if self.pairs and self.eval_config.generation_examples:
            n = self.eval_config.generation_examples
            predictions, references = outputs["predictions"][:n], outputs["targets"][:n]
            scores = corpus_scores(predictions, references, self.eval_config.metrics)
            for key, score in scores.items():
                self.log(f"val/{key}", score, rank_zero_only=True)
        self._write_samples(outputs)
        self._write_attention_maps(outputs)
        if self.denoise_lines and self.trainer.is_global_zero:
            self._denoise_probe()

    def _can_decode(self) -> bool:
        """Whether validation may decode examples: not under FSDP (trainer=fsdp), where this
        hook sees 1-D parameter shards and greedy decoding would run unequal all-gathers on the
        ranks (each stops at its own length). Said once per run."""
        if fsdp_root(self.trainer.model) is None:
            return True
        if not self._said_no_decoding and self.trainer.is_global_zero:
            self._said_no_decoding = True
            log.info(
                "trainer=fsdp: validation computes val/loss, val/ppl and val/token_acc only "
                "(no samples, BLEU / chrF / ROUGE, attention maps or masked-line probe: the "
                "weights are sharded); evaluate the saved checkpoint for those"
            )
        return False

    def _denoise_probe(self) -> None:
        """val/copy_rate, val/fill_rate, val/chrf on the masked lines; a few as text."""
        from s2s.evaluation.denoise import evaluate_denoising

        scores, outputs = evaluate_denoising(
            self.model,
            self.tokenizer,
            self.denoise_lines,
            add_bos=self.framing is not None and self.framing.add_bos,
        )
        self.log("val/copy_rate", scores.copy_rate, rank_zero_only=True)
        self.log("val/fill_rate", scores.fill_rate, rank_zero_only=True)
        self.log("val/chrf", scores.chrf, rank_zero_only=True)
        log.info(
            "step %d: masked lines: copy %.1f%%, fill %.1f%%, chrF %.1f",
            self.global_step,
            100 * scores.copy_rate,
            100 * scores.fill_rate,
            scores.chrf,
        )
        experiment = getattr(self.logger, "experiment", None)
        n = self.eval_config.num_samples
        if n and experiment is not None and hasattr(experiment, "add_text"):
            rows = ["| masked | output | original |", "|---|---|---|"]
            for line, output in zip(self.denoise_lines[:n], outputs[:n], strict=False):
                rows.append(f"| {_cell(line.masked)} | {_cell(output)} | {_cell(line.text)} |")
            experiment.add_text("val/masked_lines", "\n".join(rows), self.global_step)

    @torch.no_grad()
    def _decode_examples(self, batches: list[dict[str, Tensor]]) -> dict[str, list[str]]:
        # generation builds on the model, not the loop
        from s2s.generation import generate
        from s2s.generation.text import until_eos

        limit = max(self.eval_config.num_samples, self.eval_config.generation_examples)
        if not self.pairs:
            limit = self.eval_config.num_samples
        out: dict[str, list] = {"inputs": [], "predictions": [], "targets": []}
        out["input_ids"], out["prediction_ids"] = [], []  # without padding (attention maps)
        for batch in batches:
            if len(out["inputs"]) >= limit:
                break
            ids = generate(
                self.model,
                batch["input_ids"],
                batch["attention_mask"],
                max_new_tokens=self.eval_config.max_new_tokens,
            )
            labels = batch["labels"].masked_fill(batch["labels"] == IGNORE_INDEX, 0)
            out["inputs"] += self.tokenizer.decode_batch(
                batch["input_ids"].tolist(), skip_special_tokens=False
            )
            out["predictions"] += self.tokenizer.decode_batch(ids.tolist())
            for row, mask, new_ids in zip(
                batch["input_ids"], batch["attention_mask"], ids.tolist(), strict=True
            ):
                out["input_ids"].append(row[mask.bool()].tolist())
                out["prediction_ids"].append(until_eos(new_ids, self.tokenizer.eos_id))
            out["targets"] += self.tokenizer.decode_batch(labels.tolist())
        return {k: v[:limit] for k, v in out.items()}

    def _write_samples(self, outputs: dict[str, list[str]]) -> None:
        n = self.eval_config.num_samples
        experiment = getattr(self.logger, "experiment", None)
        if not n or experiment is None or not hasattr(experiment, "add_text"):
            return
        rows = ["| input | prediction | target |", "|---|---|---|"]
        for source, pred, target in zip(
            outputs["inputs"][:n], outputs["predictions"][:n], outputs["targets"][:n], strict=False
        ):
            rows.append(f"| {_cell(source)} | {_cell(pred)} | {_cell(target)} |")
        experiment.add_text("val/samples", "\n".join(rows), self.global_step)

    def _write_attention_maps(self, outputs: dict[str, list]) -> None:
        """Heat maps of the last decoder layer's cross-attention (mean over heads) while the
        model wrote its first `eval.attention_maps` validation outputs, as TensorBoard images
        (s2s.evaluation.attention_maps; needs matplotlib, the `plots` extra)."""
        from s2s.evaluation.attention_maps import MissingMatplotlib, attention_figure

        n = self.eval_config.attention_maps
        experiment = getattr(self.logger, "experiment", None)
        if not n or not self.trainer.is_global_zero or not hasattr(experiment, "add_figure"):
            return
        pairs = zip(outputs["input_ids"][:n], outputs["prediction_ids"][:n], strict=True)
        for i, (source, output) in enumerate(pairs):
            if not source or not output:
                continue
            try:
                figure = attention_figure(self.model, self.tokenizer, source, output)
            except MissingMatplotlib as err:
                log.info("no cross-attention pictures in TensorBoard: %s", err)
                self.eval_config = dataclasses.replace(self.eval_config, attention_maps=0)
                return
            # a pyplot-free Figure: nothing to close (s2s.evaluation.attention_maps)
            experiment.add_figure(f"val/cross_attention/{i}", figure, self.global_step, close=False)

    # -- optimisation and checkpoints -------------------------------------------------------

    def configure_optimizers(self) -> Any:
        # under FSDP the root unit: it knows the parameters' whole shapes (s2s.optim)
        model = fsdp_root(self._trainer and self.trainer.model) or self.model
        optimizer = self.optimizer_factory(model)
        if getattr(optimizer, "_step_supports_amp_scaling", False) and self._clips_under_amp():
            # Lightning refuses to clip gradients for an optimizer that unscales them itself
            # (fused AdamW) under mixed precision, even bf16 where nothing is scaled.
            log.info("mixed precision with gradient clipping: AdamW without its fused kernel")
            optimizer = self.optimizer_factory(model, fused=False)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        root = fsdp_root(self._trainer and self.trainer.model)
        if root is not None and gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            # Lightning's FSDP precision plugin refuses norm clipping: FSDP's own takes the norm
            # over every rank's shard (torch docs, FullyShardedDataParallel.clip_grad_norm_)
            root.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _clips_under_amp(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return False
        clip = trainer.gradient_clip_val or 0.0
        return clip > 0 and isinstance(trainer.precision_plugin, MixedPrecision)

    @property
    def tokens_seen(self) -> int:
        """Real training tokens so far, resumed runs included, over all devices (ranks take
        equal batches)."""
        tokens = self.throughput.tokens + self.meter.pending_tokens()
        return self.tokens_before + tokens * self.trainer.world_size

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[S2S_KEY] = metadata(self.model.config, self.tokenizer, self.framing)
        checkpoint[TOKENS_KEY] = self.tokens_seen
        checkpoint[WARMUP_KEY] = {"end": self._warmup_end, "scores": self._copy_scores}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_before = int(checkpoint.get(TOKENS_KEY, 0))
        warmup = checkpoint.get(WARMUP_KEY, {})
        self._warmup_end = warmup.get("end")
        self._copy_scores = list(warmup.get("scores", []))


def copy_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """The share of real target tokens whose most likely prediction is right (a 0-d tensor)."""
    real = labels != IGNORE_INDEX
    return ((logits.argmax(-1) == labels) & real).sum() / real.sum().clamp(min=1)


def _cell(text: str) -> str:
    """Text for one Markdown table cell (TensorBoard renders text summaries as Markdown)."""
    text = text.replace("<pad>", "").replace("|", "\\|").replace("\n", " / ")
    return text[:300]
