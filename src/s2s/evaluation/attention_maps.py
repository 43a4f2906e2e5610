"""Cross-attention maps: which source tokens each target token looked at.

`cross_attention(model, input_ids, target_ids)` runs the model once, teacher-forced, on one
source and one target (a reference, or the model's own greedy output: then the weights are
those it used while generating it), with the attention modules recording their weights
(`_Attention.record` in s2s.model.attention), and returns those of the cross-attention of
every decoder layer: (layers, heads, T, S), each row a distribution over the source tokens.
`plot_attention` draws one map, target tokens down and source tokens across, with matplotlib
(an optional extra: `pip install -e ".[plots]"`).

The kernel twins (s2s.kernels) compute attention without these weights, so the plain modules
are switched in for the one forward and the twins back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from s2s import kernels
from s2s.model.attention import CrossAttention

if TYPE_CHECKING:
    from s2s.model import Seq2SeqTransformer
    from s2s.tokenizer import Tokenizer

PLOTS_HINT = 'attention pictures need matplotlib: pip install -e ".[plots]"'
PLOT_FORMATS = ("png", "svg", "pdf", "jpg")


class MissingMatplotlib(ValueError):
    """matplotlib is not installed (the `plots` extra): a setting this install cannot serve,
    reported like a bad value (one `error:` line from the command-line tools)."""


def require_matplotlib() -> type:
    """matplotlib's Figure class, or MissingMatplotlib saying how to get it. Figures are made
    without pyplot: no display, no global backend switch in the user's session, nothing to
    close."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingMatplotlib(PLOTS_HINT) from None
    return Figure


@contextmanager
def recording(model: Seq2SeqTransformer) -> Iterator[list[list[Tensor]]]:
    """Within the block, every decoder cross-attention call appends its weights (B, H, T, S)
    to its layer's list (yielded: one list per decoder layer, in order)."""
    modules = [m for m in model.modules() if isinstance(m, CrossAttention)]
    twins = any(type(m) in kernels.PLAIN for m in model.modules())
    kernels.uninstall(model)  # the twins do not keep weights
    records: list[list[Tensor]] = [[] for _ in modules]
    for module, record in zip(modules, records, strict=True):
        module.record = record
    try:
        yield records
    finally:
        for module in modules:
            module.record = None
        if twins:
            kernels.install(model)


@torch.no_grad()
def cross_attention(
    model: Seq2SeqTransformer, input_ids: Sequence[int], target_ids: Sequence[int]
) -> Tensor:
    """The cross-attention weights of one (source, target) pair, teacher-forced:
    (layers, heads, T, S) with T = len(target_ids), S = len(input_ids)."""
    if not len(input_ids) or not len(target_ids):
        raise ValueError("cross_attention needs at least one source and one target token")
    device = next(model.parameters()).device
    source = torch.as_tensor([list(input_ids)], device=device)  # (1, S)
    target = torch.as_tensor([list(target_ids)], device=device)  # (1, T)
    was_training = model.training
    model.eval()
    try:
        with recording(model) as records:
            model(source, model.shift_right(target))
    finally:
        model.train(was_training)
    return torch.stack([layer[0][0] for layer in records]).float().cpu()  # (L, H, T, S)


def plot_attention(
    weights: Tensor,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    *,
    title: str = "",
) -> Any:
    """A matplotlib Figure of one map `weights` (T, S): target tokens label the rows, source
    tokens the columns. Raises MissingMatplotlib without the `plots` extra."""
    figure_class = require_matplotlib()
    t, s = weights.shape
    if (t, s) != (len(target_tokens), len(source_tokens)):
        raise ValueError(
            f"weights are {t} x {s} but there are {len(target_tokens)} target and "
            f"{len(source_tokens)} source tokens"
        )
    # about 0.28 inch a token, so labels stay readable; bounded for long inputs
    width = min(max(3.0, 0.28 * s + 1.5), 24.0)
    height = min(max(2.5, 0.28 * t + 1.0), 24.0)
    figure = figure_class(figsize=(width, height), dpi=100)
    axes = figure.add_subplot()
    axes.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(s), list(source_tokens), rotation=90, fontsize=8)
    axes.set_yticks(range(t), list(target_tokens), fontsize=8)
    axes.set_xlabel("source")
    axes.set_ylabel("target")
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def token_labels(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """One readable label per id: its text (special tokens such as <mask> kept), or its
    number where it decodes to nothing printable."""
    labels = []
    for i in ids:
        text = tokenizer.decode([int(i)], skip_special_tokens=False).strip()
        labels.append(text if text.isprintable() and text else f"#{int(i)}")
    return labels


def attention_figure(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    input_ids: Sequence[int],
    target_ids: Sequence[int],
    *,
    layer: int = -1,
) -> Any:
    """The figure of one pair: decoder layer `layer`'s cross-attention, mean over heads."""
    weights = cross_attention(model, input_ids, target_ids)[layer].mean(0)  # (T, S)
    n_layers = model.config.n_decoder_layers
    number = range(n_layers)[layer] + 1
    title = f"cross-attention, decoder layer {number} of {n_layers}, mean of heads"
    source, target = token_labels(tokenizer, input_ids), token_labels(tokenizer, target_ids)
    return plot_attention(weights, source, target, title=title)


def save_plot(figure: Any, path: str | Path) -> Path:
    """Write `figure` as an image (the format from the suffix, e.g. .png), atomically."""
    from s2s.files import atomic_write

    path = Path(path)
    suffix = path.suffix.lstrip(".") or "png"
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format=suffix)
    return path
