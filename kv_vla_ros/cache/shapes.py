"""Shapes a cache needs from a model config: the text config, head size, KV bytes per token and
the static cache's slot count."""

from __future__ import annotations

from .config import CacheConfig


def text_config(model_config):
    return model_config.get_text_config(decoder=True) if hasattr(model_config, "get_text_config") else model_config


def static_capacity(config: CacheConfig) -> int:
    """Slots per layer of the static cache: the largest budget plus the largest block fed at once
    (the prefix, or one chunk: a control step)."""
    return max(config.layer_budgets or [config.budget_tokens or 0]) + max(config.sink_tokens, config.chunk_size)


def head_dim_of(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def kv_bytes_per_token(model_config, element_size: int = 4) -> int:
    """Bytes one token adds to a full KV cache of ``model_config``: K and V of
    ``[kv_heads, head_dim]`` per attention layer, ``element_size`` bytes per value."""
    cfg = text_config(model_config)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim_of(cfg) * element_size
