"""Hugging Face model directories through the real entry points: generate.py (prompt and
file modes) gives the text `transformers` decodes, train.py fine-tunes and continues
pre-training from them with their own tokenizer and framing, export writes them back, and
what cannot be read is one clear error.

The directories (tests/helpers/hf_dirs.py) are made here by `transformers` and `tokenizers`
with random weights, laid out as `save_pretrained` lays out t5-small / flan-t5 / bart-base.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.hf_dirs import T5_SENTINELS, make_bart_dir, make_t5_dir
from helpers.train import compose_generate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from s2s import load_pretrained
from s2s.bundle import read_pretrained
from s2s.checkpoint import CheckpointError
from s2s.pipeline import generate, train

REPO = Path(__file__).resolve().parents[1]
KINDS = ("t5_v1.1", "t5_v1.0", "bart")
MAX_NEW = 12
PROMPTS = [
    "To be, or <MASK> to be: that is the question.",
    "Héllo wörld, ça va? Straße — naïve café",  # non-ASCII (T5's unigram has no é: <unk>)
    "And the earth was without form, and void.",
    " ".join(["Whether 'tis nobler in the mind to suffer"] * 12),  # past the input limit
]


def run_generate(args: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(REPO / "generate.py"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "t5_v1.1": make_t5_dir(root / "t5_v1.1", "v1.1"),
        "t5_v1.0": make_t5_dir(root / "t5_v1.0", "v1.0"),
        "bart": make_bart_dir(root / "bart"),
    }


def prompts_for(kind: str) -> list[str]:
    mask = "<mask>" if kind == "bart" else "<extra_id_0>"
    return [p.replace("<MASK>", mask) for p in PROMPTS]


def hf_outputs(directory: Path, prompts: list[str], num_beams: int) -> list[str]:
    """What `transformers` generates and decodes for each prompt, one at a time."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    outputs = []
    for prompt in prompts:
        batch = tokenizer([prompt], return_tensors="pt", truncation=True)
        ids = model.generate(**batch, max_new_tokens=MAX_NEW, num_beams=num_beams, do_sample=False)
        outputs.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return outputs


@pytest.mark.parametrize("num_beams", [1, 4], ids=["greedy", "beam4"])
@pytest.mark.parametrize("kind", KINDS)
def test_generate_file_matches_transformers(dirs, kind, num_beams, tmp_path, capsys):
    prompts = prompts_for(kind)
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    strategy = (
        ["generate.strategy=beam", f"generate.num_beams={num_beams}"] if num_beams > 1 else []
    )
    cfg = compose_generate(
        f"ckpt={dirs[kind]}", f"input_file={source}", f"output_file={tmp_path / 'out.jsonl'}",
        "batch_size=2", f"generate.max_new_tokens={MAX_NEW}", *strategy,
    )  # fmt: skip
    generate(cfg)
    ours = [json.loads(line)["output"] for line in (tmp_path / "out.jsonl").open()]
    theirs = hf_outputs(dirs[kind], prompts, num_beams)
    assert ours == theirs
    assert len(set(theirs)) >= 3  # the prompts lead to different outputs: a real comparison
    assert "cut to" in capsys.readouterr().err  # the long prompt was truncated, as HF did


def test_generate_py_prompt_matches_transformers(dirs, tmp_path):
    """The command line itself, on a BART directory (forced <s> first and </s> last)."""
    prompt = prompts_for("bart")[0]
    run = run_generate(
        [f"ckpt={dirs['bart']}", f"prompt='{prompt}'", f"generate.max_new_tokens={MAX_NEW}"]
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip("\n") == hf_outputs(dirs["bart"], [prompt], 1)[0]


def test_read_directory_takes_framing_and_special_tokens_from_its_files(dirs):
    t5 = read_pretrained(dirs["t5_v1.1"])
    assert (t5.framing.add_bos, t5.framing.max_source_length) == (False, 48)
    assert t5.config.decoder_start_token_id == t5.tokenizer.pad_id == 0
    assert not t5.config.tie_embeddings and not t5.config.scale_logits
    # T5 numbers its sentinels from the top of the vocabulary downwards
    top = t5.tokenizer.vocab_size - 1
    assert t5.tokenizer.sentinel_ids[:2] == [top, top - 1]
    assert len(t5.tokenizer.sentinel_ids) == T5_SENTINELS
    v10 = read_pretrained(dirs["t5_v1.0"])
    assert v10.config.tie_embeddings and v10.config.scale_logits
    bart = read_pretrained(dirs["bart"])
    assert bart.framing.add_bos and bart.framing.max_source_length == 40
    assert (bart.framing.forced_bos_token_id, bart.framing.forced_eos_token_id) == (0, 2)
    assert bart.config.decoder_start_token_id == bart.tokenizer.eos_id == 2


@pytest.mark.parametrize("layout", ["sharded_safetensors", "pytorch_model_bin"])
def test_other_weight_layouts_load_equal(dirs, layout, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    hf = AutoModelForSeq2SeqLM.from_pretrained(dirs["t5_v1.1"])
    if layout == "sharded_safetensors":
        hf.save_pretrained(tmp_path, max_shard_size="100KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    else:
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
        (tmp_path / "config.json").write_text((dirs["t5_v1.1"] / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((dirs["t5_v1.1"] / name).read_bytes())
    expected = read_pretrained(dirs["t5_v1.1"]).state_dict
    got = read_pretrained(tmp_path).state_dict
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_hostile_pytorch_model_bin_never_runs_code(dirs, tmp_path):
    directory = tmp_path / "hostile"
    directory.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((dirs["t5_v1.1"] / name).read_bytes())
    marker = tmp_path / "pwned"
    state = {"shared.weight": torch.zeros(2, 2), "payload": _Payload(marker)}
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused"):
        load_pretrained(directory)
    assert not marker.exists()


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def test_unreadable_directories_are_one_line_each(dirs, tmp_path):
    missing = _copy(dirs["t5_v1.1"], tmp_path / "missing")
    weights = load_file(missing / "model.safetensors")
    del weights["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
    save_file(weights, missing / "model.safetensors")
    wrong_type = _copy(dirs["t5_v1.1"], tmp_path / "gpt2")
    config = json.loads((wrong_type / "config.json").read_text())
    (wrong_type / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    small = _copy(dirs["bart"], tmp_path / "small_vocab")
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    cases = {
        missing: r"missing weight 'decoder\.block\.1\.layer\.2\.DenseReluDense\.wo\.weight'",
        wrong_type: r"model_type 'gpt2' is not supported",
        small: r"the tokenizer has 400 tokens but the model's vocabulary only 100",
    }
    runs = {directory: run_generate([f"ckpt={directory}", "prompt=hello"]) for directory in cases}
    for directory, pattern in cases.items():
        run = runs[directory]
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and len(lines) == 1, run.stderr
        assert lines[0].startswith("error: ") and str(directory) in lines[0]
        assert re.search(pattern, lines[0]), lines[0]


def test_finetune_from_directory_then_export_back(dirs, cfg_train, tmp_path):
    """train.py init_from=<bart dir> on pairs: the directory's tokenizer and framing (inputs and
    labels `<s> ... </s>`, decoding from </s>), no copy warm-up; then `s2s.export --format hf`
    gives a directory `transformers` loads with the fine-tuned checkpoint's logits."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from s2s.export import main as export_main

    source = read_pretrained(dirs["bart"])
    cfg = cfg_train(f"init_from={dirs['bart']}", "copy_warmup.steps=5", kind="pairs")
    result = train(cfg)
    ckpt = read_pretrained(result["last_checkpoint"])
    assert ckpt.tokenizer.digest() == source.tokenizer.digest()  # no tokenizer trained
    assert ckpt.config == source.config  # the directory's architecture and dropouts
    assert ckpt.framing.add_bos and ckpt.framing.forced_bos_token_id == 0
    changed = [
        k for k in source.state_dict if not torch.equal(ckpt.state_dict[k], source.state_dict[k])
    ]
    assert changed  # it trained

    out = tmp_path / "exported"
    assert export_main([result["last_checkpoint"], str(out), "--format", "hf"]) == 0
    hf = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    batch = hf_tokenizer(
        ["And God said, Let there be light", "Hi"], return_tensors="pt", padding=True
    )
    assert batch.input_ids[0, 0] == 0 and 2 in batch.input_ids[0].tolist()  # <s> ... </s>
    decoder = torch.tensor([[2, 0, 55, 82]] * 2)
    model, _ = load_pretrained(result["last_checkpoint"])
    with torch.no_grad():
        ours = model(batch.input_ids, decoder, batch.attention_mask.bool())
        theirs = hf(**batch, decoder_input_ids=decoder).logits
    assert (ours - theirs).abs().max() < 1e-4


def test_training_batches_use_the_directorys_framing(dirs, tiny_data):
    """BART pairs: inputs and labels framed `<s> ... </s>`, within the configured lengths."""
    from s2s.data.config import DataConfig
    from s2s.data.datamodule import S2SDataModule

    tokenizer = read_pretrained(dirs["bart"]).tokenizer
    config = DataConfig.from_dict(
        {"train_path": str(tiny_data["pairs_train"]), "val_path": str(tiny_data["pairs_val"]),
         "max_source_length": 16, "max_target_length": 12, "batch_size": 4}
    )  # fmt: skip
    module = S2SDataModule(config, tokenizer, add_bos=True)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert (batch["input_ids"][:, 0] == tokenizer.bos_id).all()
    assert (batch["labels"][:, 0] == tokenizer.bos_id).all()
    assert batch["input_ids"].shape[1] <= 16 and batch["labels"].shape[1] <= 12
    lengths = batch["attention_mask"].sum(1) - 1
    assert (batch["input_ids"][torch.arange(4), lengths] == tokenizer.eos_id).all()


def test_continued_pretraining_speaks_the_models_sentinels(dirs, cfg_train, tiny_data):
    """T5 span corruption on Text records with a T5 directory: the noised inputs use the
    model's own sentinels, <extra_id_0> being its highest id; the run trains and saves."""
    from s2s.data.config import DataConfig
    from s2s.data.datamodule import S2SDataModule

    cfg = cfg_train(f"init_from={dirs['t5_v1.1']}", "data.objective=t5", "trainer.max_steps=2")
    result = train(cfg)
    assert read_pretrained(result["last_checkpoint"]).config.n_decoder_layers == 2
    tokenizer = read_pretrained(dirs["t5_v1.1"]).tokenizer
    values = {
        k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "_target_"
    }
    module = S2SDataModule(DataConfig.from_dict(values), tokenizer)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    top = tokenizer.vocab_size - 1
    assert tokenizer.sentinel_ids[0] == top
    inputs = batch["input_ids"]
    assert (inputs == top).any(dim=1).all()  # every row's first span is <extra_id_0> = top id
    first_sentinel = [row[(row >= top - T5_SENTINELS + 1)].tolist()[0] for row in inputs]
    assert first_sentinel == [top] * len(inputs)
    assert (batch["labels"][:, 0] == top).all()  # targets start with it too


def test_generation_never_runs_past_a_learned_position_table(dirs):
    """BART reads positions 0 .. 39 in the decoder: asking for 100 new tokens gives 40."""
    from s2s.generation import GenerationConfig
    from s2s.generation import generate as generate_ids

    model, tokenizer = load_pretrained(dirs["bart"])
    ids = torch.tensor([[0, *tokenizer.encode("To be, or not"), 2]])
    config = GenerationConfig(max_new_tokens=100, min_new_tokens=100)
    out = generate_ids(model, ids, config=config)
    assert out.shape[1] == model.config.max_positions == 40


def test_finetune_hf_names_the_keys_it_needs(cfg_train):
    cfg = cfg_train("experiment=finetune_hf", "data.train_path=null", kind="pairs")
    with pytest.raises(ValueError, match=r"finetune_hf needs init_from=\.\.\., data\.train_path"):
        train(cfg)


def test_hub_names_resolve_through_a_local_cache(dirs, tmp_path, monkeypatch):
    """`hf:ORG/NAME` finds the snapshot in a Hugging Face cache (built here as huggingface_hub
    lays it out); a name not cached is one line saying how to download it, and nothing is
    downloaded unless S2S_HUB_DOWNLOAD=1."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--local--tiny-bart"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in dirs["bart"].iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("S2S_HUB_DOWNLOAD", raising=False)
    loaded = read_pretrained("hf:local/tiny-bart", "ckpt")
    expected = read_pretrained(dirs["bart"])
    assert loaded.config == expected.config and loaded.framing == expected.framing
    assert torch.equal(loaded.state_dict["embed.weight"], expected.state_dict["embed.weight"])
    with pytest.raises(CheckpointError, match=r"ckpt=hf:local/missing: not in the local Hugging"):
        read_pretrained("hf:local/missing", "ckpt")


@pytest.mark.slow  # spawns train.py: the command line is what says a dropout was given
def test_command_line_dropout_replaces_the_directorys(dirs, tiny_data, tmp_path):
    from helpers.train import overrides_for, run_cli

    args = [
        *overrides_for(tiny_data, tmp_path, "pairs"),
        f"init_from={dirs['bart']}", "model.dropout=0.0", "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    ]  # fmt: skip
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    config = read_pretrained(tmp_path / "run" / "checkpoints" / "last.ckpt").config
    directory = read_pretrained(dirs["bart"]).config
    assert directory.dropout == 0.1 and config.dropout == 0.0  # tiny's 0.1 is not used either
    assert config.d_model == directory.d_model and config.init_std == directory.init_std


def test_mt5_reads_as_t5_v1_1_with_its_defaults(dirs, tmp_path):
    """mT5 is T5 v1.1 under another model_type; a key the file leaves out takes MT5Config's
    default (gated GELU), not T5Config's (ReLU)."""
    mt5 = _copy(dirs["t5_v1.1"], tmp_path / "mt5")
    config = json.loads((mt5 / "config.json").read_text())
    config["model_type"] = "mt5"
    del config["feed_forward_proj"], config["dense_act_fn"], config["is_gated_act"]
    (mt5 / "config.json").write_text(json.dumps(config))
    loaded, expected = read_pretrained(mt5), read_pretrained(dirs["t5_v1.1"])
    assert loaded.config == expected.config
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in expected.state_dict.items())


def test_generate_dtype_casts_the_weights(dirs, monkeypatch, capsys):
    """dtype=bfloat16: the generator gets bf16 weights (pipeline.generate imports
    TextGenerator when it runs, so the recording subclass is the one it builds)."""
    from s2s.generation import text

    seen = []

    class Recording(text.TextGenerator):
        def __init__(self, model, *args, **kwargs):
            seen.append(next(model.parameters()).dtype)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(text, "TextGenerator", Recording)
    generate(compose_generate(f"ckpt={dirs['bart']}", "prompt=To be", "dtype=bfloat16"))
    assert seen == [torch.bfloat16] and capsys.readouterr().out.strip()
    with pytest.raises(ValueError, match="dtype=int8 must be one of float32, bfloat16, float16"):
        generate(compose_generate(f"ckpt={dirs['bart']}", "prompt=To be", "dtype=int8"))
