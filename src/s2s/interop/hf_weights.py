"""Which Hugging Face tensors make which of ours: one table, read both ways.

Our layout fuses HF's separate projections: self-attention q/k/v -> one `qkv` matrix,
cross-attention k/v -> one `kv` matrix, gated FFN wi_0 (gate) / wi_1 (up) -> one `wi`.
Each `Entry` names one tensor of ours and the HF tensors it is made of: loading concatenates
them along dim 0 (`ours_from_hf`), exporting splits ours by their sizes (`hf_from_ours`).
BART's position tables carry two unused leading rows, and its `final_logits_bias` is (1, V).
No `transformers` needed: the names are plain strings of the state dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from s2s.config import ModelConfig
from s2s.interop.hf_config import BART_POSITION_OFFSET


@dataclass(frozen=True)
class Entry:
    ours: str
    theirs: tuple[str, ...]
    skip_rows: int = 0  # leading rows of the (single) HF tensor that we do not have
    leading_one: bool = False  # the HF tensor has an extra leading dimension of 1


# HF tensors that duplicate another one (tied copies) or that HF itself never uses.
IGNORABLE = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    # old T5 checkpoints store an unused relative-bias table in the first cross-attention
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
)


def weight_table(config: ModelConfig, kind: str, tied: bool) -> list[Entry]:
    """Entries for every tensor of a `Seq2SeqTransformer(config)` state dict (aliases of the
    shared embedding left out); `kind` is "t5" or "bart"."""
    table = _t5_table(config) if kind == "t5" else _bart_table(config)
    if not tied:
        table.append(Entry("lm_head.weight", ("lm_head.weight",)))
    return table


def _t5_table(config: ModelConfig) -> list[Entry]:
    table = [Entry("embed.weight", ("shared.weight",))]
    wi = ("wi_0", "wi_1") if config.gated_ffn else ("wi",)
    for stack, n_layers in (
        ("encoder", config.n_encoder_layers),
        ("decoder", config.n_decoder_layers),
    ):
        table += [
            Entry(
                f"{stack}.relative_bias.weight",
                (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",),
            ),
            Entry(f"{stack}.final_norm.weight", (f"{stack}.final_layer_norm.weight",)),
        ]
        for i in range(n_layers):
            ours, theirs = f"{stack}.layers.{i}", f"{stack}.block.{i}.layer"
            attn = f"{theirs}.0.SelfAttention"
            table += [
                Entry(f"{ours}.self_attn.qkv.weight", tuple(f"{attn}.{p}.weight" for p in "qkv")),
                Entry(f"{ours}.self_attn.out.weight", (f"{attn}.o.weight",)),
                Entry(f"{ours}.self_attn_block.norm.weight", (f"{theirs}.0.layer_norm.weight",)),
            ]
            ffn = 1
            if stack == "decoder":
                ffn, cross = 2, f"{theirs}.1.EncDecAttention"
                kv = (f"{cross}.k.weight", f"{cross}.v.weight")
                norm = (f"{theirs}.1.layer_norm.weight",)
                table += [
                    Entry(f"{ours}.cross_attn.q.weight", (f"{cross}.q.weight",)),
                    Entry(f"{ours}.cross_attn.kv.weight", kv),
                    Entry(f"{ours}.cross_attn.out.weight", (f"{cross}.o.weight",)),
                    Entry(f"{ours}.cross_attn_block.norm.weight", norm),
                ]
            dense = f"{theirs}.{ffn}.DenseReluDense"
            table += [
                Entry(f"{ours}.ffn.wi.weight", tuple(f"{dense}.{w}.weight" for w in wi)),
                Entry(f"{ours}.ffn.wo.weight", (f"{dense}.wo.weight",)),
                Entry(f"{ours}.ffn_block.norm.weight", (f"{theirs}.{ffn}.layer_norm.weight",)),
            ]
    return table


def _bart_table(config: ModelConfig) -> list[Entry]:
    table = [
        Entry("embed.weight", ("model.shared.weight",)),
        Entry("final_logits_bias", ("final_logits_bias",), leading_one=True),
    ]
    for stack, n_layers in (
        ("encoder", config.n_encoder_layers),
        ("decoder", config.n_decoder_layers),
    ):
        theirs = f"model.{stack}"
        table.append(
            Entry(
                f"{stack}.embed.learned.weight",
                (f"{theirs}.embed_positions.weight",),
                skip_rows=BART_POSITION_OFFSET,
            )
        )
        table += _affine(f"{stack}.embed.norm", f"{theirs}.layernorm_embedding")
        for i in range(n_layers):
            ours, block = f"{stack}.layers.{i}", f"{theirs}.layers.{i}"
            attn = f"{block}.self_attn"
            table += _affine(f"{ours}.self_attn.qkv", *(f"{attn}.{p}_proj" for p in "qkv"))
            table += _affine(f"{ours}.self_attn.out", f"{attn}.out_proj")
            table += _affine(f"{ours}.self_attn_block.norm", f"{block}.self_attn_layer_norm")
            if stack == "decoder":
                cross = f"{block}.encoder_attn"
                table += _affine(f"{ours}.cross_attn.q", f"{cross}.q_proj")
                table += _affine(f"{ours}.cross_attn.kv", f"{cross}.k_proj", f"{cross}.v_proj")
                table += _affine(f"{ours}.cross_attn.out", f"{cross}.out_proj")
                table += _affine(
                    f"{ours}.cross_attn_block.norm", f"{block}.encoder_attn_layer_norm"
                )
            table += _affine(f"{ours}.ffn.wi", f"{block}.fc1")
            table += _affine(f"{ours}.ffn.wo", f"{block}.fc2")
            table += _affine(f"{ours}.ffn_block.norm", f"{block}.final_layer_norm")
    return table


def _affine(ours: str, *theirs: str) -> list[Entry]:
    """Weight and bias entries of a (possibly fused) linear layer or affine norm."""
    return [Entry(f"{ours}.{p}", tuple(f"{t}.{p}" for t in theirs)) for p in ("weight", "bias")]


def ours_from_hf(
    table: list[Entry],
    get: Callable[[str], Tensor],
    shapes: dict[str, tuple[int, ...]],
    source: str,
) -> dict[str, Tensor]:
    """Our float32 state dict from HF tensors fetched one at a time with `get(name)` (so a
    file is read tensor by tensor); `shapes` are our tensors' shapes. A shape
    that does not fit raises ValueError naming `source` and both names."""
    state = {}
    for entry in table:
        parts = [get(name) for name in entry.theirs]
        if entry.leading_one:
            parts = [
                p.reshape(p.shape[1:]) if p.dim() > 1 and p.shape[0] == 1 else p for p in parts
            ]
        if entry.skip_rows:
            parts = [p[entry.skip_rows :] for p in parts]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tuple(tensor.shape) != shapes[entry.ours]:
            found = " + ".join(
                f"{n} {tuple(p.shape)}" for n, p in zip(entry.theirs, parts, strict=True)
            )
            raise ValueError(
                f"{source}: {found} does not fit {entry.ours} {shapes[entry.ours]} of the "
                "model config.json describes"
            )
        # float32 (the model's master weights), converted only where the file holds another
        # dtype; `get` returns tensors of their own (never views into a mapped file)
        state[entry.ours] = tensor.to(torch.float32).contiguous()
    return state


def hf_from_ours(table: list[Entry], state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF tensors from our state dict (the inverse of `ours_from_hf`)."""
    out = {}
    for entry in table:
        tensor = state[entry.ours].detach().cpu()
        if entry.skip_rows:
            pad = tensor.new_zeros((entry.skip_rows, *tensor.shape[1:]))
            tensor = torch.cat([pad, tensor], dim=0)
        if len(entry.theirs) == 1:
            parts = [tensor]
        else:
            rows = tensor.shape[0] // len(entry.theirs)  # fused parts are equal in size
            parts = list(tensor.split(rows, dim=0))
        for name, part in zip(entry.theirs, parts, strict=True):
            out[name] = (part[None] if entry.leading_one else part).contiguous()
    return out
