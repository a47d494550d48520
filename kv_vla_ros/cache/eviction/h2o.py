"""`h2o`: heavy hitters, chunks ranked by the attention they have accumulated (H2O-like).

The mass comes from the real queries when the model runs the `kv_vla_*` attention (see
`kv_vla_ros.cache.attention`); under plain sdpa/eager the cache API exposes no queries, so the
new block's keys stand in for them (their RoPE rotation matches the queries'). Scores keep
growing while a chunk is held, so the ranking is refreshed every step.
"""

from __future__ import annotations

import torch

from ..static_layer import EMPTY
from .base import Eviction, register_eviction


@register_eviction("h2o")
class H2OEviction(Eviction):
    wants_attention = True

    def __init__(self, cache) -> None:
        super().__init__(cache)
        self.reset()

    def reset(self) -> None:
        # chunk id -> accumulated attention, averaged over layers; only chunks still held (O(held))
        self.mass: dict[int, float] = {}
        self.positions: dict[int, torch.Tensor] = {}  # layer -> positions matching its last update

    def observe_update(self, layer_idx: int, keys: torch.Tensor, q: int) -> None:
        """``keys`` ``[b, h, held + q, d]`` just returned by the layer's update."""
        self.positions[layer_idx] = self.cache.layers[layer_idx].attention_positions
        if self.cache.attention_hooked:
            return  # the real attention will be reported by observe_attention
        k = keys.float()
        logits = k[..., -q:, :] @ k.transpose(-1, -2) / k.shape[-1] ** 0.5  # [b, h, q, held + q]
        pos = self.positions[layer_idx].to(k.device)
        before = self.cache.layers[layer_idx].seen - q
        q_pos = torch.arange(before, before + q, device=k.device)
        # visible: held (static layers have empty slots) and not after the query (causal block)
        visible = (pos.view(1, -1) <= q_pos.view(-1, 1)) & (pos.view(1, -1) > EMPTY)
        logits = logits.masked_fill(~visible, float("-inf"))
        self._accumulate(layer_idx, logits.softmax(-1).sum(dim=(0, 1, 2)))

    def observe_attention(self, layer_idx: int, token_mass: torch.Tensor) -> None:
        self._accumulate(layer_idx, token_mass.float())

    def _accumulate(self, layer_idx: int, token_mass: torch.Tensor) -> None:
        sink, size = self.cache.sink, self.cache.config.chunk_size
        pos = self.positions[layer_idx].to(token_mass.device)
        regular = pos >= sink
        chunk = ((pos[regular] - sink) // size).cpu()
        if chunk.numel() == 0:
            return
        ids, inverse = torch.unique(chunk, return_inverse=True)
        sums = torch.zeros(ids.numel()).index_add_(0, inverse, token_mass[regular].float().cpu())
        for c, m in zip(ids.tolist(), (sums / len(self.cache.chunked)).tolist()):
            self.mass[c] = self.mass.get(c, 0.0) + m

    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        return torch.tensor([self.mass.get(c, 0.0) for c in chunk_ids], dtype=torch.float32)

    def rescore(self, chunk_ids: list[int], scores: torch.Tensor) -> torch.Tensor:
        return self.score(chunk_ids) if chunk_ids else scores

    def forget(self, chunk_ids: list[int]) -> None:
        for c in chunk_ids:
            self.mass.pop(c, None)
