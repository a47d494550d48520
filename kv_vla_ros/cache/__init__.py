"""The chunked KV cache (torch + transformers' cache base classes only).

Public API: `CacheConfig`, `make_cache(config, model_config, gate=None)`, the eviction registry,
the gate (`ChunkGate`), per-layer budgets (`allocate_layer_budgets`) and the `kv_vla_*`
attention that per-layer budgets need (`use_kv_vla_attention`).
"""

from .attention import register_kv_vla_attention, use_kv_vla_attention
from .budgets import allocate_layer_budgets
from .chunked_cache import ChunkedKVCache, kv_bytes_per_token, make_cache
from .config import EVICTION_NAMES, CacheConfig, deprecated_name
from .eviction import EVICTIONS, Eviction, make_eviction, register_eviction
from .gate import GATE_FILE, ChunkGate, GateConfig, chunk_features, gate_input_dim
from .layer import ChunkedLayer
from .transient import TransientView

__all__ = [
    "CacheConfig",
    "ChunkGate",
    "Eviction",
    "ChunkedKVCache",
    "ChunkedLayer",
    "GATE_FILE",
    "GateConfig",
    "EVICTIONS",
    "EVICTION_NAMES",
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

# Old names of the eviction registry, for one release (a DeprecationWarning on use).
_RENAMED = {"ChunkPolicy": "Eviction", "POLICIES": "EVICTIONS", "POLICY_NAMES": "EVICTION_NAMES",
            "make_policy": "make_eviction", "register_policy": "register_eviction"}


def __getattr__(name: str):
    if name in _RENAMED:
        deprecated_name(f"kv_vla_ros.cache.{name}", f"kv_vla_ros.cache.{_RENAMED[name]}")
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'kv_vla_ros.cache' has no attribute {name!r}")
