"""Text generation: greedy, beam search and sampling over the decoder's KV cache.

    tokens = generate(model, input_ids, attention_mask, max_new_tokens=32)   # greedy
    tokens = generate(model, input_ids, attention_mask,
                      config=GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=32))

See `core.generate` for the output layout (new tokens only, pad after EOS).
"""

from s2s.generation.config import STRATEGIES, GenerationConfig
from s2s.generation.core import generate

__all__ = ["STRATEGIES", "GenerationConfig", "generate"]
