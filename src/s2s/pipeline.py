"""The two jobs: train(cfg) and generate(cfg), what `python train.py` and `python generate.py`
run, and what tests, sweeps and notebooks call directly.

train:    composed Hydra config -> DataConfig + data module (tokenizer, cached ids)
                                -> ModelConfig (vocab and special ids from the tokenizer) -> model
                                -> optimiser / schedule partials -> LightningModule
                                -> Trainer (s2s.trainer: callbacks, loggers; accumulation from
                                   the global batch)
                                -> fit -> metrics, report.md (s2s.report)
generate: checkpoint or bundle -> model + tokenizer -> TextGenerator (s2s.generation)
                               -> one prompt, a file of prompts, or an interactive session
                                  (the I/O: s2s.cli_generate)

Lightning is imported by train() only: it takes seconds, and generation never needs it.
`_target_` instantiation happens here and in s2s.trainer only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from s2s import kernels
from s2s.bundle import build_pretrained, load_weights, read_pretrained
from s2s.checkpoint import CheckpointError, Framing, LoadedCheckpoint, read_checkpoint
from s2s.cli import Interrupted
from s2s.config import ModelConfig
from s2s.data.config import DataConfig
from s2s.data.objectives import build_objective
from s2s.data.records import read_records
from s2s.data.synthetic import CopyWarmup
from s2s.evaluation.masked_lines import MaskedLine, make_masked_lines
from s2s.files import atomic_write, remove_stale_tmp_files
from s2s.metrics import METRICS, check_metrics
from s2s.model import Seq2SeqTransformer
from s2s.model.meta import meta_model
from s2s.paths import project_root  # noqa: F401  (registers ${s2s_root:})
from s2s.run_dir import (
    check_run_dir,
    lock_run_dir,
    replace_earlier_run,
    resolve_ckpt_path,
    unlock_run_dir,
)
from s2s.settings import from_mapping, number
from s2s.tokenizer import Tokenizer

if TYPE_CHECKING:
    from s2s.data.datamodule import S2SDataModule
    from s2s.generation.config import GenerationConfig
    from s2s.lit_module import EvalConfig

log = logging.getLogger(__name__)

# Fields that may differ between a pre-trained checkpoint and the fine-tuning config.
# What Lightning needs from a checkpoint to resume (an s2s checkpoint written another way,
# e.g. by a script, has weights but no training state)
RESUME_KEYS = ("optimizer_states", "loops", "global_step")
# generate.py dtype= choices: the weights' dtype while generating
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The masked validation lines depend on this, not on cfg.seed: every run scores the same lines.
DENOISE_SEED = 0
PROBE_DOCUMENTS = 2000  # documents of a prepared val_dir the probe draws its lines from


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as the composed config says; return the final metrics and where outputs went.
    The run directory is held by this process for the whole run (s2s.run_lock)."""
    output_dir = Path(cfg.paths.output_dir)
    lock_run_dir(output_dir)
    try:
        return _train(cfg)
    finally:
        unlock_run_dir(output_dir)


def _train(cfg: DictConfig) -> dict[str, Any]:
    import lightning as L

    from s2s.data.datamodule import S2SDataModule
    from s2s.distributed import end_process_group
    from s2s.lit_module import EvalConfig, Seq2SeqLitModule
    from s2s.trainer import check_accelerator, make_trainer, peak_tflops

    start = time.perf_counter()
    _one_log_format()
    # Mid-epoch resume is exact here (s2s.resume skips consumed batches): not a concern.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before")
    # lightning 2.6 calls a torch pytree API that torch 2.13 deprecates, once per run: not ours
    # to fix, and not something a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # the CSV logger's warning about an earlier metrics.csv: _keep_earlier_metrics moved it
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* is not empty")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    output_dir = Path(cfg.paths.output_dir)
    check_run_dir(output_dir, overwrite=bool(cfg.get("overwrite")), ckpt_path=cfg.get("ckpt_path"))
    if cfg.get("overwrite"):
        for path in replace_earlier_run(output_dir, ckpt_path=cfg.get("ckpt_path")):
            log.info("overwrite=true: removed the earlier run's %s", path)
    _check_required(cfg)
    _check_data_paths(cfg)
    check_accelerator(cfg)
    data_config = DataConfig.from_dict(_plain(cfg.data, "data"))
    eval_values = _plain(cfg.eval, "eval")
    metrics = eval_values.pop("metrics", METRICS)  # a list: checked by EvalConfig itself
    eval_config = from_mapping(EvalConfig, eval_values, "eval")
    eval_config = dataclasses.replace(eval_config, metrics=metrics)
    warmup_values = _plain(cfg.copy_warmup, "copy_warmup") if cfg.get("copy_warmup") else {}
    copy_warmup = from_mapping(CopyWarmup, warmup_values, "copy_warmup")

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    resumed = _read_resume_checkpoint(ckpt_path) if ckpt_path else None
    pretrained = read_pretrained(cfg.init_from, "init_from") if cfg.get("init_from") else None
    source = resumed or pretrained
    framing = source.framing if source is not None else Framing()
    from_hf = pretrained is not None and pretrained.origin == "hf"
    if from_hf:
        data_config = within_positions(data_config, pretrained.config)
    datamodule = S2SDataModule(
        data_config, source.tokenizer if source else None, add_bos=framing.add_bos
    )
    tokenizer = datamodule.tokenizer
    if from_hf:
        # a Hugging Face model is its own architecture: no preset describes it; dropouts
        # given on the command line (model.dropout=0.05) replace the directory's
        changes = _command_line_training_fields(cfg)
        model_config = dataclasses.replace(pretrained.config, **changes)
        log.info(
            "init_from=%s: the model is the directory's (model=... not used%s)",
            cfg.init_from,
            "".join(f"; model.{k}={v}" for k, v in changes.items()),
        )
    else:
        model_config = model_config_for(cfg, tokenizer)
    if resumed is not None:
        check_same_architecture(model_config, resumed.config, f"ckpt_path={ckpt_path}")
    if pretrained is not None:
        check_same_architecture(model_config, pretrained.config, f"init_from={cfg.init_from}")
    if pretrained is not None and resumed is None:  # a resume restores its own weights
        # the pre-trained tensors themselves, with no random initialisation to overwrite
        model = meta_model(model_config)
        load_weights(model, pretrained.state_dict, pretrained.source, assign=True)
        log.info("initialised from %s", cfg.init_from)
    else:
        model = Seq2SeqTransformer(model_config)
    model = kernels.install(model)  # S2S_KERNELS=0: plain
    log.info(describe(model))
    model.set_attention_backend(str(cfg.get("attention_backend", "sdpa")))
    model.checkpoint_activations(bool(cfg.get("activation_checkpointing", False)))
    if pretrained is not None and copy_warmup.steps:
        # the warm-up teaches a model from scratch to read its source; a pre-trained one does
        log.info("init_from: no copy warm-up (copy_warmup.steps=%d ignored)", copy_warmup.steps)
        copy_warmup = dataclasses.replace(copy_warmup, steps=0)

    optimizer = hydra.utils.instantiate(cfg.optimizer)
    optimizer(model)  # build once now so a bad optimizer.* value fails before any data work
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    datamodule.setup("fit")
    module = Seq2SeqLitModule(
        model,
        tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        eval_config=eval_config,
        pairs=datamodule.kinds.get("val") == "pairs",
        denoise_lines=denoise_lines_for(data_config, datamodule, eval_config),
        copy_warmup=copy_warmup,
        warmup_noise=build_objective(data_config, tokenizer) if copy_warmup.steps else None,
        seed=int(cfg.seed),
        peak_tflops=peak_tflops(cfg.trainer),
        framing=dataclasses.replace(framing, max_source_length=data_config.max_source_length),
        compile=bool(cfg.get("compile", False)),
        label_smoothing=number(
            "loss.label_smoothing", cfg.get("loss", {}).get("label_smoothing", 0.0)
        ),
    )
    trainer = make_trainer(cfg, datamodule)
    _save_run_files(output_dir, cfg, model_config, tokenizer, trainer)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except Interrupted:  # a signal, after saving the step it reached (s2s.preemption)
        _finish(trainer, module, output_dir, cfg, start)
        end_process_group()
        raise
    result = _finish(trainer, module, output_dir, cfg, start)
    end_process_group()
    return result


def _finish(trainer: Any, module: Any, output_dir: Path, cfg: DictConfig, start: float) -> dict:
    """The final metrics and where outputs went; the run report written (global rank 0)."""
    from s2s.report import run_facts

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result: dict[str, Any] = {"metrics": metrics, "output_dir": str(output_dir)}
    for callback in trainer.checkpoint_callbacks:
        if callback.best_model_path and Path(callback.best_model_path).is_file():
            result["best_checkpoint"] = callback.best_model_path
        if callback.last_model_path and Path(callback.last_model_path).is_file():
            result["last_checkpoint"] = callback.last_model_path
    run = run_facts(result, trainer, module, time.perf_counter() - start)
    if trainer.is_global_zero:
        result["report"] = str(_report(run, cfg))
    return result


def generate(cfg: DictConfig, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """Generate as the composed `conf/generate.yaml` says: for `prompt=`, for every prompt of
    `input_file=` (JSON Lines to `output_file=`, scored when the file has targets), or
    interactively from `stdin`. Every setting is checked before the model is loaded."""
    from s2s.cli_generate import (
        check_attention_plot,
        check_device,
        check_output_file,
        draw_attention,
        generate_file,
        interactive,
        read_prompts,
    )
    from s2s.generation.config import GenerationConfig
    from s2s.generation.text import TextGenerator

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ValueError("no checkpoint given: python generate.py ckpt=PATH (.ckpt or bundle)")
    config = GenerationConfig.from_dict(OmegaConf.to_container(cfg.generate, resolve=True))
    if cfg.prompt is not None and cfg.input_file is not None:
        raise ValueError("give either prompt= or input_file=, not both")
    if cfg.prompt is not None and not str(cfg.prompt).strip():
        raise ValueError("prompt is empty: give some text, e.g. prompt='How <mask> doing?'")
    if cfg.input_file is not None and cfg.output_file is None:
        raise ValueError("input_file= needs output_file= (where the JSON Lines go)")
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size={cfg.batch_size} must be >= 1")
    check_device(str(cfg.device))
    dtype = DTYPES.get(str(cfg.get("dtype", "float32")))
    if dtype is None:
        raise ValueError(f"dtype={cfg.dtype} must be one of {', '.join(DTYPES)}")
    metrics = cfg.get("metrics", list(METRICS))
    if OmegaConf.is_config(metrics):
        metrics = OmegaConf.to_container(metrics)
    metrics = check_metrics(metrics, "metrics")
    plot = cfg.get("attention_plot")
    if plot is not None:
        check_attention_plot(Path(plot), cfg)
    prompts = read_prompts(Path(cfg.input_file)) if cfg.input_file is not None else None
    if prompts is not None:
        check_output_file(Path(cfg.input_file), Path(cfg.output_file), bool(cfg.overwrite))

    loaded = read_pretrained(cfg.ckpt, "ckpt")
    model, tokenizer = build_pretrained(loaded)
    model.to(dtype)  # the weights (float32 as stored); bf16 / fp16 halve memory and traffic
    # unset (null): frame inputs as training did, as far as the checkpoint recorded it
    framing = loaded.framing
    generator = TextGenerator(
        model,
        tokenizer,
        with_forced_tokens(config, framing),
        add_bos=framing.add_bos if cfg.add_bos is None else bool(cfg.add_bos),
        max_source_length=(
            framing.max_source_length if cfg.max_source_length is None else cfg.max_source_length
        ),
        device=str(cfg.device),
    )
    # the weights never change here, so decoding layouts are made once, not once per batch
    with kernels.decoding_session(model):
        if cfg.prompt is not None and plot is not None:
            source, output = generator.token_ids(str(cfg.prompt))
            print(tokenizer.decode(output), file=stdout)
            draw_attention(model, tokenizer, source, output, Path(plot))
        elif cfg.prompt is not None:
            print(generator([str(cfg.prompt)])[0], file=stdout)
        elif prompts is not None:
            output = Path(cfg.output_file)
            generate_file(generator, prompts, output, int(cfg.batch_size), stdout, metrics)
        else:
            interactive(generator, stdin, stdout)


def within_positions(data: DataConfig, model: ModelConfig) -> DataConfig:
    """`data` with its lengths cut to a learned position table's size (a pre-trained BART
    reads at most `max_positions` tokens), saying so."""
    if model.positions != "learned":
        return data
    cut = {
        name: model.max_positions
        for name in ("max_source_length", "max_target_length")
        if getattr(data, name) > model.max_positions
    }
    for name in cut:
        log.warning(
            "data.%s=%d is over the model's %d positions: cut to %d",
            name, getattr(data, name), model.max_positions, model.max_positions,
        )  # fmt: skip
    return dataclasses.replace(data, **cut) if cut else data


def with_forced_tokens(config: GenerationConfig, framing: Framing) -> GenerationConfig:
    """`config` with the forced first / last tokens the checkpoint records where it leaves
    them unset (null)."""
    forced = {
        name: getattr(framing, name)
        for name in ("forced_bos_token_id", "forced_eos_token_id")
        if getattr(config, name) is None
    }
    return dataclasses.replace(config, **forced)


def denoise_lines_for(
    data: DataConfig, datamodule: S2SDataModule, eval_config: EvalConfig
) -> list[MaskedLine]:
    """The masked-line probe of Text validation data (none for pairs or without val data)."""
    if datamodule.kinds.get("val") != "text" or not eval_config.denoise_lines:
        return []
    if data.val_dir:  # a prepared directory: the text of its first documents
        texts = datamodule.document_texts("val", PROBE_DOCUMENTS)
    else:
        texts = read_records(Path(data.val_path)).inputs
    return make_masked_lines(texts, eval_config.denoise_lines, seed=DENOISE_SEED)


def model_config_for(cfg: DictConfig, tokenizer: Tokenizer) -> ModelConfig:
    """`cfg.model` with the vocabulary size and special ids taken from the tokenizer."""
    values = _plain(cfg.model, "model")
    values.update(
        vocab_size=tokenizer.vocab_size,
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.pad_id,  # T5's convention: decoding starts at <pad>
    )
    return ModelConfig.from_dict(values)


def check_same_architecture(config: ModelConfig, pretrained: ModelConfig, source: str) -> None:
    """Refuse, clearly, weights whose architecture does not match the configured model.

    `source` names the setting and file, e.g. `init_from=PATH` or `ckpt_path=PATH`.
    """
    ours, theirs = config.architecture(), pretrained.architecture()
    diffs = [
        f"model.{key}={ours[key]!r} but the checkpoint has {theirs[key]!r}"
        for key in ours
        if ours[key] != theirs[key]
    ]
    if diffs:
        raise ValueError(
            f"{source}: the checkpoint's architecture does not match the config: "
            + "; ".join(diffs[:4])
            + ("; ..." if len(diffs) > 4 else "")
            + " (pick the model=... preset the checkpoint was trained with)"
        )


def _command_line_training_fields(cfg: DictConfig) -> dict[str, Any]:
    """The model's TRAINING_FIELDS (dropouts, init_std) that the command line sets, with the
    values the composed config gives them (none when train() was not started by Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    given = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return {
        name: cfg.model[name]
        for name in ModelConfig.TRAINING_FIELDS
        if f"model.{name}" in given and name in cfg.model
    }


def _check_required(cfg: DictConfig) -> None:
    """The keys the composed experiment lists under `required` must be set."""
    unset = [key for key in cfg.get("required") or [] if OmegaConf.select(cfg, key) is None]
    if unset:
        task = cfg.get("task_name", "this run")
        raise ValueError(
            f"{task} needs {', '.join(f'{key}=...' for key in unset)} on the command line"
            + (" (init_from: a Hugging Face model directory, an s2s bundle or .ckpt)"
               if "init_from" in unset else "")
        )  # fmt: skip


def _check_data_paths(cfg: DictConfig) -> None:
    """Training and validation data must be named (before any tokenizer or model work)."""
    usage = (
        "python train.py data=custom data.train_path=FILE data.val_path=FILE, or a directory "
        "from `python -m s2s.prepare`: data=stream data.train_dir=DIR data.val_dir=DIR"
    )
    if not cfg.data.get("train_path") and not cfg.data.get("train_dir"):
        raise ValueError(
            f"data.train_path is not set (nor data.train_dir): give the training data ({usage})"
        )
    if not cfg.data.get("val_path") and not cfg.data.get("val_dir"):
        raise ValueError(
            "data.val_path is not set (nor data.val_dir): training validates every "
            "trainer.val_check_interval steps and keeps the best checkpoint by val/loss; give "
            f"held-out data ({usage})"
        )


def _read_resume_checkpoint(path: Path) -> LoadedCheckpoint:
    """The checkpoint to resume from, read safely and checked to be a training checkpoint;
    stale temporaries of a killed save beside it are removed."""
    loaded = read_checkpoint(path, "ckpt_path")
    missing = [key for key in RESUME_KEYS if key not in loaded.raw]
    if missing:
        raise CheckpointError(
            f"ckpt_path={path}: not a training checkpoint (no {', '.join(missing)}): "
            f"to start from its weights use init_from={path}"
        )
    remove_stale_tmp_files(path.parent)
    log.info("resuming from %s with its tokenizer (%d tokens)", path, loaded.tokenizer.vocab_size)
    return loaded


def _one_log_format() -> None:
    """Under Hydra (root logger configured) let Lightning's messages go through it only once;
    drop Lightning's advertisement for its cloud logger (nothing a user of s2s acts on)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvert) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdvert())
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class _NoAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def describe(model: Seq2SeqTransformer) -> str:
    """One line for the log: the model's class, size and shape (Lightning's summary table
    would name the kernel twin's class and a FLOPs column of zeros)."""
    c = model.config
    count = sum(p.numel() for p in model.parameters())
    return (
        f"model: Seq2SeqTransformer, {count / 1e6:.1f}M parameters ({c.n_encoder_layers}+"
        f"{c.n_decoder_layers} layers, d_model {c.d_model}, {c.n_heads} heads, d_ff {c.d_ff}, "
        f"vocabulary {c.vocab_size}, {c.positions} positions)"
    )


def _plain(node: Any, key: str) -> dict[str, Any]:
    if node is None:
        raise ValueError(f"the config has no {key!r} section")
    values = OmegaConf.to_container(node, resolve=True)
    if not isinstance(values, dict):
        raise ValueError(f"{key} must be a mapping, got {values!r}")
    return values


def _save_run_files(
    output_dir: Path, cfg: DictConfig, config: ModelConfig, tokenizer: Tokenizer, trainer: Any
) -> None:
    if not trainer.is_global_zero:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("config.yaml", OmegaConf.to_yaml(cfg, resolve=True)),
        ("model_config.json", json.dumps(config.to_dict(), indent=2)),
    ):
        with atomic_write(output_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    tokenizer.save(output_dir / "tokenizer.json")


def _report(run: dict[str, Any], cfg: DictConfig) -> Path:
    """Print the end-of-run summary; write it, the config diff and the validation history to
    report.md in the run directory."""
    from s2s.report import config_diff, render, summary_lines, write_report

    text = render(run, config_diff(cfg))
    path = write_report(Path(run["output_dir"]), text)
    print("\n".join([*summary_lines(run), f"{'report:':16} {path}"]), flush=True)
    return path
