"""`StaticChunkedLayer`: the static-shape variant of `ChunkedLayer`.

K/V live in preallocated slots ``[batch, kv_heads, capacity, head_dim]``; new tokens are written
in place into free slots and eviction only clears a keep mask, so every step attends over the
same shapes (constant per-step cost; `torch.compile` / CUDA-graph friendly). Slots are in no
particular order, so the attention mask comes from the slots' positions, not from transformers'
causal mask: the `kv_vla_*` attention asks the layer for it (`attention_mask`).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

EMPTY = -(1 << 40)  # position of an empty slot: below every real or summary position


class StaticChunkedLayer(CacheLayerMixin):
    """Same interface as `ChunkedLayer` (``positions``, ``held``, ``keep``, ``select``, ...).

    Tensors:
        keys, values: ``[batch, kv_heads, capacity, head_dim]`` slot buffers.
        slot_positions: ``[capacity]`` absolute position per slot (``EMPTY`` when free; a summary
            of chunk ``c`` is ``-(c + 1)``).
    """

    is_croppable = False
    is_compileable = True

    def __init__(self, capacity: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.capacity = int(capacity)
        self.seen = 0
        self.slot_positions = torch.full((self.capacity,), EMPTY, dtype=torch.long)
        self._mask_positions = self.slot_positions  # slot positions as of the last update

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = torch.zeros(b, h, self.capacity, d, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(b, h, self.capacity, value_states.shape[-1], dtype=value_states.dtype,
                                  device=value_states.device)
        self.slot_positions = self.slot_positions.to(key_states.device)
        self.is_initialized = True

    def _free_slots(self, n: int) -> torch.Tensor:
        free = (self.slot_positions == EMPTY).nonzero().flatten()
        if free.numel() < n:
            raise ValueError(
                f"static: a block of {n} tokens does not fit the {free.numel()} free slots of capacity "
                f"{self.capacity}; feed smaller blocks or use the dynamic cache (static=False)"
            )
        return free[:n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``[batch, kv_heads, q, head_dim]`` into free slots; return the whole slot buffers."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        slots = self._free_slots(q)
        self.keys.index_copy_(-2, slots, key_states.to(self.keys.dtype))
        self.values.index_copy_(-2, slots, value_states.to(self.values.dtype))
        self.slot_positions = self.slot_positions.clone()  # keep the previous snapshot intact
        self.slot_positions[slots] = torch.arange(self.seen, self.seen + q, device=slots.device)
        self.seen += q
        # The mask of this forward is fixed now; eviction after the last layer must not change it.
        self._mask_positions = self.slot_positions
        return self.keys, self.values

    def attention_mask(self, query_length: int, dtype: torch.dtype, boolean: bool) -> torch.Tensor:
        """``[1, 1, q, capacity]`` mask of this forward: a slot is visible to query ``i`` if it is
        held and its position is not after the query's (bool, or additive float for eager)."""
        pos = self._mask_positions
        q_pos = torch.arange(self.seen - query_length, self.seen, device=pos.device).view(-1, 1)
        visible = (pos != EMPTY).view(1, -1) & (pos.view(1, -1) <= q_pos)
        if boolean:
            return visible[None, None]
        return torch.zeros(visible.shape, dtype=dtype, device=pos.device).masked_fill(
            ~visible, torch.finfo(dtype).min)[None, None]

    # ---- the ChunkedLayer interface used by the container ------------------------------------
    def _held_slots(self) -> torch.Tensor:
        return (self.slot_positions != EMPTY).nonzero().flatten()

    @property
    def positions(self) -> torch.Tensor:
        """``[held]`` positions of held tokens (slot order)."""
        return self.slot_positions[self._held_slots()]

    @property
    def attention_positions(self) -> torch.Tensor:
        """``[capacity]`` per returned key: its position, ``EMPTY`` for a free slot."""
        return self._mask_positions

    @property
    def held(self) -> int:
        return int((self.slot_positions != EMPTY).sum())

    def select(self, index: torch.Tensor):
        slots = self._held_slots()[index.to(self.slot_positions.device)]
        return self.keys.index_select(-2, slots), self.values.index_select(-2, slots)

    def keep(self, index: torch.Tensor) -> None:
        held = self._held_slots()
        drop = torch.ones(held.numel(), dtype=torch.bool, device=held.device)
        drop[index.to(held.device)] = False
        if drop.any():
            self.slot_positions = self.slot_positions.clone()
            self.slot_positions[held[drop]] = EMPTY

    def append_summary(self, chunk_id: int, key: torch.Tensor, value: torch.Tensor) -> None:
        slot = self._free_slots(1)
        self.keys.index_copy_(-2, slot, key.to(self.keys.dtype))
        self.values.index_copy_(-2, slot, value.to(self.values.dtype))
        self.slot_positions = self.slot_positions.clone()
        self.slot_positions[slot] = -(chunk_id + 1)

    def nbytes(self) -> int:
        """Bytes of the held tokens (the preallocated buffers: `allocated_bytes`)."""
        if not self.is_initialized:
            return 0
        per_token = (self.keys[..., :1, :].numel() * self.keys.element_size()
                     + self.values[..., :1, :].numel() * self.values.element_size())
        return self.held * per_token

    def allocated_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    # ---- transformers API ---------------------------------------------------------------------
    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return self.capacity

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # Shapes only: the `kv_vla_*` attention replaces this mask with `attention_mask`.
        return self.capacity, self.seen - self.capacity + query_length

    def reset(self) -> None:
        self.seen = 0
        self.slot_positions = torch.full((self.capacity,), EMPTY, dtype=torch.long, device=self.slot_positions.device)
        self._mask_positions = self.slot_positions
        self.keys = self.values = None
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("StaticChunkedLayer: beam search is not supported")
