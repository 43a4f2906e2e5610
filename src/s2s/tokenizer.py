"""Train, load and save the subword tokenizer; own the special-token ids.

Byte-level BPE (Radford et al. 2019, GPT-2 Sec. 2.2): every string maps to bytes first, so there is
no unknown token and `decode(encode(t)) == t` for any Unicode text. Special tokens, fixed at the
start of a trained vocabulary:

    0 <pad>    1 </s> (end of sequence)    2 <s> (beginning)    3 <mask>
    4.. <extra_id_0>, <extra_id_1>, ...     T5 sentinels, `num_sentinels` of them

A literal `<mask>` (or `<extra_id_N>`) in input text becomes that special token. Like BART's
mask token it swallows the space before it, so "How <mask> doing?" encodes as the same ids as a
span masked out of "How are you doing?" by the noising functions. That is for pre-masked
inputs and prompts; clean text that the data module noises itself ({"Text"} records, prepared
corpora) is encoded with `specials=False`: a literal `<mask>` there is five characters of text,
never a mask or a sentinel that marks no span (`Tokenizer.encode_special_tokens` of the
`tokenizers` library). `<pad>`, `</s>` and `<s>` are never matched in text (below).

A pretrained `tokenizer.json` (ours, or e.g. a T5 / BART one saved by Hugging Face) can be loaded
instead of training one; it must define a pad and an end-of-sequence token.

BPE training time grows faster than linearly with the length of a word, so one long record
without whitespace (a base64 blob, a minified line) could stall it for minutes: for training
only, runs of more than MAX_TRAINING_RUN non-space characters are cut into pieces of that
length (`training_pieces`). Encoding is unaffected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from s2s.files import atomic_write

log = logging.getLogger(__name__)

PAD, EOS, BOS, MASK = "<pad>", "</s>", "<s>", "<mask>"
MAX_TRAINING_RUN = 256  # non-space characters; longer runs are split for training (module doc)
_LONG_RUN = re.compile(rf"\S{{{MAX_TRAINING_RUN + 1},}}")


def sentinel(i: int) -> str:
    """The i-th T5 sentinel token string."""
    return f"<extra_id_{i}>"


@dataclass(frozen=True)
class TokenizerConfig:
    """How to get a tokenizer: load `path` if given, else train one on the training texts."""

    path: str | None = None
    vocab_size: int = 8192
    num_sentinels: int = 100
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if self.vocab_size < 512:
            raise ValueError(
                f"data.tokenizer.vocab_size={self.vocab_size} must be at least 512 "
                "(256 byte symbols + special tokens + merges)"
            )
        if self.num_sentinels < 0:
            raise ValueError(f"data.tokenizer.num_sentinels={self.num_sentinels} must be >= 0")
        if self.min_frequency < 1:
            raise ValueError(f"data.tokenizer.min_frequency={self.min_frequency} must be >= 1")


def _only_fill_in_tokens_match_text(backend: HFTokenizer) -> HFTokenizer:
    """Keep <pad>, </s>, <s> as plain vocabulary entries so that the same strings in a text are
    encoded as ordinary bytes (round trip stays exact); keep <mask> and the sentinels as added
    tokens, which match in text, and let them absorb the space before them (module doc)."""
    data = json.loads(backend.to_str())
    added = []
    for token in data["added_tokens"]:
        if token["content"] in (PAD, EOS, BOS):
            continue
        token.update(lstrip=True, rstrip=False, normalized=False, special=True)
        added.append(token)
    data["added_tokens"] = added
    return HFTokenizer.from_str(json.dumps(data))


def training_pieces(texts: Iterable[str]) -> Iterator[str]:
    """`texts` for BPE training, a text with a non-space run longer than MAX_TRAINING_RUN cut
    into pieces inside such runs, so that no word of the trainer exceeds that length."""
    for text in texts:
        start = 0
        for run in _LONG_RUN.finditer(text):
            for cut in range(run.start() + MAX_TRAINING_RUN, run.end(), MAX_TRAINING_RUN):
                yield text[start:cut]
                start = cut
        yield text[start:]


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or lacks a token s2s needs."""


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the ids of the special tokens s2s relies on."""

    def __init__(self, backend: HFTokenizer) -> None:
        # a saved tokenizer.json (a Hugging Face one) may pad or truncate by itself: s2s
        # frames, cuts and pads its own way
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        vocab = backend.get_vocab(with_added_tokens=True)
        pad = vocab.get(PAD)
        eos = vocab.get(EOS)
        if pad is None or eos is None:
            missing = [t for t, i in ((PAD, pad), (EOS, eos)) if i is None]
            raise TokenizerError(f"the tokenizer has no {' or '.join(missing)} token")
        self.pad_id: int = pad
        self.eos_id: int = eos
        self.bos_id: int | None = vocab.get(BOS)
        self.mask_id: int | None = vocab.get(MASK)
        sentinels: list[int] = []
        while sentinel(len(sentinels)) in vocab:
            sentinels.append(vocab[sentinel(len(sentinels))])
        self.sentinel_ids: list[int] = sentinels
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        ours = [pad, eos, self.bos_id, self.mask_id, *sentinels]
        added = [i for i, tok in backend.get_added_tokens_decoder().items() if tok.special]
        self._special_set: frozenset[int] = frozenset(i for i in ours + added if i is not None)
        self._as_text: HFTokenizer | None = None  # a copy that reads special strings as text

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8192,
        num_sentinels: int = 100,
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Train a byte-level BPE tokenizer on `texts`."""
        config = TokenizerConfig(
            vocab_size=vocab_size, num_sentinels=num_sentinels, min_frequency=min_frequency
        )
        backend = HFTokenizer(models.BPE())
        # add_prefix_space=False keeps decode(encode(t)) == t exactly.
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        specials = [PAD, EOS, BOS, MASK] + [sentinel(i) for i in range(config.num_sentinels)]
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(training_pieces(texts), trainer=trainer)
        return cls(_only_fill_in_tokens_match_text(backend))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` file (or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as err:  # the Rust library raises plain Exceptions
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({err})") from None
        try:
            return cls(backend)
        except TokenizerError as err:
            raise TokenizerError(f"{path}: {err}") from None

    @classmethod
    def from_config(
        cls, config: TokenizerConfig, texts: Iterable[str], source: str | Path | None = None
    ) -> Tokenizer:
        """Load `config.path` when given, else train on `texts` (logged, naming `source`)."""
        if config.path:
            return cls.load(config.path)
        texts = list(texts)
        start = time.perf_counter()
        tokenizer = cls.train(texts, config.vocab_size, config.num_sentinels, config.min_frequency)
        log.info(
            "trained a %d-token BPE tokenizer on %d texts%s in %.1f s",
            tokenizer.vocab_size,
            len(texts),
            f" of {source}" if source else "",
            time.perf_counter() - start,
        )
        return tokenizer

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` atomically (a crash never leaves a half-written file)."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path = path / "tokenizer.json"
        with atomic_write(path) as tmp:
            # written by Python, not the Rust library: a full disk is an OSError naming the file
            tmp.write_text(self.backend.to_str(pretty=True), encoding="utf-8")
        return path

    def digest(self) -> str:
        """SHA-256 of the tokenizer's JSON: equal digests, equal tokenizers."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()

    # -- use --------------------------------------------------------------------------------

    def encode(self, text: str, specials: bool = True) -> list[int]:
        """Token ids of `text`; no special tokens are added (the data module appends EOS).
        `specials=False`: literal special-token strings (`<mask>`, `<extra_id_0>`) are encoded
        as the text they are (module doc)."""
        return self.encode_batch([text], specials)[0]

    def encode_batch(self, texts: Sequence[str], specials: bool = True) -> list[list[int]]:
        """`encode` for many texts at once (parallel in the Rust library)."""
        backend = self.backend if specials else self._text_backend()
        encodings = backend.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def _text_backend(self) -> HFTokenizer:
        """The backend with `encode_special_tokens` set, on a copy (the flag is not saved in
        tokenizer.json, and the shared backend keeps matching specials in prompts)."""
        if self._as_text is None:
            self._as_text = HFTokenizer.from_str(self.backend.to_str())
            self._as_text.encode_special_tokens = True
        return self._as_text

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.decode_batch([ids], skip_special_tokens)[0]

    def decode_batch(
        self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True
    ) -> list[str]:
        """Texts of many id sequences; special tokens (pad, eos, mask, ...) dropped by default."""
        if skip_special_tokens:
            special = self._special_set
            rows = [[int(i) for i in ids if int(i) not in special] for ids in batch]
        else:
            rows = [[int(i) for i in ids] for ids in batch]
        return self.backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def special_ids(self) -> list[int]:
        """Ids of every special token (pad, eos, bos, mask, sentinels, any others)."""
        return sorted(self._special_set)

    def _token_table(self, flag: Callable[[str], bool]) -> np.ndarray:
        """(V,) bool: `flag` of each token's own text (special tokens decoded as themselves)."""
        return np.array(
            [
                flag(self.backend.decode([i], skip_special_tokens=False))
                for i in range(self.vocab_size)
            ],
            dtype=bool,
        )

    def word_start_table(self) -> np.ndarray:
        """(V,) bool: True where a token begins a new word (its text starts with whitespace).

        Whole-word masking (BART) treats a token as the start of a word when it carries the
        leading space; special tokens also count as word starts.
        """
        table = self._token_table(lambda piece: not piece or piece[0].isspace())
        table[self.special_ids] = True
        return table

    def line_break_table(self) -> np.ndarray:
        """(V,) bool: True where a token's text holds a line break (special tokens never do)."""
        table = self._token_table(lambda piece: "\n" in piece)
        table[self.special_ids] = False
        return table

    def sentence_end_table(self) -> np.ndarray:
        """(V,) bool: True where a token ends a sentence ('.', '!' or '?', quotes allowed)."""
        return self._token_table(lambda piece: piece.rstrip("'\"”’)] \n").endswith((".", "!", "?")))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, pad={self.pad_id}, eos={self.eos_id}, "
            f"bos={self.bos_id}, mask={self.mask_id}, sentinels={len(self.sentinel_ids)})"
        )
