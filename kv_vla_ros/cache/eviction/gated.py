"""`gated`: the recurrent gate of KV-Efficient VLA scores each chunk as it leaves the window.

One score per chunk, shared by K and V and by every layer; the LSTM state carries from chunk to
chunk and is reset with the episode, so a chunk's score depends on that chunk and earlier ones
only (causal).
"""

from __future__ import annotations

import copy

import torch

from ..gate import chunk_features
from .base import Eviction, register_eviction


@register_eviction("gated")
class GatedEviction(Eviction):
    uses_threshold = True
    needs_budget = False  # the threshold alone evicts; a budget caps it
    needs_gate = True

    def __init__(self, cache) -> None:
        super().__init__(cache)
        gate = cache.gate
        if any(p.dtype != torch.float32 for p in gate.parameters()):
            # Scores are compared to thresholds and ranked: keep them in float32 whatever the
            # backbone's dtype (a float32 copy; the gate is tiny).
            gate = copy.deepcopy(gate).float()
        self.gate = gate
        self.scorer = gate.scorer()
        self._param = next(gate.parameters())  # its device and dtype, read on every call
        self.reset()

    def reset(self) -> None:
        self.state = None

    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        param = self._param  # the scorer itself runs without autograd
        feats = [chunk_features(self.cache.chunk_states(c)) for c in chunk_ids]
        feats = feats[0].unsqueeze(0) if len(feats) == 1 else torch.stack(feats)
        if feats.device != param.device or feats.dtype != param.dtype:
            feats = feats.to(device=param.device, dtype=param.dtype)  # [n, in_dim]
        scores, self.state = self.scorer(feats, self.state)
        return scores if scores.device.type == "cpu" else scores.cpu()
