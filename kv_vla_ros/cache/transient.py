"""`TransientView`: tokens that attend to a cache's history without ever joining it.

π0's action expert reads the VLM's prefix cache: for each denoising step its tokens (the state and
the noisy action chunk) attend to every held key and to each other, and are then thrown away. Through
this view each layer's ``update`` returns the held keys/values with the new ones appended, and stores
nothing: the underlying cache is never written, scored, evicted or advanced, so "rolling back" the
denoising tokens is exact by construction (no crop of a cache whose tokens may have been evicted).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache


class TransientView(Cache):
    """A read-only view of ``cache`` (a ``ChunkedKVCache`` or any layered ``Cache``).

    ``update(key_states [b, h, q, d], value_states, layer_idx)`` returns
    ``(cat(held_keys, key_states), cat(held_values, value_states))`` along the token axis;
    ``get_seq_length()`` is the underlying cache's (tokens seen), so positions stay absolute.
    """

    def __init__(self, cache: Cache) -> None:
        super().__init__(layers=list(cache.layers))
        self.base = cache
        for layer in cache.layers:
            if getattr(layer, "attention_mask", None) is not None:
                raise ValueError("static: a transient view needs the dynamic cache (static=False): "
                                 "static slots carry their own causal mask")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.base.layers[layer_idx]
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or not layer.is_initialized or keys.shape[-2] == 0:
            return key_states, value_states
        return (torch.cat([keys, key_states.to(keys.dtype)], dim=-2),
                torch.cat([values, value_states.to(values.dtype)], dim=-2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.base.get_seq_length(layer_idx)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        held = self.held(layer_idx)
        return held + query_length, self.get_seq_length(layer_idx) - held

    def held(self, layer_idx: int = 0) -> int:
        """Tokens the underlying layer holds (what the transient queries see before their own)."""
        keys = getattr(self.base.layers[layer_idx], "keys", None)
        return 0 if keys is None else keys.shape[-2]

    def reset(self) -> None:
        raise RuntimeError("TransientView: reset the underlying cache, not the view")


__all__ = ["TransientView"]
