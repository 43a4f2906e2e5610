"""Draw docs/architecture.png: how one batch flows from `python train.py` to the loss.

Run: python docs/make_architecture.py   (needs matplotlib: pip install -e ".[plots]")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

OUT = Path(__file__).with_name("architecture.png")
# (column, row, title, what it is); columns: entry, data, model and loop
BOXES = [
    (0, 0, "train.py", "@hydra.main: compose conf/"),
    (0, 1, "s2s.pipeline.train(cfg)", "settings checked, run dir,\nmodel / data / trainer built"),
    (0, 2, "s2s.trainer", "Lightning Trainer: devices,\naccumulation, checkpoints"),
    (0, 3, "s2s.report", "report.md, end-of-run summary"),
    (1, 0, "data/records.py", "JSON / JSONL records, checked"),
    (1, 1, "tokenizer.py + data/cache.py", "BPE (or the model's own),\nids tokenised once"),
    (1, 2, "data/noising.py, infilling.py", "T5 spans / BART infilling,\nseeded per item"),
    (1, 3, "data/sampler.py + examples.py", "buckets, ranks, resume;\ncollate: pad, labels"),
    (2, 0, "lit_module.py", "training_step: loss, metrics,\noptimiser and schedule"),
    (2, 1, "model/transformer.py", "embed -> Encoder -> Decoder\n-> LM head: logits (B, T, V)"),
    (2, 2, "model/stacks.py, layers.py", "pre-/post-norm layers:\nattention, feed-forward"),
    (2, 3, "model/attention.py", "the one place masks apply;\nSDPA or the math path"),
]
ARROWS = [
    ((0, 0), (0, 1)), ((0, 1), (0, 2)), ((0, 2), (0, 3)),
    ((1, 0), (1, 1)), ((1, 1), (1, 2)), ((1, 2), (1, 3)),
    ((2, 0), (2, 1)), ((2, 1), (2, 2)), ((2, 2), (2, 3)),
    ((0, 1), (1, 0)), ((1, 3), (2, 0)), ((0, 2), (2, 0)),
]  # fmt: skip
W, H, DX, DY = 2.9, 0.95, 3.4, 1.35


def centre(col: int, row: int) -> tuple[float, float]:
    return col * DX + W / 2, -row * DY + H / 2


def main() -> None:
    fig, ax = plt.subplots(figsize=(11, 6.2))
    for col, row, title, text in BOXES:
        x, y = col * DX, -row * DY
        colour = ("#dbe9f6", "#e3f1dc", "#fbe5d6")[col]
        ax.add_patch(FancyBboxPatch((x, y), W, H, boxstyle="round,pad=0.04", fc=colour, ec="#555"))
        ax.text(
            x + W / 2, y + H - 0.2, title, ha="center", va="center", fontsize=9.5, weight="bold"
        )
        ax.text(x + W / 2, y + 0.33, text, ha="center", va="center", fontsize=8)
    for start, end in ARROWS:
        (x0, y0), (x1, y1) = centre(*start), centre(*end)
        if start[0] == end[0]:  # down a column: bottom edge to top edge
            y0, y1 = y0 - H / 2 - 0.05, y1 + H / 2 + 0.05
        else:  # across: right edge to left edge
            x0, x1 = x0 + W / 2 + 0.05, x1 - W / 2 - 0.05
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color="#333"))
    for col, label in enumerate(("entry and loop", "data: a batch", "model: the loss")):
        ax.text(col * DX + W / 2, H + 0.35, label, ha="center", fontsize=11, style="italic")
    ax.set_xlim(-0.2, 2 * DX + W + 0.2)
    ax.set_ylim(-3 * DY - 0.2, H + 0.6)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
