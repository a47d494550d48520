"""The chunked KV cache (torch + transformers' cache base classes only).

Public API: `CacheConfig`, `make_cache(config, model_config, gate=None)`, the eviction registry,
the gate (`ChunkGate`), per-layer budgets (`allocate_layer_budgets`) and the `kv_vla_*`
attention that per-layer budgets need (`use_kv_vla_attention`).
"""

from .attention import attention_implementation, register_kv_vla_attention, use_kv_vla_attention
from .budgets import allocate_layer_budgets
from .chunked_cache import ChunkedKVCache, kv_bytes_per_token, make_cache
from .config import CacheConfig
from .eviction import EVICTIONS, Eviction, make_eviction, register_eviction
from .gate import GATE_FILE, ChunkGate, GateConfig, chunk_features, gate_input_dim
from .layer import ChunkedLayer
from .transient import TransientView

__all__ = [
    "CacheConfig",
    "attention_implementation",
    "ChunkGate",
    "Eviction",
    "ChunkedKVCache",
    "ChunkedLayer",
    "GATE_FILE",
    "GateConfig",
    "EVICTIONS",
    "TransientView",
    "allocate_layer_budgets",
    "chunk_features",
    "gate_input_dim",
    "kv_bytes_per_token",
    "make_cache",
    "make_eviction",
    "register_kv_vla_attention",
    "register_eviction",
    "use_kv_vla_attention",
]
