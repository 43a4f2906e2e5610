"""ModelConfig: validation, serialisation, and the conf/model presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.model import PRESETS, load_preset, preset_values
from omegaconf import OmegaConf

from s2s import ModelConfig
from s2s.model import Seq2SeqTransformer

# Parameter counts of the presets at the vocab sizes in their YAML files: s2s's own presets by
# the layer formula below (`own_preset_parameters`), the others as Hugging Face counts them.
PRESET_PARAMETERS = {
    "tiny": 9_179_392,  # own_preset_parameters(8192, 256, 1024, 3, 3)
    "small": 51_396_608,  # own_preset_parameters(8192, 512, 1536, 6, 6)
    "base": 204_519_936,  # own_preset_parameters(8192, 768, 2048, 12, 12)
    "t5_small": 60_506_624,  # HF google-t5/t5-small: 60,506,624
    "bart_base": 139_417_344,  # HF bart-base: 139,420,416 incl. 2 unused rows x 2 tables
    "t5_v1_1_base": 247_577_856,  # HF google/t5-v1_1-base: 247,577,856
}


def test_defaults_are_valid_and_resolve_head_dim():
    cfg = ModelConfig()
    assert cfg.head_dim == cfg.d_model // cfg.n_heads
    assert ModelConfig(d_model=48, n_heads=3, d_head=20).inner_dim == 60


def test_indivisible_d_model_names_both_fields():
    with pytest.raises(
        ValueError, match=r"model\.d_model=500 must be divisible by model\.n_heads=8"
    ):
        ModelConfig(d_model=500, n_heads=8)
    assert ModelConfig(d_model=500, n_heads=8, d_head=64).inner_dim == 512  # T5-style: allowed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"positions": "alibi"}, r"model\.positions='alibi' must be one of"),
        ({"norm": "batchnorm"}, r"model\.norm='batchnorm'"),
        ({"norm_position": "middle"}, r"model\.norm_position='middle'"),
        ({"activation": "tanh"}, r"model\.activation='tanh'"),
        ({"dropout": 1.0}, r"model\.dropout=1\.0 must be in \[0, 1\)"),
        ({"attention_dropout": -0.1}, r"model\.attention_dropout=-0\.1"),
        ({"n_encoder_layers": 0}, r"model\.n_encoder_layers=0 must be >= 1"),
        ({"vocab_size": 0}, r"model\.vocab_size=0 must be > 0"),
        ({"pad_token_id": 8192}, r"model\.pad_token_id=8192 must be in \[0, model\.vocab_size"),
        ({"positions": "rotary", "d_model": 12, "n_heads": 4}, r"even head width"),
        ({"positions": "t5_relative", "relative_max_distance": 8}, r"relative_max_distance=8"),
        ({"norm_eps": 0.0}, r"model\.norm_eps=0\.0 must be > 0"),
    ],
)
def test_invalid_values_raise_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_wrong_types_raise():
    with pytest.raises(ValueError, match=r"model\.norm_eps='1e-6' must be float"):
        ModelConfig(norm_eps="1e-6")
    with pytest.raises(ValueError, match=r"model\.d_model=True must be int"):
        ModelConfig(d_model=True)
    with pytest.raises(ValueError, match=r"model\.gated_ffn=1 must be bool"):
        ModelConfig(gated_ffn=1)
    with pytest.raises(ValueError, match=r"model\.d_head='8' must be int or null"):
        ModelConfig(d_head="8")


def test_dict_and_json_round_trip():
    cfg = ModelConfig(d_model=48, n_heads=3, d_head=20, positions="t5_relative")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert set(cfg.to_dict()) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_from_dict_rejects_unknown_keys_listing_them():
    with pytest.raises(ValueError, match=r"unknown key model\.hidden; valid keys of model: "):
        ModelConfig.from_dict({"d_model": 64, "num_heads": 4, "hidden": 3})


def test_run_time_keys_of_older_files_are_dropped_and_training_fields_are_not_architecture():
    old = {**ModelConfig(d_model=64).to_dict(), "compile": True, "attention_backend": "math"}
    assert ModelConfig.from_dict(old) == ModelConfig(d_model=64)
    tuned = ModelConfig(d_model=64, dropout=0.3, attention_dropout=0.1, init_std=0.5)
    assert tuned.architecture() == ModelConfig(d_model=64).architecture()
    assert ModelConfig(d_model=32).architecture() != ModelConfig(d_model=64).architecture()


def test_attention_backend_is_set_on_every_attention_module_and_checked():
    model = Seq2SeqTransformer(ModelConfig(d_model=32, n_heads=2, d_ff=32, vocab_size=64))
    backends = [m.backend for m in model.modules() if hasattr(m, "backend")]
    assert backends == ["sdpa"] * 9  # 3 encoder self, 3 decoder self, 3 cross
    model.set_attention_backend("math")
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"math"}
    with pytest.raises(ValueError, match=r"attention_backend='flash' must be one of"):
        model.set_attention_backend("flash")


def test_replace_sets_tokenizer_fields_and_revalidates():
    cfg = dataclasses.replace(
        ModelConfig(), vocab_size=600, pad_token_id=3, eos_token_id=2, decoder_start_token_id=3
    )
    assert (cfg.vocab_size, cfg.pad_token_id) == (600, 3)
    with pytest.raises(ValueError, match=r"model\.eos_token_id=700"):
        dataclasses.replace(cfg, eos_token_id=700)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.vocab_size = 5  # type: ignore[misc]


def test_tiny_preset_is_the_default_config_plus_its_three_recipe_choices():
    # rotary cross-attention, T5's tied-embedding geometry and the init scale that goes with
    # it (see conf/model/tiny.yaml)
    expected = dataclasses.replace(
        ModelConfig(), rotary_cross_attention=True, scale_logits=True, init_std=0.05
    )
    assert load_preset("tiny") == expected


@pytest.mark.parametrize("name", sorted(PRESET_PARAMETERS))
def test_preset_mirrors_config_and_builds_model_of_recorded_size(name):
    values = preset_values(name)
    assert list(values) == [f.name for f in dataclasses.fields(ModelConfig)]
    raw = OmegaConf.to_container(OmegaConf.load(PRESETS / f"{name}.yaml"))
    if "defaults" in raw:  # an inheriting preset states only what differs from its parent
        parent = preset_values(raw["defaults"][0])
        assert all(parent[k] != v for k, v in raw.items() if k != "defaults"), name
    cfg = ModelConfig.from_dict(values)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = Seq2SeqTransformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == PRESET_PARAMETERS[name]


def own_preset_parameters(vocab: int, d: int, d_ff: int, n_enc: int, n_dec: int) -> int:
    """tiny / small / base by hand: tied embedding (V x D, also the LM head); attention without
    biases, 4 D x D projections (q, k, v, out; inner dim = D); gated FFN without biases, 3 D x
    d_ff matrices; RMSNorm gains only, 2 per encoder layer, 3 per decoder layer, one final norm
    per stack; rotary positions have no parameters."""
    encoder_layer = 4 * d * d + 3 * d * d_ff + 2 * d
    decoder_layer = 8 * d * d + 3 * d * d_ff + 3 * d  # self- and cross-attention
    return vocab * d + n_enc * encoder_layer + n_dec * decoder_layer + 2 * d


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_own_preset_sizes_follow_the_layer_formula(name):
    values = preset_values(name)
    assert (values["positions"], values["norm"], values["tie_embeddings"]) == (
        "rotary",
        "rmsnorm",
        True,
    )
    assert values["gated_ffn"] and not values["attention_bias"] and not values["ffn_bias"]
    assert values["d_head"] is None and not values["final_logits_bias"]
    dims = [values[k] for k in ("vocab_size", "d_model", "d_ff")]
    layers = [values["n_encoder_layers"], values["n_decoder_layers"]]
    assert own_preset_parameters(*dims, *layers) == PRESET_PARAMETERS[name]


def test_every_preset_file_is_checked():
    assert {p.stem for p in PRESETS.glob("*.yaml")} == set(PRESET_PARAMETERS)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "inverse_sqrt"])
def test_scheduler_options_differ_only_in_kind(kind):
    from helpers.train import compose_train

    scheduler = OmegaConf.to_container(compose_train([f"scheduler={kind}"]).scheduler)
    base = OmegaConf.to_container(compose_train(["scheduler=cosine"]).scheduler)
    assert scheduler == base | {"kind": kind}
    raw = OmegaConf.load(PRESETS.parent / "scheduler" / f"{kind}.yaml")
    assert kind == "cosine" or set(raw) == {"defaults", "kind"}  # states only what differs
