"""S2SDataModule: dataset files -> tokenizer -> cached ids -> noised, bucketed, padded batches.

    setup()  reads the files (either record format), gets the tokenizer (loaded from
             `data.tokenizer.path`, given by the caller, or trained on the training texts and
             cached), tokenises every file once (cached on disk), packs or truncates text rows,
             and builds the datasets. Prepared directories (`data.train_dir`, `data.val_dir`,
             from `python -m s2s.prepare`) are not loaded: rows are read from disk on demand.
    *_dataloader()  batches of `micro_batch_size` rows from a `BucketBatchSampler` (or, for
             streamed packed rows, a `StreamBatchSampler`) sharded
             over the trainer's ranks; the trainer must run with `use_distributed_sampler=False`
             (the sampler shards itself and Lightning passes it the epoch).

Text records are noised by the configured objective with a fresh mask every epoch; pairs are
used as they are. Validation noise is fixed, so validation loss compares across epochs and runs.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from s2s.data.cache import TokenizedFile, fingerprint, tokenize_file
from s2s.data.config import DataConfig
from s2s.data.examples import PairDataset, TextDataset, collate, pack, truncate
from s2s.data.objectives import block_length, build_objective
from s2s.data.position import DataPosition, resume_point
from s2s.data.prepared import (
    Documents,
    PackedBlocks,
    Prepared,
    PreparedError,
    end_of_document,
    open_prepared,
)
from s2s.data.records import read_bytes, read_records
from s2s.data.sampler import BucketBatchSampler, StreamBatchSampler
from s2s.tokenizer import Tokenizer

log = logging.getLogger(__name__)
ROW_LENGTH_STREAM = 2**32 - 2  # rng key of the training rows' lengths (data.min_row_length)
VALIDATION_EPOCH = 2**32 - 1  # the fixed noise "epoch" of validation and test data (never trained)


class S2SDataModule(L.LightningDataModule):
    def __init__(
        self, config: DataConfig, tokenizer: Tokenizer | None = None, add_bos: bool = False
    ) -> None:
        """`add_bos`: inputs and targets start with <s> (the framing of Hugging Face BART
        models); rows are then cut one token shorter than the configured lengths."""
        super().__init__()
        self.add_bos = add_bos
        if add_bos:
            config = dataclasses.replace(
                config,
                max_source_length=config.max_source_length - 1,
                max_target_length=config.max_target_length - 1,
            )
        self.config = config
        self._tokenizer = tokenizer
        self.micro_batch_size = config.micro_batch_size or config.batch_size
        self.datasets: dict[str, Dataset] = {}
        self.kinds: dict[str, str] = {}  # split -> "text" | "pairs"
        self.truncated: dict[str, int] = {}
        self._resume: dict | None = None  # a checkpoint's data position (s2s.resume)
        # (epoch, batches): the trainer's count of the epoch's batches where a resumed pass starts
        self.resume_start: tuple[int, int] | None = None
        self.corpus: dict[str, str] = {}  # split -> fingerprint of its rows
        self.train_sampler: BucketBatchSampler | StreamBatchSampler | None = None
        self._opened: dict[str, Prepared] = {}  # split -> its prepared directory

    # -- tokenizer ---------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer: given, loaded from data.tokenizer.path or the prepared train_dir, or
        trained (and cached)."""
        if self._tokenizer is None:
            if self.config.train_dir:
                self._tokenizer = Tokenizer.load(self._prepared("train").tokenizer_path)
            else:
                self._tokenizer = self._load_or_train_tokenizer()
        return self._tokenizer

    def _prepared(self, split: str) -> Prepared:
        if split not in self._opened:
            self._opened[split] = open_prepared(getattr(self.config, f"{split}_dir"))
        return self._opened[split]

    def _load_or_train_tokenizer(self) -> Tokenizer:
        settings = self.config.tokenizer
        if settings.path:
            return Tokenizer.load(settings.path)
        train = Path(self.config.train_path)
        cached = None
        if self.config.cache_dir:
            key = fingerprint(read_bytes(train), repr(settings).encode())
            cached = Path(self.config.cache_dir) / f"tokenizer-{key}.json"
            if cached.is_file():
                return Tokenizer.load(cached)
        records = read_records(train)
        texts = records.inputs + (records.targets or [])
        tokenizer = Tokenizer.from_config(settings, texts, source=train)
        if cached is not None:
            tokenizer.save(cached)
        return tokenizer

    # -- datasets ----------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        splits = {"train": cfg.train_path, "val": cfg.val_path}
        if stage in ("test", None):
            splits["test"] = cfg.test_path
        for split, path in splits.items():
            if split in self.datasets:
                continue
            if getattr(cfg, f"{split}_dir", None):
                self.datasets[split] = self._build_streamed(split)
            elif path:
                tokenized = tokenize_file(path, self.tokenizer, cfg.cache_dir)
                self.kinds[split] = tokenized.kind
                parts = [tokenized.inputs.ids, tokenized.inputs.offsets]
                if tokenized.targets is not None:
                    parts += [tokenized.targets.ids, tokenized.targets.offsets]
                else:  # what joins packed texts (EOS; "\n\n" before: other rows)
                    parts.append(np.asarray(end_of_document(self.tokenizer)))
                self.corpus[split] = self._fingerprint(*(a.tobytes() for a in parts))
                self.datasets[split] = self._build(split, tokenized)

    def _build_streamed(self, split: str) -> Dataset:
        """A prepared directory, read block by block from disk (s2s.data.prepared)."""
        cfg, tok, prepared = self.config, self.tokenizer, self._prepared(split)
        if split == "train" and cfg.objective == "bart" and cfg.max_source_length <= 64:
            # data=stream inherits conf/data/shakespeare.yaml: say so, a corpus user rarely
            # wants 64-token rows of 10% BART masking
            log.warning(
                "%s: streaming with the demo's noise (data.objective=bart, %d-token rows); "
                "for T5-style pre-training use data.objective=t5 data.max_source_length=512 "
                "data.max_target_length=114, or experiment=t5_base_c4",
                prepared.directory,
                cfg.max_source_length,
            )
        if Tokenizer.load(prepared.tokenizer_path).backend.to_str() != tok.backend.to_str():
            raise PreparedError(
                f"{prepared.directory}: prepared with another tokenizer than the run's: prepare "
                "it with --tokenizer pointing at the training directory (or the model's tokenizer)"
            )
        manifest = prepared.manifest
        if warning := manifest.legacy_warning(prepared.directory):
            log.warning(warning)
        self.kinds[split] = manifest.kind
        self.corpus[split] = self._fingerprint(manifest.fingerprint.encode())
        lengths = {"max_source_length": cfg.max_source_length}
        lengths["max_target_length"] = cfg.max_target_length
        if manifest.kind == "pairs":
            inputs, targets = (Documents(prepared.streams[n]) for n in ("input", "target"))
            self._count_truncated(split, "Input", inputs.lengths, cfg.max_source_length)
            self._count_truncated(split, "Target", targets.lengths, cfg.max_target_length)
            return PairDataset(inputs, targets, eos_id=tok.eos_id, **lengths)
        rows = Documents(prepared.streams["text"], len(manifest.separator))
        if cfg.pack:
            rows = PackedBlocks(
                prepared.streams["text"], block_length(cfg), len(manifest.separator)
            )
        return self._text_dataset(split, rows)

    def document_texts(self, split: str, limit: int) -> list[str]:
        """The decoded text of the first `limit` documents of a prepared split."""
        prepared = self._prepared(split)
        if prepared.manifest.kind != "text":
            return []
        docs = Documents(prepared.streams["text"], len(prepared.manifest.separator))
        return [self.tokenizer.decode(docs[i].tolist()) for i in range(min(limit, len(docs)))]

    def _fingerprint(self, *parts: bytes) -> str:
        """The rows' identity: their source, and the settings that cut it into rows."""
        cfg = self.config
        shape = (cfg.pack, block_length(cfg), cfg.min_row_length, cfg.max_source_length)
        return fingerprint(*parts, repr(shape).encode())

    def resume_from(self, state: dict) -> None:
        """Start training where a checkpoint's data position (`s2s.data.position`) says."""
        self._resume = state

    def data_position(self, epoch: int, batches: int) -> dict:
        """The checkpoint's record of where training is: rows of `epoch`'s order consumed
        once every rank finished `batches` of it, and the split and corpus behind them."""
        sampler, trainer = self.train_sampler, self.trainer
        if sampler is not None and sampler.epoch == epoch:
            rows = sampler.rows_done(batches)
        else:  # the epoch's pass has not begun
            rows = min(
                len(self.datasets["train"]), batches * self.micro_batch_size * trainer.world_size
            )
        return self._position(epoch, rows, trainer).state(batches)

    def _position(self, epoch: int, rows: int, trainer) -> DataPosition:
        return DataPosition(
            epoch=epoch,
            rows=rows,
            global_batch=self.config.batch_size,
            micro_batch_size=self.micro_batch_size,
            accumulation=trainer.accumulate_grad_batches,
            world_size=trainer.world_size,
            seed=self.config.seed,
            corpus=self.corpus["train"],
            num_rows=len(self.datasets["train"]),
        )

    def _build(self, split: str, tokenized: TokenizedFile) -> Dataset:
        cfg, tok = self.config, self.tokenizer
        lengths = {"max_source_length": cfg.max_source_length}
        lengths["max_target_length"] = cfg.max_target_length
        if tokenized.targets is not None:
            self._count_truncated(split, "Input", tokenized.inputs.lengths, cfg.max_source_length)
            self._count_truncated(split, "Target", tokenized.targets.lengths, cfg.max_target_length)
            return PairDataset(tokenized.inputs, tokenized.targets, eos_id=tok.eos_id, **lengths)
        rows, block = tokenized.inputs, block_length(cfg)
        if cfg.pack:
            short = cfg.min_row_length if split == "train" else None
            rows = pack(
                rows,
                block,
                separator=end_of_document(tok),  # as prepared corpora (s2s.data.prepared)
                min_length=None if short is None else min(short, block),
                rng=np.random.default_rng([cfg.seed, ROW_LENGTH_STREAM]),
            )
        else:
            rows, cut = truncate(rows, block)
            self._warn_truncated(split, "Text", cut, len(rows), block)
        return self._text_dataset(split, rows)

    def _text_dataset(self, split: str, rows) -> TextDataset:
        """Text rows (in memory or streamed) noised by the objective; validation noise fixed."""
        cfg = self.config
        return TextDataset(
            rows,
            build_objective(cfg, self.tokenizer),
            seed=cfg.seed,
            eos_id=self.tokenizer.eos_id,
            max_source_length=cfg.max_source_length,
            max_target_length=cfg.max_target_length,
            fixed_epoch=None if split == "train" else VALIDATION_EPOCH,
        )

    def _count_truncated(self, split: str, field: str, lengths, max_length: int) -> None:
        cut = int((lengths > max_length - 1).sum())  # one place is kept for EOS
        self._warn_truncated(split, field, cut, len(lengths), max_length - 1)

    def _warn_truncated(self, split: str, field: str, cut: int, total: int, limit: int) -> None:
        self.truncated[f"{split}/{field}"] = cut
        if cut:
            log.warning(
                "%s: truncated %d of %d %s texts to %d tokens (raise data.max_source_length / "
                "data.max_target_length to keep them whole)",
                split,
                cut,
                total,
                field,
                limit,
            )

    # -- loaders -----------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"data.{split}_path is not set, so there is no {split} data")
        dataset = self.datasets[split]
        trainer = self.trainer if self._has_trainer() else None
        shard = {
            "num_replicas": trainer.world_size if trainer else 1,
            "rank": trainer.global_rank if trainer else 0,
        }
        if split == "train":  # the order of in-memory rows is cut into global batches
            shard["global_batch_size"] = self.config.batch_size
        if isinstance(getattr(dataset, "rows", None), PackedBlocks):  # full blocks: no buckets
            sampler = StreamBatchSampler(
                len(dataset), self.micro_batch_size, shuffle=shuffle, seed=self.config.seed, **shard
            )
        else:
            sampler = BucketBatchSampler(
                dataset.lengths,
                self.micro_batch_size,
                shuffle=shuffle,
                seed=self.config.seed,
                bucket_size=self.config.bucket_size,
                **shard,
            )
        if split == "train":
            self.train_sampler = sampler
            if sampler.wrapped_rows:  # docs/data.md "Corpora larger than memory"
                log.info(
                    "%d of %d training rows are seen twice an epoch so that each of %d ranks "
                    "gets %d batches (the last micro-batches wrap around to the epoch's start)",
                    sampler.wrapped_rows,
                    sampler.num_rows,
                    sampler.num_replicas,
                    len(sampler),
                )
            if self._resume is not None:
                now = self._position(0, 0, trainer)
                start = resume_point(self._resume, now, force=self.config.force_resume)
                sampler.resume(start.epoch, start.row, start.global_batch)
                sampler.set_epoch(start.epoch)
                self.resume_start = (start.epoch, len(sampler) - sampler.remaining())
                self._resume = None
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=partial(
                collate,
                pad_id=self.tokenizer.pad_id,
                bos_id=self.tokenizer.bos_id if self.add_bos else None,
            ),
            num_workers=workers,
            persistent_workers=workers > 0,
            # page-locked batches copy to a GPU asynchronously (and only there is it worth it)
            pin_memory=self._on_cuda(),
        )

    def _on_cuda(self) -> bool:
        return self._has_trainer() and self.trainer.strategy.root_device.type == "cuda"

    def _has_trainer(self) -> bool:
        try:
            return self.trainer is not None
        except RuntimeError:
            return False
