"""s2s: a from-scratch encoder-decoder Transformer framework.

`import s2s` stays light: `s2s.ModelConfig` and `s2s.load_pretrained` import their modules (and
torch) on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ModelConfig", "load_pretrained"]


def __getattr__(name: str) -> Any:
    if name == "ModelConfig":
        from s2s.config import ModelConfig

        return ModelConfig
    if name == "load_pretrained":
        from s2s.bundle import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 's2s' has no attribute {name!r}")
