"""Text in, text out: tokenise prompts, batch them, generate, detokenise.

Prompts are framed the way the data module frames training inputs: token ids, then EOS
(optionally BOS first, for models trained with BART-style `<s>` framing). A literal `<mask>`
or `<extra_id_N>` in a prompt becomes that special token (see `s2s.tokenizer`), so a
pre-trained denoiser fills the blanks.

Prompts longer than `max_source_length` tokens (EOS included) are cut to it; with learned
positions, which have no embedding past `model.max_positions`, that is the default and the
upper limit, so one long prompt cannot stop a whole run. `truncated` counts prompts cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from s2s.generation.config import GenerationConfig
from s2s.generation.core import generate
from s2s.model.transformer import Seq2SeqTransformer
from s2s.tokenizer import Tokenizer


class TextGenerator:
    """Generate text for prompts with one model, tokenizer and decoding config.

    One seeded generator serves every call, so a whole run is reproducible from
    `config.seed` while successive batches still draw different samples.
    """

    def __init__(
        self,
        model: Seq2SeqTransformer,
        tokenizer: Tokenizer,
        config: GenerationConfig,
        *,
        add_bos: bool = False,
        max_source_length: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if add_bos and tokenizer.bos_id is None:
            raise ValueError("add_bos=true but the tokenizer has no <s> token")
        if max_source_length is not None and max_source_length < 2:
            raise ValueError(f"max_source_length={max_source_length} must be >= 2 (or null)")
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            value = getattr(config, name)
            if value is not None and value >= model.config.vocab_size:
                raise ValueError(
                    f"generate.{name}={value} is not a token of the model "
                    f"(vocab_size {model.config.vocab_size})"
                )
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.add_bos = add_bos
        if model.config.positions == "learned":  # no position embedding past the table
            table = model.config.max_positions
            max_source_length = min(max_source_length or table, table)
        self.max_source_length = max_source_length
        self.truncated = 0
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Right-padded input_ids (B, S) and attention_mask (B, S) for `texts`."""
        head = [self.tokenizer.bos_id] if self.add_bos else []
        limit = self.max_source_length
        rows = []
        for ids in self.tokenizer.encode_batch(texts):
            body = head + ids
            if limit is not None and len(body) > limit - 1:
                body = body[: limit - 1]
                self.truncated += 1
            rows.append([*body, self.tokenizer.eos_id])
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def __call__(self, texts: Sequence[str]) -> list[str]:
        """One output text per prompt (special tokens removed)."""
        input_ids, attention_mask = self.encode(texts)
        tokens = generate(
            self.model, input_ids, attention_mask, config=self.config, generator=self.generator
        )
        return self.tokenizer.decode_batch(tokens.tolist())

    def token_ids(self, text: str) -> tuple[list[int], list[int]]:
        """The ids of one prompt as the model reads it, and of its output up to EOS."""
        input_ids, _ = self.encode([text])
        tokens = generate(self.model, input_ids, config=self.config, generator=self.generator)
        return input_ids[0].tolist(), until_eos(tokens[0].tolist(), self.tokenizer.eos_id)

    def run_batches(
        self,
        texts: Sequence[str],
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Outputs for many prompts, in their order; batches group similar lengths (less
        padding). `on_batch(n)` is called after each batch of n prompts (progress bars)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        outputs: list[str] = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for index, text in zip(chunk, self([texts[i] for i in chunk]), strict=True):
                outputs[index] = text
            if on_batch is not None:
                on_batch(len(chunk))
        return outputs


def until_eos(ids: list[int], eos_id: int) -> list[int]:
    """`ids` up to and including the first EOS (all of them when there is none)."""
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids
