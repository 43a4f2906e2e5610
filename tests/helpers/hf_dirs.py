"""Small Hugging Face model directories made here, never downloaded: what a user's
`save_pretrained` of a T5 v1.1 / T5 v1.0 / BART model and its fast tokenizer looks like.

Tokenizers are trained with `tokenizers` on a few hundred lines of the shipped Shakespeare
text, laid out as the real ones are:
    T5    sentencepiece-like unigram (Metaspace), <pad>=0 </s>=1 <unk>=2, sentinels
          <extra_id_0> = the highest id downwards, post-processor "$A </s>", and a model
          vocabulary a few rows larger than the tokenizer (as t5-small's 32128 vs 32100).
    BART  byte-level BPE, <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last, post-processor
          "<s> $A </s>".
Model weights are random (seeded) with every 1-D parameter jittered, so a mis-mapped norm
or bias cannot hide behind its initial value.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from torch import nn

REPO = Path(__file__).resolve().parents[2]
T5_SENTINELS = 20
T5_VOCAB_PADDING = 8  # model rows past the tokenizer's last id (t5-small: 32128 - 32100)


def training_lines(n: int = 400) -> list[str]:
    records = json.loads((REPO / "datasets/shakespeare/train.json").read_text(encoding="utf-8"))
    lines: list[str] = []
    for record in records:
        lines += [line for line in record["Text"].splitlines() if line.strip()]
        if len(lines) >= n:
            break
    return lines[:n]


def t5_tokenizer(vocab_size: int = 300) -> Tokenizer:
    """A unigram model built from word counts (not trained: the `tokenizers` unigram trainer
    gives another vocabulary in every process): the most frequent words with their log
    frequencies, then every single character, so any text of these characters encodes."""
    counts: Counter[str] = Counter()
    for line in training_lines():
        counts.update(f"▁{word}" for word in line.split())
    chars = sorted({c for piece in counts for c in piece})
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    room = vocab_size - T5_SENTINELS - len(specials) - len(chars)
    total = sum(counts.values())
    words = [(w, math.log(c / total)) for w, c in counts.most_common() if len(w) > 2][:room]
    pieces = specials + words + [(c, -20.0) for c in chars]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC()])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.add_special_tokens(["<pad>", "</s>", "<unk>"])
    # T5 numbers its sentinels from the top of the vocabulary downwards
    backend.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(T5_SENTINELS))])
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return backend


def bart_tokenizer(vocab_size: int = 400) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_lines(), trainer=trainer)
    backend.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )  # fmt: skip
    return backend


def save_tokenizer(backend: Tokenizer, directory: Path, kind: str, max_length: int) -> None:
    from transformers import PreTrainedTokenizerFast

    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    if kind == "t5":
        specials["additional_special_tokens"] = [f"<extra_id_{i}>" for i in range(T5_SENTINELS)]
    else:
        specials.update(bos_token="<s>", mask_token="<mask>")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=max_length, **specials
    )
    wrapped.save_pretrained(directory)


def jitter(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def make_t5_dir(
    directory: Path, version: str = "v1.1", vocab_size: int | None = None, **shape
) -> Path:
    """A T5 directory: v1.1 (gated GELU, untied head) or v1.0 (ReLU, tied, scaled logits);
    `vocab_size` (model rows) defaults to the tokenizer's size plus T5_VOCAB_PADDING."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = t5_tokenizer()
    size = dict(
        d_model=64, d_kv=16, num_heads=4, d_ff=96, num_layers=2, num_decoder_layers=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )  # fmt: skip
    size.update(shape)
    config = T5Config(
        vocab_size=vocab_size or tokenizer.get_vocab_size() + T5_VOCAB_PADDING,
        feed_forward_proj={"v1.1": "gated-gelu", "v1.0": "relu"}[version],
        tie_word_embeddings=version == "v1.0",
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **size,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    if version == "v1.1":  # released v1.1 checkpoints store a head apart from the embedding
        model.lm_head.weight = nn.Parameter(torch.randn(model.lm_head.weight.shape) * 0.05)
    jitter(model, seed=1)
    with torch.no_grad():
        # a random head tends to repeat <pad>, </s>, a sentinel or the rows past the
        # tokenizer's last id (all decoded as nothing): make them rarer, so outputs differ
        size = tokenizer.get_vocab_size()
        model.lm_head.weight[:3].mul_(0.1)
        model.lm_head.weight[size - T5_SENTINELS : size].mul_(0.1)
        model.lm_head.weight[size:].zero_()
    model.eval().save_pretrained(directory)
    save_tokenizer(tokenizer, directory, "t5", max_length=48)
    return directory


def make_bart_dir(directory: Path, **shape) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = bart_tokenizer()
    size = dict(
        d_model=64, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96,
        decoder_ffn_dim=96, encoder_layers=2, decoder_layers=2, max_position_embeddings=40,
    )  # fmt: skip
    size.update(shape)
    config = BartConfig(
        vocab_size=tokenizer.get_vocab_size(), pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_eos_token_id=2, init_std=0.2, **size,
    )  # fmt: skip
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config)
    model.model.encoder.embed_tokens.weight = model.model.shared.weight
    model.model.decoder.embed_tokens.weight = model.model.shared.weight
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.1)
    # transformers 5 keeps forced tokens in the generation config only (bart-large's form)
    model.generation_config.forced_bos_token_id = 0
    jitter(model, seed=1).eval().save_pretrained(directory)
    save_tokenizer(tokenizer, directory, "bart", max_length=40)
    return directory
