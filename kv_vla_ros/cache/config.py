"""`CacheConfig`: the one description of a chunked KV cache, shared by the node, the CLI and
the offline tools (ROS parameters mirror it one to one as `cache.<field>`)."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Any

# Kept in sync with the eviction registry by a test; listed here so that validation does not
# import the evictions (and their torch modules) just to check a name.
EVICTION_NAMES = ("full", "window", "sink_window", "h2o", "key_norm", "random", "gated")


@dataclass
class CacheConfig:
    """What the cache holds and how it decides.

    Token stream: ``[prefix: sink_tokens][chunk 0][chunk 1]...``; chunk ``k`` covers absolute
    positions ``[sink_tokens + k*chunk_size, sink_tokens + (k+1)*chunk_size)``.

    Attributes:
        eviction: which chunks go when the cache is over budget: a registered name (see
            ``EVICTION_NAMES``). Called ``policy`` before (still accepted, with a DeprecationWarning).
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
        seed: seed of the ``random`` eviction and of an untrained gate's initialisation.
        static: preallocated slots and a keep mask instead of growing tensors: fixed shapes per
            step (constant cost, compile friendly). Needs a budget and the ``kv_vla_*`` attention.
    """

    eviction: str = "gated"
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
        """Prefix held by the eviction (``window`` is recent-only: it holds no prefix)."""
        return 0 if self.eviction == "window" else self.sink_tokens

    @property
    def min_budget(self) -> int:
        """Smallest budget that still holds the prefix and the recent window."""
        return self.prefix_tokens + self.recent_chunks * self.chunk_size

    @property
    def evicts(self) -> bool:
        return self.eviction != "full"

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
                or self.static != other.static or (self.eviction == "window") != (other.eviction == "window"))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.eviction not in EVICTION_NAMES:
            raise ValueError(f"eviction: unknown eviction {self.eviction!r}; known: {', '.join(EVICTION_NAMES)}")
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
        elif self.eviction not in ("full", "gated"):
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

    @property
    def policy(self) -> str:
        """Deprecated name of `eviction`."""
        deprecated_name("CacheConfig.policy", "CacheConfig.eviction")
        return self.eviction

    @policy.setter
    def policy(self, value: str) -> None:
        deprecated_name("CacheConfig.policy", "CacheConfig.eviction")
        self.eviction = value

    def replace(self, **changes: Any) -> "CacheConfig":
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **_renamed_fields(changes, "CacheConfig.replace"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CacheConfig":
        data = _renamed_fields(dict(data), "cache config")
        check_known_fields(cls, data, "cache config")
        return cls(**data)


def check_known_fields(cls, data: dict[str, Any], what: str) -> None:
    """``ValueError`` naming the first key of ``data`` that is not a field of dataclass ``cls``
    (shared by every config loaded from JSON: cache, VLA, π0 policy)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown {what} field (known: {', '.join(sorted(known))})")


# Old field names that still load, for one release: {old: new}.
RENAMED_FIELDS = {"policy": "eviction"}


def deprecated_name(old: str, new: str, stacklevel: int = 3) -> None:
    """One DeprecationWarning for a renamed setting (field, flag or parameter)."""
    warnings.warn(f"{old} is deprecated: it is called {new} now (the old name goes in the next release)",
                  DeprecationWarning, stacklevel=stacklevel)


def _renamed_fields(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with old field names (`RENAMED_FIELDS`) turned into the new ones, with a warning."""
    for old, new in RENAMED_FIELDS.items():
        if old in data:
            if new in data:
                raise ValueError(f"{old}: the old name of {new}; give one of them, not both ({where})")
            deprecated_name(f"{where}: {old}", new, stacklevel=4)
            data[new] = data.pop(old)
    return data


def _accept_renamed_fields(init):
    """``CacheConfig(policy=...)`` keeps working for one release (a DeprecationWarning)."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        init(self, *args, **_renamed_fields(kwargs, "CacheConfig"))

    return wrapper


CacheConfig.__init__ = _accept_renamed_fields(CacheConfig.__init__)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(CacheConfig)]


__all__ = ["CacheConfig", "EVICTION_NAMES", "RENAMED_FIELDS", "deprecated_name", "field_names"]
