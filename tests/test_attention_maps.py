"""Cross-attention maps: the weights recorded are the ones the model used, with or without the
kernel twins; the figure's axes are the tokens; validation writes them to TensorBoard;
`generate.py attention_plot=` draws one prompt."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
from helpers.generation import tiny_model, write_ckpt
from helpers.model import with_kernels
from helpers.train import compose_train, overrides_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from s2s import kernels
from s2s.evaluation import attention_maps
from s2s.evaluation.attention_maps import cross_attention, plot_attention, token_labels
from s2s.model.attention import merge_heads, split_heads
from s2s.pipeline import generate, train

REPO = Path(__file__).resolve().parents[1]
SOURCE, TARGET = [5, 9, 14, 22, 31, 1], [40, 9, 7, 1]


def test_recorded_weights_are_the_ones_the_layer_used(tokenizer):
    """Each row is a distribution over the source, and out(merge(weights @ V)) is exactly the
    cross-attention output of that layer (a hook sees what it really computed)."""
    model = tiny_model(tokenizer.vocab_size)
    seen = {}
    layer = model.decoder.layers[1].cross_attn

    def hook(module, args, output):
        seen["memory"], seen["output"] = args[1], output

    handle = layer.register_forward_hook(hook)
    weights = cross_attention(model, SOURCE, TARGET)
    handle.remove()
    assert weights.shape == (2, 4, len(TARGET), len(SOURCE))  # (layers, heads, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, len(TARGET)))
    with torch.no_grad():
        _, v = split_heads(layer.kv(seen["memory"]), 2, layer.n_heads)  # (1, H, S, Dh)
        rebuilt = layer.out(merge_heads(weights[1][None] @ v))
    torch.testing.assert_close(rebuilt, seen["output"])
    assert all(m.record is None for m in model.modules() if hasattr(m, "record"))


def test_kernel_twins_give_the_same_maps_and_are_put_back(tokenizer):
    plain = cross_attention(tiny_model(tokenizer.vocab_size), SOURCE, TARGET)
    model = with_kernels(tiny_model(tokenizer.vocab_size))
    twins = [type(m) for m in model.modules()]
    assert any(t in kernels.PLAIN for t in twins)  # the comparison means something
    torch.testing.assert_close(cross_attention(model, SOURCE, TARGET), plain)
    assert [type(m) for m in model.modules()] == twins


def test_figure_has_target_rows_and_source_columns(tokenizer):
    weights = torch.rand(3, 5).softmax(-1)
    source = ["To", "be", ",", "or", "</s>"]
    figure = plot_attention(weights, source, ["be", "not", "</s>"])
    axes = figure.axes[0]
    assert axes.images[0].get_array().shape == (3, 5)
    assert [t.get_text() for t in axes.get_xticklabels()] == source
    assert [t.get_text() for t in axes.get_yticklabels()] == ["be", "not", "</s>"]
    with pytest.raises(ValueError, match="3 x 5 but there are 3 target and 4 source"):
        plot_attention(weights, source[:4], ["be", "not", "</s>"])


def test_token_labels_keep_special_tokens(tokenizer):
    ids = tokenizer.encode("How <mask> doing?") + [tokenizer.eos_id]
    labels = token_labels(tokenizer, ids)
    assert "<mask>" in labels and labels[-1] == "</s>" and len(labels) == len(ids)


@pytest.mark.slow  # a whole training run
def test_validation_writes_a_heat_map_per_sample(tiny_data, tmp_path, monkeypatch):
    drawn = []
    original = attention_maps.attention_figure

    def spy(model, tokenizer, source, output, **kwargs):
        figure = original(model, tokenizer, source, output, **kwargs)
        drawn.append((len(output), len(source), figure.axes[0].images[0].get_array().shape))
        return figure

    monkeypatch.setattr(attention_maps, "attention_figure", spy)
    overrides = [*overrides_for(tiny_data, tmp_path), "logger=tensorboard", "trainer.max_steps=3"]
    train(compose_train([*overrides, "eval.attention_maps=2"]))
    assert len(drawn) == 2  # one validation after training (the sanity check draws none)
    assert all(shape == (t, s) for t, s, shape in drawn)  # target x source tokens
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert {"val/cross_attention/0", "val/cross_attention/1"} <= set(tags)


@pytest.fixture
def ckpt(tokenizer, tmp_path) -> Path:
    return write_ckpt(tmp_path / "tiny.ckpt", tiny_model(tokenizer.vocab_size), tokenizer)


def test_generate_draws_the_prompts_attention(ckpt, tmp_path, cfg_generate):
    plot = tmp_path / "pictures" / "attention.png"
    stdout = io.StringIO()
    generate(cfg_generate(f"ckpt={ckpt}", "prompt=To be or not", f"attention_plot={plot}",
               "generate.max_new_tokens=5"), stdout=stdout)  # fmt: skip
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 2000
    assert len(stdout.getvalue().splitlines()) == 1  # the answer, as without a picture
    assert [p.name for p in plot.parent.iterdir()] == ["attention.png"]  # no temporary left


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["input_file=x.txt", "output_file=y.jsonl"], "draws one prompt: give prompt="),
        (["prompt=hi", "attention_plot={tmp}/a.txt"], "name an image file (png, svg, pdf, jpg)"),
        (["prompt=hi", "attention_plot={tmp}/old.png"], "exists; overwrite=true replaces it"),
    ],
)
def test_bad_attention_plot_settings_are_refused(ckpt, tmp_path, overrides, message, cfg_generate):
    (tmp_path / "old.png").write_bytes(b"keep me")
    args = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    if not any(a.startswith("attention_plot=") for a in args):
        args.append(f"attention_plot={tmp_path / 'a.png'}")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate(cfg_generate(f"ckpt={ckpt}", *args))
    assert (tmp_path / "old.png").read_bytes() == b"keep me"


def test_missing_matplotlib_is_a_clear_error(ckpt, tmp_path, monkeypatch, cfg_generate):
    for name in ("matplotlib", "matplotlib.figure"):  # their import fails
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ValueError, match=r'pip install -e "\.\[plots\]"'):
        generate(cfg_generate(f"ckpt={ckpt}", "prompt=hi", f"attention_plot={tmp_path / 'a.png'}"))
