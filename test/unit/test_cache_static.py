"""The static-shape cache: fixed shapes per step, and exactly the dynamic cache's decisions."""

import pytest
import torch

from cache_models import explicit_mask, reference_logits, stream, tiny_model
from kv_vla_ros.cache import EVICTIONS, CacheConfig, make_cache, use_kv_vla_attention

EVICTING = [p for p in EVICTIONS if p != "full"]


def config_for(policy, **kw):
    base = dict(eviction=policy, chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=88, gate_threshold=0.5)
    base.update(kw)
    return CacheConfig(**base)


@pytest.mark.parametrize(
    "policy, block, base",
    [(p, 16, "sdpa") for p in EVICTING] + [("gated", 1, "eager"), ("h2o", 1, "sdpa"), ("h2o", 16, "eager")],
)
def test_static_equals_dynamic_and_explicit_mask(policy, block, base):
    model = use_kv_vla_attention(tiny_model("llama", base, seed=20), base)
    ids = torch.randint(0, 97, (1, 160), generator=torch.Generator().manual_seed(21))
    static = make_cache(config_for(policy, static=True), model.config)
    dynamic = make_cache(config_for(policy), model.config)
    ours, seen_before = stream(model, static, ids, block)
    theirs, seen_dyn = stream(model, dynamic, ids, block)
    assert seen_before == seen_dyn, "static and dynamic must hold the same positions at every step"
    assert (ours - theirs).abs().max().item() <= 1e-5
    ref = reference_logits(model, ids, explicit_mask(seen_before, 160), base)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_static_shapes_are_fixed_and_budget_holds():
    model = use_kv_vla_attention(tiny_model("qwen2", seed=22))
    cfg = config_for("gated", static=True, gate_threshold=0.0, summarize=True, summary_threshold=0.0)
    cache = make_cache(cfg, model.config)
    ids = torch.randint(0, 97, (1, 800), generator=torch.Generator().manual_seed(23))
    shapes = set()
    with torch.no_grad():
        for start in range(0, 800, 16):
            model(input_ids=ids[:, start : start + 16], past_key_values=cache, use_cache=True)
            shapes.add(tuple(cache.layers[0].keys.shape))
            assert cache.tokens_held() <= 88
    assert shapes == {(1, 2, 88 + 16, 16)}
    assert cache.stats()["tokens_seen"] == 800 and cache.stats()["summary_chunks"]


def test_static_rejects_what_it_cannot_hold():
    with pytest.raises(ValueError, match="static"):
        CacheConfig(eviction="full", static=True)
    with pytest.raises(ValueError, match="static"):
        make_cache(config_for("gated", static=True), tiny_model("llama").config)  # plain sdpa
    model = use_kv_vla_attention(tiny_model("llama"))
    cache = make_cache(config_for("gated", static=True), model.config)
    with pytest.raises(ValueError, match="static: a block of 200 tokens"):
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 200, dtype=torch.long), past_key_values=cache, use_cache=True)
