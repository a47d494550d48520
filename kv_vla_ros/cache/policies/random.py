"""`random`: random chunk utilities (seeded by `CacheConfig.seed`, reset with the episode)."""

import torch

from .base import ChunkPolicy, register_policy


@register_policy("random")
class RandomPolicy(ChunkPolicy):
    def __init__(self, cache) -> None:
        super().__init__(cache)
        self.reset()

    def reset(self) -> None:
        self.generator = torch.Generator().manual_seed(self.cache.config.seed)

    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        return torch.rand(len(chunk_ids), generator=self.generator)
