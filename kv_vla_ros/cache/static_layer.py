"""`StaticChunkedLayer`: the static-shape variant of `ChunkedLayer`.

K/V live in preallocated slots ``[batch, kv_heads, capacity, head_dim]``; new tokens are written
in place into free slots and eviction only clears a keep mask, so every step attends over the
same shapes (constant per-step cost; `torch.compile` / CUDA-graph friendly). Slots are in no
particular order, so the attention mask comes from the slots' positions, not from transformers'
causal mask: the `kv_vla_*` attention asks the layer for it (`attention_mask`).

The slot table (which position each slot holds) lives on the CPU, where the eviction
bookkeeping reads it without a device sync. Before each forward `prepare` picks the free slots and
uploads, in one copy, the table, the slots to write and the query positions into a buffer kept
per block length: the forward itself (`update`, `attention_mask`) is then pure device work on
buffers whose addresses never change, which is what a captured CUDA graph replays.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

EMPTY = -(1 << 40)  # position of an empty slot: below every real or summary position


class StaticChunkedLayer(CacheLayerMixin):
    """Same interface as `ChunkedLayer` (``positions``, ``held``, ``keep``, ``select``, ...).

    Tensors:
        keys, values: ``[batch, kv_heads, capacity, head_dim]`` slot buffers (device).
        slot_positions: ``[capacity]`` int64 CPU: absolute position per slot (``EMPTY`` when free;
            a summary of chunk ``c`` is ``-(c + 1)``).
        bound: the device views of the forward under way: slot positions ``[capacity]``, slots
            written ``[q]``, query positions ``[q]``.
    """

    is_croppable = False
    is_compileable = True

    def __init__(self, capacity: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.capacity = int(capacity)
        self.seen = 0
        self.slot_positions = torch.full((self.capacity,), EMPTY, dtype=torch.long)
        self._mask_positions = self.slot_positions  # slot positions as of the last update
        self._buffers: dict[int, torch.Tensor] = {}  # block length -> packed device buffer
        self.bound: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.external = False  # True: the container prepared this forward (`begin_step`)
        self._step_start = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = torch.zeros(b, h, self.capacity, d, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(b, h, self.capacity, value_states.shape[-1], dtype=value_states.dtype,
                                  device=value_states.device)
        self.is_initialized = True

    def _free_slots(self, n: int) -> torch.Tensor:
        free = (self.slot_positions == EMPTY).nonzero().flatten()
        if free.numel() < n:
            raise ValueError(
                f"static: a block of {n} tokens does not fit the {free.numel()} free slots of capacity "
                f"{self.capacity}; feed smaller blocks or use the dynamic cache (static=False)"
            )
        return free[:n]

    def prepare(self, q: int, share: "StaticChunkedLayer | None" = None) -> None:
        """Claim free slots for the next ``q`` tokens and upload this forward's table (eager, CPU
        bookkeeping + one host-to-device copy). ``share``: a layer that holds the very same table
        (shared keep decisions): reuse its device buffer instead of uploading a copy."""
        slots = self._free_slots(q)
        new_pos = torch.arange(self.seen, self.seen + q)
        # A fresh tensor: the previous snapshot (`_mask_positions`) stays intact.
        positions = self.slot_positions.clone()
        positions[slots] = new_pos
        self.slot_positions = self._mask_positions = positions
        self._step_start, self.seen = self.seen, self.seen + q
        if share is not None:
            if not torch.equal(share.slot_positions, positions):
                raise RuntimeError("static: layers sharing keep decisions hold different slot tables")
            self.bound = share.bound
            return
        buffer = self._buffers.get(q)
        if buffer is None:
            buffer = self._buffers[q] = torch.empty(self.capacity + 2 * q, dtype=torch.long, device=self.device)
        buffer.copy_(torch.cat([positions, slots, new_pos]))
        self.bound = (buffer[: self.capacity], buffer[self.capacity: self.capacity + q], buffer[self.capacity + q:])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``[batch, kv_heads, q, head_dim]`` into the prepared slots; return the whole buffers."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if not self.external:
            self.prepare(key_states.shape[-2])
        slots = self.bound[1]
        self.keys.index_copy_(-2, slots, key_states.to(self.keys.dtype))
        self.values.index_copy_(-2, slots, value_states.to(self.values.dtype))
        return self.keys, self.values

    def attention_mask(self, query_length: int, dtype: torch.dtype, boolean: bool) -> torch.Tensor:
        """``[1, 1, q, capacity]`` mask of this forward: a slot is visible to query ``i`` if it is
        held and its position is not after the query's (bool, or additive float for eager).
        Device work only, from the prepared buffers (capturable)."""
        pos, _, q_pos = self.bound
        visible = (pos != EMPTY).view(1, -1) & (pos.view(1, -1) <= q_pos.view(-1, 1))
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
        slots = self._held_slots()[index.cpu()].to(self.keys.device)
        return self.keys.index_select(-2, slots), self.values.index_select(-2, slots)

    def keep(self, index: torch.Tensor) -> None:
        held = self._held_slots()
        drop = torch.ones(held.numel(), dtype=torch.bool)
        drop[index.cpu()] = False
        if drop.any():
            self.slot_positions = self.slot_positions.clone()
            self.slot_positions[held[drop]] = EMPTY

    def append_summary(self, chunk_id: int, key: torch.Tensor, value: torch.Tensor) -> None:
        slot = self._free_slots(1)
        self.keys.index_copy_(-2, slot.to(self.keys.device), key.to(self.keys.dtype))
        self.values.index_copy_(-2, slot.to(self.keys.device), value.to(self.values.dtype))
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
        # During a prepared forward `seen` already counts the block: report where it starts.
        return self._step_start if self.external else self.seen

    def get_max_length(self) -> int:
        return self.capacity

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # Shapes only: the `kv_vla_*` attention replaces this mask with `attention_mask`.
        return self.capacity, self.seen - self.capacity + query_length

    def reset(self) -> None:
        """New episode. The slot buffers stay allocated (what they hold is masked out): a CUDA
        graph captured over them stays valid across episodes."""
        self.seen = self._step_start = 0
        self.slot_positions = torch.full((self.capacity,), EMPTY, dtype=torch.long)
        self._mask_positions = self.slot_positions
        self.external = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("StaticChunkedLayer: beam search is not supported")
