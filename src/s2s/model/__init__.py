"""The encoder-decoder model in plain PyTorch (no Lightning, no Hydra)."""

from s2s.model.cache import DecoderCache, LayerCache
from s2s.model.transformer import DecoderOutput, Seq2SeqTransformer, shift_right

__all__ = ["DecoderCache", "DecoderOutput", "LayerCache", "Seq2SeqTransformer", "shift_right"]
