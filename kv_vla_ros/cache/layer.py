"""`ChunkedLayer`: one attention layer's held keys and values, with their absolute positions.

It plugs into transformers' layered cache API (`CacheLayerMixin`): `update` appends like
`DynamicLayer` (so with nothing evicted the tensors are bit-identical to `DynamicCache`'s), while
`get_seq_length` counts tokens *seen*, so new tokens keep absolute positions after eviction, and
`get_mask_sizes` reports the physical length plus an offset so that every held token is visible
to the new queries and the new block stays causal.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, get_layer_types_and_kwargs

from .shapes import static_capacity
from .static_layer import StaticChunkedLayer


class ChunkedLayer(DynamicLayer):
    """Held K/V of one layer.

    Tensors:
        keys, values: ``[batch, kv_heads, held, head_dim]`` (RoPE already applied to keys).
        positions: ``[held]`` int64 absolute position of each held token; a summary token of
            chunk ``c`` is stored as ``-(c + 1)``.
    """

    is_croppable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen = 0
        self.positions = torch.zeros(0, dtype=torch.long)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.positions = torch.zeros(0, dtype=torch.long, device=key_states.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``[batch, kv_heads, q, head_dim]`` new states; return all held + new (pre-eviction)."""
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        q = key_states.shape[-2]
        new_pos = torch.arange(self.seen, self.seen + q, device=self.positions.device)
        self.positions = torch.cat([self.positions, new_pos])
        self.seen += q
        return keys, values

    def get_seq_length(self) -> int:
        """Tokens seen (not held): the next token's absolute position."""
        return self.seen

    @property
    def held(self) -> int:
        return 0 if self.keys is None or not self.is_initialized else self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # kv index i maps to position i + offset; with offset = seen - held every held token sits
        # before the first query position (seen) and the new block maps onto its true positions.
        held = self.held
        return held + query_length, self.seen - held

    @property
    def attention_positions(self) -> torch.Tensor:
        """``[held]`` position of each key returned by the last update (the physical order)."""
        return self.positions

    def select(self, index: torch.Tensor):
        """K/V ``[batch, kv_heads, n, head_dim]`` of the held tokens at physical ``index``."""
        index = index.to(self.keys.device)
        return self.keys.index_select(-2, index), self.values.index_select(-2, index)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the held tokens at physical ``index`` (``[n]`` int64), in that order."""
        if index.numel() == self.held:
            return
        index = index.to(self.keys.device)
        self.keys = self.keys.index_select(-2, index)
        self.values = self.values.index_select(-2, index)
        self.positions = self.positions.index_select(0, index.to(self.positions.device))

    def append_summary(self, chunk_id: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Add one summary token ``[batch, kv_heads, 1, head_dim]`` standing for chunk ``chunk_id``."""
        self.keys = torch.cat([self.keys, key.to(self.keys.dtype)], dim=-2)
        self.values = torch.cat([self.values, value.to(self.values.dtype)], dim=-2)
        marker = torch.tensor([-(chunk_id + 1)], dtype=torch.long, device=self.positions.device)
        self.positions = torch.cat([self.positions, marker])

    def nbytes(self) -> int:
        if self.held == 0:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def reset(self) -> None:
        super().reset()
        self.seen = 0
        self.positions = torch.zeros(0, dtype=torch.long)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("ChunkedLayer: crop is not supported (tokens may already be evicted)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("ChunkedLayer: beam search is not supported (one decision per chunk across the "
                                  "batch)")


def build_layers(config, text_config) -> list:
    """One cache layer per decoder layer: a chunked layer (static slots when ``config.static``) for
    full attention, transformers' own sliding layer for sliding attention (already bounded by the
    model's window; its mask relies on contiguous positions). The kinds are the ones DynamicCache
    builds, so a Mistral-style ``sliding_window`` without ``layer_types`` makes every layer slide."""
    layer_types, layer_kwargs = get_layer_types_and_kwargs(text_config)
    capacity = static_capacity(config)
    layers = []
    for i, (kind, kwargs) in enumerate(zip(layer_types[: text_config.num_hidden_layers], layer_kwargs)):
        if kind == "full_attention":
            layers.append(StaticChunkedLayer(capacity) if config.static else ChunkedLayer())
        elif kind == "sliding_attention":
            layers.append(DynamicSlidingWindowLayer(sliding_window=kwargs["sliding_window"]))
        else:
            raise ValueError(f"model_config.layer_types[{i}]: {kind!r} layers are not supported by the chunked cache")
    return layers
