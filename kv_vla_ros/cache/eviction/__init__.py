"""Eviction strategies, one small module each, registered by name (the one list of them: `EVICTIONS`)."""

from . import full, gated, h2o, key_norm, random, sink_window, window  # noqa: F401  (registers them)
from .base import EVICTIONS, Eviction, register_eviction


def eviction_class(name: str) -> type[Eviction]:
    """The eviction registered as ``name`` (``ValueError`` naming the known ones otherwise)."""
    if name not in EVICTIONS:
        raise ValueError(f"eviction: unknown eviction {name!r}; known: {', '.join(EVICTIONS)}")
    return EVICTIONS[name]


def make_eviction(name: str, cache) -> Eviction:
    """Instantiate the eviction registered as ``name`` for ``cache``."""
    return eviction_class(name)(cache)


__all__ = ["EVICTIONS", "Eviction", "eviction_class", "make_eviction", "register_eviction"]
