"""`sink_window` (StreamingLLM): the prefix as attention sink plus the newest chunks that fit."""

from .base import register_policy
from .window import WindowPolicy


@register_policy("sink_window")
class SinkWindowPolicy(WindowPolicy):
    """Same recency ranking as `window`; the difference is the held prefix (see `CacheConfig`)."""
