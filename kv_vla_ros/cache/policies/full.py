"""`full`: hold every token (the reference every other policy is measured against)."""

import torch

from .base import ChunkPolicy, register_policy


@register_policy("full")
class FullPolicy(ChunkPolicy):
    evicts = False

    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        return torch.ones(len(chunk_ids))
