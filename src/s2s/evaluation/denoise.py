"""Run the masked-line probe (`s2s.evaluation.masked_lines`) through a model: greedy outputs
for each masked line, framed as `generate.py` frames a prompt (ids, then EOS)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from s2s.evaluation.masked_lines import DenoiseScores, MaskedLine, score
from s2s.generation.config import GenerationConfig
from s2s.generation.text import TextGenerator
from s2s.model.transformer import Seq2SeqTransformer
from s2s.tokenizer import Tokenizer

EXTRA_TOKENS = 16  # room past the prompt's length: the fill may be longer than one mask token


@torch.no_grad()
def denoise_outputs(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    lines: Sequence[MaskedLine],
    *,
    batch_size: int = 32,
    add_bos: bool = False,
) -> list[str]:
    """Greedy output text for each masked line, in order (each module's mode is restored)."""
    if not lines:
        return []
    prompts = [line.masked for line in lines]
    longest = max(len(ids) for ids in tokenizer.encode_batch(prompts))
    config = GenerationConfig(max_new_tokens=longest + EXTRA_TOKENS)
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    try:
        generator = TextGenerator(model, tokenizer, config, add_bos=add_bos, device=device)
        return generator.run_batches(prompts, batch_size)
    finally:
        for module, training in modes:
            module.training = training


def evaluate_denoising(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    lines: Sequence[MaskedLine],
    *,
    batch_size: int = 32,
    add_bos: bool = False,
) -> tuple[DenoiseScores, list[str]]:
    """The scores of the model's outputs on `lines`, and the outputs themselves."""
    outputs = denoise_outputs(model, tokenizer, lines, batch_size=batch_size, add_bos=add_bos)
    return score(outputs, lines), outputs
