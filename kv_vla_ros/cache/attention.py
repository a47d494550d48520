"""`kv_vla_sdpa` / `kv_vla_eager`: attention functions registered through transformers'
`AttentionInterface` (no model code is patched).

They do two things the plain functions cannot:
- per-layer budgets: layers then hold different lengths, but the model builds one mask from the
  first layer's sizes. Every held key is visible to the new queries, so the right mask for any
  layer is "all past columns visible" followed by the mask's own last ``q`` (causal) columns;
- heavy hitters: they report the attention mass of the step's queries to the cache's eviction.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .chunked_cache import ACTIVE

IMPLEMENTATIONS = ("kv_vla_sdpa", "kv_vla_eager")


def _fit_mask(mask: torch.Tensor | None, kv_length: int) -> torch.Tensor | None:
    """Resize a ``[b, 1, q, kv0]`` mask (bool or additive float) to ``kv_length`` keys."""
    if mask is None or mask.ndim != 4 or mask.shape[-1] == kv_length:
        return mask
    q = mask.shape[-2]
    visible = True if mask.dtype == torch.bool else 0.0
    past = torch.full((*mask.shape[:-1], kv_length - q), visible, dtype=mask.dtype, device=mask.device)
    return torch.cat([past, mask[..., -q:]], dim=-1)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _probabilities(query, key, mask, scaling, softcap=None) -> torch.Tensor:
    """Attention probabilities ``[b, heads, q, kv]`` in float32."""
    key = _repeat_kv(key, query.shape[1] // key.shape[1])
    logits = (query.float() @ key.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    return logits.softmax(dim=-1)


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """Model-independent eager attention: ``query [b, hq, q, d]``, ``key/value [b, hkv, kv, d]``."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    probs = _probabilities(query, key, attention_mask, scaling, softcap).to(value.dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = probs @ _repeat_kv(value, query.shape[1] // value.shape[1])
    return out.transpose(1, 2).contiguous(), probs


def _wrap(base):
    def attention(module, query, key, value, attention_mask, **kwargs):
        # Consume the marker so that a later forward without this cache never reports into it.
        cache, ACTIVE.cache = getattr(ACTIVE, "cache", None), None
        layer_idx = getattr(module, "layer_idx", None)
        mine = cache is not None and layer_idx == getattr(ACTIVE, "layer_idx", None)
        layer_mask = getattr(cache.layers[layer_idx], "attention_mask", None) if mine else None
        if layer_mask is not None:  # static slots: the mask follows the slots' positions
            attention_mask = layer_mask(query.shape[-2], query.dtype, boolean=base is sdpa_attention_forward)
        else:
            attention_mask = _fit_mask(attention_mask, key.shape[-2])
        out, weights = base(module, query, key, value, attention_mask, **kwargs)
        if mine and cache.eviction.wants_attention:
            if weights is None:
                scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
                weights = _probabilities(query, key, attention_mask, scaling, kwargs.get("softcap"))
            cache.eviction.observe_attention(layer_idx, weights.float().sum(dim=(0, 1, 2)))
        return out, weights

    return attention


def register_kv_vla_attention() -> None:
    """Register both implementations (idempotent)."""
    AttentionInterface.register("kv_vla_sdpa", _wrap(sdpa_attention_forward))
    AttentionInterface.register("kv_vla_eager", _wrap(eager_attention))
    AttentionMaskInterface.register("kv_vla_sdpa", sdpa_mask)
    AttentionMaskInterface.register("kv_vla_eager", eager_mask)


def use_kv_vla_attention(model, base: str = "sdpa"):
    """Switch ``model`` to ``kv_vla_<base>`` attention (``base``: "sdpa" or "eager"); returns it."""
    if base not in ("sdpa", "eager"):
        raise ValueError(f"base: expected 'sdpa' or 'eager', got {base!r}")
    register_kv_vla_attention()
    model.set_attn_implementation(f"kv_vla_{base}")
    return model
