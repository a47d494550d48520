"""`CacheConfig`: the one description of a chunked KV cache, shared by the node, the CLI and
the offline tools (ROS parameters mirror it one to one as `cache.<field>`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Kept in sync with the policy registry by a test; listed here so that validation does not
# import the policies (and their torch modules) just to check a name.
POLICY_NAMES = ("full", "window", "sink_window", "h2o", "key_norm", "random", "gated")


@dataclass
class CacheConfig:
    """What the cache holds and how it decides.

    Token stream: ``[prefix: sink_tokens][chunk 0][chunk 1]...``; chunk ``k`` covers absolute
    positions ``[sink_tokens + k*chunk_size, sink_tokens + (k+1)*chunk_size)``.

    Attributes:
        policy: registered eviction policy name (see ``POLICY_NAMES``).
        chunk_size: tokens per chunk (a natural choice: one control step's tokens).
        recent_chunks: newest chunks always held verbatim (the open chunk counts as one).
        sink_tokens: the prefix (instruction) always held. ``window`` holds no prefix.
        budget_tokens: hard cap on tokens held per layer after each update (prefix + recent +
            kept chunks + summaries); ``None`` means no cap (only ``full`` or a thresholded gate).
        gate_threshold: ``gated`` keeps an old chunk only if its score is at least this.
        summarize: an evicted chunk scoring at least ``summary_threshold`` leaves one summary
            token (score-weighted mean of its keys and values) instead of nothing.
        summary_threshold: see ``summarize``.
        layer_budgets: optional per-layer budgets (ScaleKV); one int per attention layer, each at
            least prefix + recent window; the ranking stays shared, each layer keeps its own top
            chunks. Needs the ``kv_vla_sdpa``/``kv_vla_eager`` attention (``use_kv_vla_attention``).
        seed: seed of the ``random`` policy and of an untrained gate's initialisation.
        static: preallocated slots and a keep mask instead of growing tensors: fixed shapes per
            step (constant cost, compile friendly). Needs a budget and the ``kv_vla_*`` attention.
    """

    policy: str = "gated"
    chunk_size: int = 50
    recent_chunks: int = 2
    sink_tokens: int = 32
    budget_tokens: int | None = 512
    gate_threshold: float = 0.5
    summarize: bool = False
    summary_threshold: float = 0.25
    layer_budgets: list[int] | None = None
    seed: int = 0
    static: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def prefix_tokens(self) -> int:
        """Prefix held by the policy (``window`` is recent-only: it holds no prefix)."""
        return 0 if self.policy == "window" else self.sink_tokens

    @property
    def min_budget(self) -> int:
        """Smallest budget that still holds the prefix and the recent window."""
        return self.prefix_tokens + self.recent_chunks * self.chunk_size

    @property
    def evicts(self) -> bool:
        return self.policy != "full"

    @property
    def bounded(self) -> bool:
        """True when a hard cap holds the cache (an evicting policy with a budget); False when it
        can grow by a chunk per step for the whole episode (``full``, or a thresholded gate
        without ``budget_tokens``)."""
        return self.evicts and (self.budget_tokens is not None or self.layer_budgets is not None)

    def needs_new_cache(self, other: "CacheConfig") -> bool:
        """Whether switching from this config to ``other`` changes the layout of a running cache
        (chunk size, prefix, static slots, to or from the prefix-less ``window``), so that it can
        only apply to a new cache (the next episode)."""
        return (self.chunk_size != other.chunk_size or self.sink_tokens != other.sink_tokens
                or self.static != other.static or (self.policy == "window") != (other.policy == "window"))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"policy: unknown policy {self.policy!r}; known: {', '.join(POLICY_NAMES)}")
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
            raise ValueError("static: the static-shape cache needs an evicting policy and a budget_tokens")
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
        elif self.policy not in ("full", "gated"):
            raise ValueError(f"budget_tokens: policy {self.policy!r} ranks chunks and needs a budget")
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


__all__ = ["CacheConfig", "POLICY_NAMES", "field_names"]
