"""`key_norm`: chunks whose keys have a small L2 norm rank higher.

Low-norm keys draw more attention (Devoto et al., 2024, "A Simple and Effective L2 Norm-Based
Strategy for KV Cache Compression"); the utility is minus the mean key norm over layers, heads
and the chunk's tokens.
"""

import torch

from .base import Eviction, register_eviction


@register_eviction("key_norm")
class KeyNormEviction(Eviction):
    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        norms = []
        for cid in chunk_ids:
            per_layer = [k.float().norm(dim=-1).mean() for k, _ in self.cache.chunk_states(cid)]
            norms.append(torch.stack(per_layer).mean())
        return -torch.stack(norms).cpu()
