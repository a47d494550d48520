"""The tiny base class of evictions and their registry by name (kvpress style).

An eviction only *ranks* chunks: it gives each closed chunk a utility score when the chunk leaves
the recent window. The cache turns scores into keep/evict decisions (threshold, budget, per-layer
budgets, summaries) in one place, so every eviction obeys the same invariants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..chunked_cache import ChunkedKVCache

EVICTIONS: dict[str, type["Eviction"]] = {}


def register_eviction(name: str) -> Callable[[type["Eviction"]], type["Eviction"]]:
    def wrap(cls: type[Eviction]) -> type[Eviction]:
        if name in EVICTIONS:
            raise ValueError(f"eviction: {name!r} is registered twice")
        cls.name = name
        EVICTIONS[name] = cls
        return cls

    return wrap


class Eviction:
    """Scores chunks. Subclasses override `score` (and, for dynamic scores, `rescore`).

    What an eviction needs is declared here, on its class, and read by `CacheConfig.validate`
    and the cache: a new eviction is one file with one ``@register_eviction`` line.
    """

    name = "base"
    #: whether `gate_threshold` applies (scores are utilities in [0, 1])
    uses_threshold = False
    #: whether the eviction wants the attention of each step's queries (see `observe_attention`)
    wants_attention = False
    #: False for `full`: the cache never evicts
    evicts = True
    #: False for `window` (recent tokens only): the prefix is not held, so switching to or from such an
    #: eviction changes the cache's layout (it applies to a new cache)
    holds_prefix = True
    #: True when the eviction only ranks chunks, so a budget decides what goes (False for `full`, which
    #: never evicts, and `gated`, whose threshold alone can evict)
    needs_budget = True
    #: True when the eviction scores with the cache's gate (an untrained one is made when none is given)
    needs_gate = False

    def __init__(self, cache: "ChunkedKVCache") -> None:
        self.cache = cache

    def reset(self) -> None:
        """New episode."""

    def score(self, chunk_ids: list[int]) -> torch.Tensor:
        """Utility ``[len(chunk_ids)]`` (float32, CPU) of chunks that just left the recent window.

        Called once per chunk, in chunk order, while the chunk is still held in every layer.
        """
        raise NotImplementedError

    def rescore(self, chunk_ids: list[int], scores: torch.Tensor) -> torch.Tensor:
        """Current utility of old chunks still held; static evictions return ``scores``."""
        return scores

    def forget(self, chunk_ids: list[int]) -> None:
        """These chunks are gone from every layer: drop any per-chunk state (keeps it O(held))."""

    def observe_attention(self, layer_idx: int, token_mass: torch.Tensor) -> None:
        """Attention mass ``[held + q]`` that this step's queries put on each key of a layer."""
