"""Eviction evictions, one small module each, registered by name."""

from . import full, gated, h2o, key_norm, random, sink_window, window  # noqa: F401  (registers them)
from .base import EVICTIONS, Eviction, register_eviction


def make_eviction(name: str, cache) -> Eviction:
    """Instantiate the eviction registered as ``name`` for ``cache``."""
    if name not in EVICTIONS:
        raise ValueError(f"eviction: unknown eviction {name!r}; known: {', '.join(sorted(EVICTIONS))}")
    return EVICTIONS[name](cache)


__all__ = ["EVICTIONS", "Eviction", "make_eviction", "register_eviction"]
