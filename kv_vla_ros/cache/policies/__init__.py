"""Eviction policies, one small module each, registered by name."""

from . import full, gated, h2o, key_norm, random, sink_window, window  # noqa: F401  (registers them)
from .base import POLICIES, ChunkPolicy, register_policy


def make_policy(name: str, cache) -> ChunkPolicy:
    """Instantiate the policy registered as ``name`` for ``cache``."""
    if name not in POLICIES:
        raise ValueError(f"policy: unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name](cache)


__all__ = ["POLICIES", "ChunkPolicy", "make_policy", "register_policy"]
