"""`random`: random chunk utilities (seeded by `CacheConfig.seed`, reset with the episode)."""

import torch

from .base import Eviction, register_eviction


@register_eviction("random")
class RandomEviction(Eviction):
    def __init__(self, cache) -> None:
        super().__init__(cache)
        self.reset()

    def reset(self) -> None:
        self.generator = torch.Generator().manual_seed(self.cache.config.seed)

    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        return torch.rand(len(chunk_ids), generator=self.generator)
