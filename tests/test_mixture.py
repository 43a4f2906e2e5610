"""UL2's mixture of denoisers (s2s.data.mixture, s2s.data.ul2): the paper's seven denoisers and
mixing, their statistics over many rows, the S cut's distribution, whole rows (no stream token
lost), lengths and config errors, and both data paths (in-memory and prepared/streamed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from s2s.data.config import DataConfig
from s2s.data.datamodule import S2SDataModule
from s2s.data.examples import IGNORE_INDEX
from s2s.data.mixture import (
    DenoiserConfig,
    default_mixture,
    mixture_block_length,
    mode_budget,
)
from s2s.data.noising import noise_counts, noise_rng, t5_reconstruct
from s2s.data.objectives import build_objective
from s2s.data.ul2 import Denoiser, MixtureObjective, build_mixture, prefix_split
from s2s.prepare import prepare

# Stand-in ids, no tokenizer needed: mode text -> one id a byte, sentinels, EOS, and row
# tokens from STREAM up, all distinct, so where each row token went can be read back.
EOS, SENTINELS, STREAM = 1, list(range(2000, 2300)), 10_000
UL2_LENGTHS = (512, 512)  # UL2's inputs/targets (the google/ul2 model card)


def encode(text: str) -> list[int]:
    return [1000 + b for b in text.encode("utf-8")]


def ul2(lengths=UL2_LENGTHS, mixture=None):
    """(objective, block length) of `mixture` (default: UL2's) at (max_source, max_target)."""
    mixture = mixture or default_mixture()
    block = mixture_block_length(mixture, *lengths)
    objective = build_mixture(
        mixture, encode=encode, sentinel_ids=SENTINELS, eos_id=EOS, block_length=block
    )
    return objective, block


def restore(objective, denoiser, example) -> np.ndarray:
    """The row an example was made from: the mode text off, then the spans put back (span
    denoisers) or the target joined to the input (prefix)."""
    inputs = example.input_ids[len(denoiser.mode_ids) :]
    if denoiser.config.kind == "prefix":
        return np.concatenate([inputs[:-1], example.target_ids[:-1]])
    return t5_reconstruct(inputs, example.target_ids, SENTINELS, EOS)


def test_the_default_mixture_is_ul2s_seven_denoisers_and_mixing():
    # Tay et al. 2022 Sec. 3.1.2: (kind, mean span, density, mode); S 20%, R and X 40% each.
    paper = {
        ("spans", 3.0, 0.15, "[NLU]"): 0.2,
        ("spans", 8.0, 0.15, "[NLU]"): 0.2,
        ("spans", 3.0, 0.5, "[NLG]"): 0.1,
        ("spans", 8.0, 0.5, "[NLG]"): 0.1,
        ("spans", 64.0, 0.15, "[NLG]"): 0.1,
        ("spans", 64.0, 0.5, "[NLG]"): 0.1,
        ("prefix", None, 0.5, "[S2S]"): 0.2,
    }
    ours = {
        (
            c.kind,
            c.mean_noise_span_length if c.kind == "spans" else None,
            c.noise_density,
            c.mode,
        ): c.weight
        for c in default_mixture().values()
    }
    assert ours == paper


def test_denoisers_are_drawn_by_weight():
    objective, _ = ul2()
    draws = [objective.choose(noise_rng(3, 0, i)) for i in range(20_000)]
    for denoiser in objective.denoisers:
        share = sum(d.name == denoiser.name for d in draws) / len(draws)
        assert share == pytest.approx(denoiser.config.weight, abs=0.01), denoiser.name
    modes = {mode: sum(d.config.mode == mode for d in draws) / len(draws) for mode in MODES}
    assert modes == pytest.approx(MODES, abs=0.01)


MODES = {"[NLU]": 0.4, "[NLG]": 0.4, "[S2S]": 0.2}  # UL2's R, X and S shares


# Hand-worked at UL2's 512/512: rows of 506 tokens (S's worst input: 6 for "[S2S]" + 506);
# noise = round(506 r) (76 at 15%, 253 at 50%), spans = round(noise / mean).
SPANS_AT_506 = {"R1": (76, 25), "R2": (76, 10), "X1": (253, 84), "X2": (253, 32)}
SPANS_AT_506 |= {"X3": (76, 1), "X4": (253, 4)}


def test_span_denoisers_mask_the_papers_densities_and_span_lengths():
    objective, block = ul2()
    assert block == 506
    sentinels = set(SENTINELS)
    for denoiser in objective.denoisers:
        if denoiser.config.kind != "spans":
            continue
        noise = spans = 0
        for index in range(100):
            row = np.arange(STREAM, STREAM + block)
            target = objective.apply(denoiser, row, noise_rng(5, 0, index)).target_ids[:-1]
            marks = sum(int(t) in sentinels for t in target)
            spans, noise = spans + marks, noise + len(target) - marks
        assert (noise / 100, spans / 100) == SPANS_AT_506[denoiser.name]
        density = denoiser.config.noise_density
        assert noise / (100 * block) == pytest.approx(density, abs=0.002), denoiser.name
        # T5 rounds the span count: 76 noise tokens at mean 64 make one span of 76.
        mean = denoiser.config.mean_noise_span_length
        assert noise / spans == pytest.approx(mean, rel=0.2), denoiser.name


def test_the_s_denoiser_cuts_the_row_uniformly_at_random():
    objective, block = ul2()
    s = next(d for d in objective.denoisers if d.name == "S")
    cuts = []
    for index in range(4000):
        example = objective.apply(s, np.arange(STREAM, STREAM + block), noise_rng(7, 0, index))
        cuts.append(len(example.input_ids) - len(s.mode_ids) - 1)
    cuts = np.sort(cuts)
    assert cuts[0] >= 1 and cuts[-1] <= block - 1  # both sides keep a token
    # Kolmogorov-Smirnov against the discrete uniform over [1, block - 1]: the statistic is
    # below 0.026 (the 1% critical value for 4,000 draws, 1.63 / sqrt(4000)).
    expected = np.arange(1, block) / (block - 1)  # CDF at 1..block-1
    empirical = np.searchsorted(cuts, np.arange(1, block), side="right") / len(cuts)
    assert np.abs(empirical - expected).max() < 0.026


def test_a_prefix_denoiser_below_half_density_keeps_its_mean_target_share():
    mixture = {"S": DenoiserConfig(1.0, "prefix", 0.25, mode="[S2S]")}
    objective, block = ul2((96, 64), mixture)
    shares = []
    for index in range(2000):
        example = objective(np.arange(STREAM, STREAM + block), noise_rng(9, 0, index))
        shares.append((len(example.target_ids) - 1) / block)
    assert max(shares) <= 0.5 + 1 / block  # at most twice the density
    assert np.mean(shares) == pytest.approx(0.25, abs=0.01)
    assert np.std(shares) == pytest.approx(0.5 / np.sqrt(12), abs=0.01)  # uniform over [0, 0.5]


@pytest.mark.parametrize("lengths", [UL2_LENGTHS, (64, 64), (1024, 1024)])
def test_every_stream_token_lands_once_in_the_input_or_the_target(lengths):
    """No waste: each row comes back whole from its example, within the length limits."""
    objective, block = ul2(lengths)
    max_source, max_target = lengths
    stream, used = 0, 0
    for index in range(700):
        rng = noise_rng(11, 0, index)
        denoiser = objective.choose(noise_rng(11, 0, index))  # the draw __call__ makes
        row = np.arange(STREAM, STREAM + block)
        example = objective(row, rng)
        assert len(example.input_ids) <= max_source and len(example.target_ids) <= max_target
        restored = restore(objective, denoiser, example)
        np.testing.assert_array_equal(restored, row)
        present = np.concatenate([example.input_ids, example.target_ids])
        stream, used = stream + block, used + int(np.isin(row, present).sum())
    assert 1 - used / stream < 0.05  # the bar; whole rows make it 0
    assert used == stream


def test_config_errors_name_the_keys_and_the_lengths_needed():
    with pytest.raises(ValueError, match=r"data\.max_target_length=114: raise it to 506"):
        DataConfig.from_dict({"objective": "mixture", "max_target_length": 114} | MAX_512)
    with pytest.raises(ValueError, match=r"mixture\.S\.noise_density=0\.75.*at most 0\.5"):
        DataConfig.from_dict(
            {
                "objective": "mixture",
                "noise": {"mixture": {"S": MIXTURE["S"] | {"noise_density": 0.75}}},
            }
        )
    with pytest.raises(ValueError, match=r"data\.max_source_length=2 is too short"):
        mixture_block_length(default_mixture(), 2, 512)


MAX_512 = {"max_source_length": 512}
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
        config(noise={"mixture": zero})
    many = {"R": MIXTURE["R"] | {"mean_noise_span_length": 1.0}}  # ~13 spans, 8 sentinels
    with pytest.raises(ValueError, match=r"mixture\.R makes up to \d+ noise spans"):
        build_objective(config(noise={"mixture": many}), tokenizer)


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
    or a prefix whose target continues it; either way, a slice of the packed texts comes back,
    each text's part (texts end at an end-of-document EOS or "\n\n") a piece of the sentence."""
    ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
    labels = [t for t in batch["labels"][row].tolist() if t != IGNORE_INDEX]
    modes = {m: tokenizer.encode(m) for m in ("[NLU]", "[NLG]", "[S2S]")}
    mode = next(m for m, prefix in modes.items() if ids[: len(prefix)] == prefix)
    rest = ids[len(modes[mode]) :]
    if mode == "[S2S]":
        restored = np.array(rest[:-1] + labels[:-1])  # input, target: each ends in EOS
    else:
        restored = t5_reconstruct(rest, labels, tokenizer.sentinel_ids, tokenizer.eos_id)
    assert len(restored)
    ends = np.flatnonzero(restored == tokenizer.eos_id)
    for part in np.split(restored, ends):
        for piece in tokenizer.decode(part.tolist()).split("\n\n"):
            assert piece.strip() in STORY, (mode, piece)


@pytest.mark.parametrize(("length", "cuts"), [(2, {1}), (3, {1, 2}), (10, set(range(1, 10)))])
def test_a_short_row_is_cut_at_every_place_that_leaves_both_sides_a_token(length, cuts):
    """At density 0.5 the S cut is uniform over [1, length - 1] (T5's random_prefix_noise_mask):
    a 2-token row is always cut after its first token."""
    seen = {prefix_split(length, 0.5, np.random.default_rng(seed)) for seed in range(300)}
    assert seen == cuts
    assert prefix_split(1, 0.5, np.random.default_rng(0)) == 1  # too short: stays whole
    assert prefix_split(0, 0.5, np.random.default_rng(0)) == 0


class Draw:
    """A generator whose `random()` returns a fixed number."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_a_draw_above_rounded_cumulative_weights_takes_the_last_denoiser():
    """Cumulative weights may end a hair below 1 in floating point: a draw above the last
    still picks the last denoiser, and a draw on a boundary the next one."""
    config = DenoiserConfig(1.0, "prefix", 0.5)
    denoisers = tuple(Denoiser(name, config, np.zeros(0, dtype=np.int64)) for name in "ab")
    objective = MixtureObjective(denoisers, np.array([0.5, 0.9999]), tuple(SENTINELS), EOS)
    assert objective.choose(Draw(0.99995)).name == "b"
    assert objective.choose(Draw(0.25)).name == "a"
    assert objective.choose(Draw(0.5)).name == "b"


def test_examples_are_int64_whatever_the_rows_dtype():
    objective, block = ul2()
    ids = np.arange(STREAM, STREAM + block, dtype=np.int32)
    for denoiser in objective.denoisers:
        example = objective.apply(denoiser, ids, np.random.default_rng(0))
        assert example.input_ids.dtype == example.target_ids.dtype == np.int64, denoiser.name
    no_mode = build_mixture(
        {"S": DenoiserConfig(1.0, "prefix", 0.5)},
        encode=encode,
        sentinel_ids=SENTINELS,
        eos_id=EOS,
        block_length=16,
    )
    assert no_mode.denoisers[0].mode_ids.dtype == np.int64
    assert len(no_mode.denoisers[0].mode_ids) == 0


def test_a_mode_text_may_take_its_budget_and_no_more():
    """The rows keep mode_budget = UTF-8 bytes + 1 positions for the mode text; a tokenizer
    that makes more tokens of it is refused, naming the key and both counts."""
    mixture = {"S": DenoiserConfig(1.0, "prefix", 0.5, mode="[S2S]")}
    assert mode_budget(mixture["S"]) == 6
    for extra, ok in ((1, True), (2, False)):

        def encode_long(text, extra=extra):
            return [7] * (len(text.encode("utf-8")) + extra)

        def build(encode_long=encode_long):
            return build_mixture(
                mixture, encode=encode_long, sentinel_ids=SENTINELS, eos_id=EOS, block_length=16
            )

        if ok:
            assert len(build().denoisers[0].mode_ids) == 6
            continue
        message = (
            r"^data\.noise\.mixture\.S\.mode='\[S2S\]' encodes to 7 tokens, more than the 6 "
            r"its rows keep room for: shorten it$"
        )
        with pytest.raises(ValueError, match=message):
            build()


def test_exactly_as_many_sentinels_as_spans_is_enough():
    mixture = {"R": DenoiserConfig(1.0, "spans", 0.15, 3.0)}
    spans = noise_counts(200, 0.15, 3.0)[1]
    assert spans == 10  # round(200 * 0.15) = 30 noise tokens in round(30 / 3) spans

    def build(n: int):
        return build_mixture(
            mixture, encode=encode, sentinel_ids=SENTINELS[:n], eos_id=EOS, block_length=200
        )

    assert build(spans).sentinel_ids == tuple(SENTINELS[:spans])
    message = (
        r"^data\.noise\.mixture\.R makes up to 10 noise spans per row, but the tokenizer has 9 "
        r"sentinels: raise data\.tokenizer\.num_sentinels$"
    )
    with pytest.raises(ValueError, match=message):
        build(spans - 1)
