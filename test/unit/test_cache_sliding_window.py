"""A model's own sliding window is respected as DynamicCache respects it: a Mistral-style
``sliding_window`` without ``layer_types`` makes every layer slide (nothing left for the chunked
cache: a clear refusal, not a silently unbounded full-attention cache), and a mix of sliding and
full layers keeps transformers' sliding layers, holding what DynamicCache holds there."""

import pytest
import torch
from transformers import DynamicCache, MinistralConfig, MinistralForCausalLM, MistralConfig, MistralForCausalLM

from cache_models import COMMON
from kv_vla_ros.cache import CacheConfig, make_cache

CFG = CacheConfig(eviction="window", chunk_size=8, recent_chunks=2, budget_tokens=32)


def _model(config_cls, model_cls, **extra):
    config = config_cls(**COMMON, **extra)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return model_cls(config).eval()


def test_a_sliding_window_without_layer_types_is_refused_naming_the_window():
    model = _model(MistralConfig, MistralForCausalLM, sliding_window=15)
    reference = DynamicCache(config=model.config)
    assert all(type(layer).__name__ == "DynamicSlidingWindowLayer" for layer in reference.layers)
    with pytest.raises(ValueError, match="window of 15 tokens"):
        make_cache(CFG, model.config)


@torch.no_grad()
def test_sliding_layers_hold_what_dynamic_cache_holds_and_full_layers_are_chunked():
    n = COMMON["num_hidden_layers"]
    kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    model = _model(MinistralConfig, MinistralForCausalLM, sliding_window=15, layer_types=kinds,
                   head_dim=16)  # alternating sliding and full layers
    ids = torch.randint(0, COMMON["vocab_size"], (1, 64), generator=torch.Generator().manual_seed(1))
    ours, ref = make_cache(CFG, model.config), DynamicCache(config=model.config)
    for k in range(0, 64, 8):
        model(input_ids=ids[:, k:k + 8], past_key_values=ours, use_cache=True)
        model(input_ids=ids[:, k:k + 8], past_key_values=ref, use_cache=True)
    for i, kind in enumerate(kinds):
        if kind == "sliding_attention":
            assert ours.layers[i].keys.shape[-2] == ref.layers[i].keys.shape[-2] < 15  # the window, not 64
            assert ours.layers[i].get_mask_sizes(1) == ref.layers[i].get_mask_sizes(1)
        else:
            assert ours.layers[i].keys.shape[-2] <= CFG.budget_tokens < ref.layers[i].keys.shape[-2]
