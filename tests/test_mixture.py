"""UL2-style mixture of denoisers (s2s.data.mixture): shares, noise statistics, lengths,
config errors, and both data paths (in-memory and prepared/streamed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from s2s.data.config import DataConfig
from s2s.data.datamodule import S2SDataModule
from s2s.data.examples import IGNORE_INDEX
from s2s.data.mixture import DenoiserConfig
from s2s.data.noising import noise_rng, t5_reconstruct
from s2s.data.objectives import block_length, build_objective
from s2s.prepare import prepare

MIXTURE = {
    "R": {
        "weight": 0.5,
        "kind": "spans",
        "noise_density": 0.15,
        "mean_noise_span_length": 3.0,
        "mode": "[NLU]",
    },
    "X": {
        "weight": 0.3,
        "kind": "spans",
        "noise_density": 0.5,
        "mean_noise_span_length": 8.0,
        "mode": "[NLG]",
    },
    "S": {"weight": 0.2, "kind": "prefix", "noise_density": 0.25, "mode": "[S2S]"},
}


def config(**values) -> DataConfig:
    base = {
        "train_path": "x",
        "objective": "mixture",
        "max_source_length": 96,
        "max_target_length": 64,
        "noise": {"mixture": MIXTURE},
    }
    return DataConfig.from_dict(base | values)


def test_denoisers_are_drawn_by_weight_and_noise_as_configured(tokenizer):
    cfg = config()
    objective = build_objective(cfg, tokenizer)
    normal = np.setdiff1d(np.arange(tokenizer.vocab_size), tokenizer.special_ids)
    raw = block_length(cfg)
    modes = {d.name: d.mode_ids.tolist() for d in objective.denoisers}
    sentinels = set(tokenizer.sentinel_ids)
    stats = {name: {"rows": 0, "noise": 0, "tokens": 0, "spans": 0} for name in modes}
    rng = np.random.default_rng(0)
    for index in range(3000):
        ids = rng.choice(normal, size=raw)
        example = objective(ids, noise_rng(1, 0, index))
        name = next(n for n, m in modes.items() if example.input_ids[: len(m)].tolist() == m)
        d = next(d for d in objective.denoisers if d.name == name)
        assert len(example.input_ids) <= 96 and len(example.target_ids) <= 64
        assert example.input_ids[-1] == example.target_ids[-1] == tokenizer.eos_id
        target = example.target_ids[:-1]
        spans = int(sum(t in sentinels for t in target.tolist()))
        s = stats[name]
        s["rows"] += 1
        s["tokens"] += d.raw_length
        s["noise"] += len(target) - spans
        s["spans"] += spans
    total = sum(s["rows"] for s in stats.values())
    for name, s in stats.items():
        settings = MIXTURE[name]
        assert s["rows"] / total == pytest.approx(settings["weight"], abs=0.03), name
        assert s["noise"] / s["tokens"] == pytest.approx(settings["noise_density"], abs=0.02)
        if settings["kind"] == "spans":
            mean_span = s["noise"] / s["spans"]
            assert mean_span == pytest.approx(settings["mean_noise_span_length"], rel=0.15)
        else:
            assert s["spans"] == 0  # prefix LM: the target is the row's end, no sentinels


def test_prefix_denoiser_splits_the_row_into_context_and_continuation(tokenizer):
    cfg = config(noise={"mixture": {"S": MIXTURE["S"]}})
    objective = build_objective(cfg, tokenizer)
    ids = np.arange(200, 260)
    example = objective(ids, np.random.default_rng(0))
    mode = objective.denoisers[0].mode_ids.tolist()
    assert tokenizer.decode(mode) == "[S2S]"
    context, continuation = example.input_ids[len(mode) : -1], example.target_ids[:-1]
    assert context.tolist() + continuation.tolist() == ids.tolist()
    assert len(continuation) == 15  # 25% of 60


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"R": {"wieght": 1.0}}, r"unknown key data\.noise\.mixture\.R\.wieght"),
        ({"R": MIXTURE["R"] | {"kind": "gaps"}}, r"data\.noise\.mixture\.R\.kind='gaps'"),
        ({"R": MIXTURE["R"] | {"noise_density": 1.5}}, r"data\.noise\.mixture\.R\.noise_density"),
    ],
)
def test_bad_denoiser_settings_name_their_key(change, message):
    with pytest.raises(ValueError, match=message):
        config(noise={"mixture": MIXTURE | change})


def test_all_zero_weights_and_too_few_sentinels_are_refused(tokenizer):
    zero = {n: v | {"weight": 0} for n, v in MIXTURE.items()}
    with pytest.raises(ValueError, match="every denoiser has weight 0"):
        build_objective(config(noise={"mixture": zero}), tokenizer)
    many = {"R": MIXTURE["R"] | {"mean_noise_span_length": 1.0}}  # ~13 spans, 8 sentinels
    with pytest.raises(ValueError, match=r"mixture\.R makes up to \d+ noise spans"):
        build_objective(config(noise={"mixture": many}), tokenizer)
    assert isinstance(DenoiserConfig(1.0), DenoiserConfig)


def test_mixture_trains_from_memory_and_from_a_prepared_directory(tokenizer, write, tmp_path):
    texts = [" ".join(["the king and the queen went home"] * (3 + i % 5)) for i in range(60)]
    path = write("train.json", json.dumps([{"Text": t} for t in texts]))
    tok = tokenizer.save(tmp_path / "tok.json")
    prepare([str(path)], tmp_path / "prepared", tokenizer=str(tok), progress=False)
    for paths in (
        {"train_path": str(path), "val_path": str(path)},
        {"train_dir": str(tmp_path / "prepared"), "val_dir": str(tmp_path / "prepared")},
    ):
        cfg = config(**({"train_path": None} | paths), batch_size=4, num_workers=0, cache_dir=None)
        dm = S2SDataModule(cfg, tokenizer=tokenizer)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["input_ids"].shape[1] <= 96 and batch["labels"].shape[1] <= 64
        for row in range(4):
            assert_row_restores_the_text(tokenizer, batch, row)


STORY = "the king and the queen went home " * 8  # every text is this sentence repeated


def assert_row_restores_the_text(tokenizer, batch, row: int) -> None:
    """A row is a mode prefix, then either span corruption (put the spans back: t5_reconstruct)
    or a prefix whose target continues it; either way, a slice of the packed texts ("\n\n"
    between texts) comes back, each text's part a piece of the repeated sentence."""
    ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
    labels = [t for t in batch["labels"][row].tolist() if t != IGNORE_INDEX]
    modes = {m: tokenizer.encode(m) for m in ("[NLU]", "[NLG]", "[S2S]")}
    mode = next(m for m, prefix in modes.items() if ids[: len(prefix)] == prefix)
    rest = ids[len(modes[mode]) :]
    if mode == "[S2S]":
        restored = rest[:-1] + labels[:-1]  # input, target: each ends in EOS
    else:
        restored = t5_reconstruct(rest, labels, tokenizer.sentinel_ids, tokenizer.eos_id).tolist()
    text = tokenizer.decode(restored)
    assert text.strip()
    for piece in text.split("\n\n"):
        assert piece.strip() in STORY, (mode, piece)
