"""`sink_window` (StreamingLLM): the prefix as attention sink plus the newest chunks that fit."""

from .base import register_eviction
from .window import WindowEviction


@register_eviction("sink_window")
class SinkWindowEviction(WindowEviction):
    """Same recency ranking as `window`; the difference is the held prefix."""

    holds_prefix = True
