"""`full`: hold every token (the reference every other eviction is measured against)."""

import torch

from .base import Eviction, register_eviction


@register_eviction("full")
class FullEviction(Eviction):
    evicts = False
    needs_budget = False

    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        return torch.ones(len(chunk_ids))
