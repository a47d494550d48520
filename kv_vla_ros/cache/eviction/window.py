"""`window`: a sliding window, recent tokens only (no prefix); newer chunks rank higher."""

import torch

from .base import Eviction, register_eviction


@register_eviction("window")
class WindowEviction(Eviction):
    holds_prefix = False
    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        # Rank by recency: the budget then holds the newest chunks that fit.
        return torch.tensor(chunk_ids, dtype=torch.float32)
