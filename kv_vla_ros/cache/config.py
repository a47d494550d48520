"""`CacheConfig`: the one description of a chunked KV cache, shared by the node, the CLI and
the offline tools (ROS parameters mirror it one to one as `cache.<field>`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kv_vla_ros.cache.eviction import EVICTIONS, eviction_class
from kv_vla_ros.cache.settings import FIXED, NEXT_EPISODE, setting


@dataclass
class CacheConfig:
    """What the cache holds and how it decides. Each field's help, bounds and when a change applies
    on a running node are its metadata (`kv_vla_ros.cache.settings`); the ROS parameters
    ``cache.<field>``, the ``--cache`` spec help, config/kv_vla.yaml's comments and docs/ros.md's
    table are generated from them.

    Token stream: ``[prefix: sink_tokens][chunk 0][chunk 1]...``; chunk ``k`` covers absolute
    positions ``[sink_tokens + k*chunk_size, sink_tokens + (k+1)*chunk_size)``.

    The class defaults hold everything (``full``, no prefix, no budget): exact for any model, and
    bounded by nothing. A model's cache comes from its checkpoint (``config.json`` "cache", or
    ``kv_vla_policy.json`` for π0: ``policy.default_cache_config()``); the node warns when what it
    runs is unbounded. What an eviction needs (a prefix, a budget, a gate) is declared on its class
    (`kv_vla_ros.cache.eviction`); validation reads it from there.
    """

    eviction: str = setting("full", "which old chunks go when the cache is over its budget: full (none), window "
                            "(the oldest, no prefix), sink_window, h2o, key_norm, random, gated (the gate's lowest "
                            "scores)", when="to or from window: from the next episode")
    chunk_size: int = setting(16, "tokens per cache chunk, the unit every keep/evict decision takes (the package's "
                              "models: one control step's tokens)", bounds=(1, 1 << 20), applies=FIXED,
                              when="the tokens per step")
    recent_chunks: int = setting(2, "newest chunks always held verbatim (the open chunk counts as one)",
                                 bounds=(1, 1 << 20))
    sink_tokens: int = setting(0, "the prefix (instruction) always held; window holds none", bounds=(0, 1 << 20),
                               applies=FIXED, when="the instruction length")
    budget_tokens: int | None = setting(None, "at most this many tokens held per layer after each update (prefix + "
                                        "recent + kept chunks + summaries); None: no cap (full, or a gate with a "
                                        "threshold only)", bounds=(0, 1 << 30), when="a tighter budget evicts at once")
    gate_threshold: float = setting(0.5, "gated keeps an old chunk only if its score is at least this",
                                    bounds=(0.0, 1.0))
    summarize: bool = setting(False, "an evicted chunk scoring at least summary_threshold leaves one summary token "
                              "(the score-weighted mean of its keys and values) instead of nothing")
    summary_threshold: float = setting(0.25, "see summarize", bounds=(0.0, 1.0))
    layer_budgets: list[int] | None = setting(None, "per-layer budgets (ScaleKV), one per attention layer, each at "
                                              "least prefix + recent window; the ranking stays shared, each layer "
                                              "keeps its own top chunks (needs the kv_vla_* attention)")
    seed: int = setting(0, "seed of the random eviction and of an untrained gate", bounds=(0, (1 << 31) - 1),
                        applies=NEXT_EPISODE)
    static: bool = setting(False, "preallocated slots and a keep mask instead of growing tensors: the same shapes "
                           "every step (constant cost, compile friendly); needs a budget and the kv_vla_* attention",
                           applies=NEXT_EPISODE)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def eviction_class(self):
        """The registered eviction class named by `eviction` (its declared needs: `holds_prefix`, ...)."""
        return eviction_class(self.eviction)

    @property
    def prefix_tokens(self) -> int:
        """Prefix held by the eviction (``window`` is recent-only: it holds no prefix)."""
        return self.sink_tokens if self.eviction_class.holds_prefix else 0

    @property
    def min_budget(self) -> int:
        """Smallest budget that still holds the prefix and the recent window."""
        return self.prefix_tokens + self.recent_chunks * self.chunk_size

    @property
    def evicts(self) -> bool:
        return self.eviction_class.evicts

    @property
    def bounded(self) -> bool:
        """True when a hard cap holds the cache (an eviction other than full, with a budget); False when it
        can grow by a chunk per step for the whole episode (``full``, or a thresholded gate
        without ``budget_tokens``)."""
        return self.evicts and (self.budget_tokens is not None or self.layer_budgets is not None)

    def needs_new_cache(self, other: "CacheConfig") -> bool:
        """Whether switching from this config to ``other`` changes the layout of a running cache
        (chunk size, prefix, static slots, to or from the prefix-less ``window``), so that it can
        only apply to a new cache (the next episode)."""
        return (self.chunk_size != other.chunk_size or self.sink_tokens != other.sink_tokens
                or self.static != other.static
                or self.eviction_class.holds_prefix != other.eviction_class.holds_prefix)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        needs = eviction_class(self.eviction)  # ValueError naming the known evictions
        for name in ("chunk_size", "recent_chunks", "sink_tokens", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected an int, got {value!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size: must be >= 1, got {self.chunk_size}")
        if self.recent_chunks < 1:
            raise ValueError(f"recent_chunks: must be >= 1, got {self.recent_chunks}")
        if self.sink_tokens < 0:
            raise ValueError(f"sink_tokens: must be >= 0, got {self.sink_tokens}")
        for name in ("gate_threshold", "summary_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")
        for name in ("summarize", "static"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if self.static and (self.budget_tokens is None or not self.evicts):
            raise ValueError("static: the static-shape cache needs an eviction other than full and a budget_tokens")
        budget = self.budget_tokens
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, int):
                raise ValueError(f"budget_tokens: expected an int or None, got {budget!r}")
            if budget < 0:
                raise ValueError(f"budget_tokens: must be >= 0, got {budget}")
            if self.evicts and budget < self.min_budget:
                raise ValueError(
                    f"budget_tokens: {budget} is smaller than the prefix plus the recent window "
                    f"({self.prefix_tokens} + {self.recent_chunks} x {self.chunk_size} = {self.min_budget})"
                )
        elif needs.needs_budget:
            raise ValueError(f"budget_tokens: eviction {self.eviction!r} ranks chunks and needs a budget")
        if self.layer_budgets is not None:
            if not isinstance(self.layer_budgets, (list, tuple)) or not self.layer_budgets:
                raise ValueError(f"layer_budgets: expected a non-empty list of ints, got {self.layer_budgets!r}")
            for i, b in enumerate(self.layer_budgets):
                if isinstance(b, bool) or not isinstance(b, int):
                    raise ValueError(f"layer_budgets[{i}]: expected an int, got {b!r}")
                if self.evicts and b < self.min_budget:
                    raise ValueError(
                        f"layer_budgets[{i}]: {b} is smaller than the prefix plus the recent window ({self.min_budget})"
                    )
            self.layer_budgets = [int(b) for b in self.layer_budgets]

    def replace(self, **changes: Any) -> "CacheConfig":
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CacheConfig":
        check_known_fields(cls, data, "cache config")
        return cls(**data)


def check_known_fields(cls, data: dict[str, Any], what: str) -> None:
    """``ValueError`` naming the first key of ``data`` that is not a field of dataclass ``cls``
    (shared by every config loaded from JSON: cache, VLA, π0 policy)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown {what} field (known: {', '.join(sorted(known))})")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(CacheConfig)]


__all__ = ["CacheConfig", "EVICTIONS", "check_known_fields", "field_names"]
