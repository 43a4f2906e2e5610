"""s2s: a from-scratch encoder-decoder Transformer framework."""

__version__ = "0.1.0"

from s2s.bundle import load_pretrained as load_pretrained
from s2s.config import ModelConfig

__all__ = ["ModelConfig"]
