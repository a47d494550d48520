"""The cache is exact: without eviction it equals DynamicCache bit for bit; with eviction it equals
a full forward under an explicit mask of the held positions."""

import pytest
import torch
from transformers import DynamicCache

from cache_models import explicit_mask, reference_logits, stream, tiny_model
from kv_vla_ros.cache import EVICTIONS, CacheConfig, make_cache, use_kv_vla_attention

EVICTING = [p for p in EVICTIONS if p != "full"]


def config_for(policy: str, **kw) -> CacheConfig:
    base = dict(eviction=policy, chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=88, gate_threshold=0.5)
    if policy == "window":
        base["budget_tokens"] = 80
    base.update(kw)
    return CacheConfig(**base)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "mistral"])
@pytest.mark.parametrize("block", [1, 16])
def test_no_eviction_equals_dynamic_cache_bit_for_bit(arch, block):
    model = tiny_model(arch)
    ids = torch.randint(0, 97, (1, 96), generator=torch.Generator().manual_seed(1))
    for policy, budget in (("full", None), ("gated", 10_000), ("h2o", 10_000)):
        cache = make_cache(config_for(policy, budget_tokens=budget, gate_threshold=0.0), model.config)
        ours, _ = stream(model, cache, ids, block)
        theirs, _ = stream_dynamic(model, ids, block)
        assert cache.stats()["tokens_held"] == 96
        assert (ours - theirs).abs().max().item() == 0.0, policy


def stream_dynamic(model, ids, block):
    cache = DynamicCache(config=model.config)
    out = []
    with torch.no_grad():
        for start in range(0, ids.shape[1], block):
            out.append(model(input_ids=ids[:, start : start + block], past_key_values=cache, use_cache=True).logits)
    return torch.cat(out, dim=1), None


def check_against_explicit_mask(model, cache, attn, block, length=160):
    ids = torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(2))
    ours, seen_before = stream(model, cache, ids, block)
    assert cache.tokens_held() < length, "the test must exercise eviction"
    ref = reference_logits(model, ids, explicit_mask(seen_before, length), attn)
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("block", [1, 16])
@pytest.mark.parametrize("policy", EVICTING)
def test_eviction_equals_explicit_mask_llama(policy, block, attn):
    model = tiny_model("llama", attn)
    check_against_explicit_mask(model, make_cache(config_for(policy), model.config), attn, block)


@pytest.mark.parametrize("arch", ["qwen2", "gemma", "mistral"])
@pytest.mark.parametrize("policy", ["gated", "h2o", "sink_window"])
def test_eviction_equals_explicit_mask_other_architectures(arch, policy):
    model = tiny_model(arch, "sdpa")
    check_against_explicit_mask(model, make_cache(config_for(policy), model.config), "sdpa", 16)


@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("block", [1, 16])
def test_kv_vla_attention_single_budget_is_exact(base, block):
    """The registered kv_vla_* attention changes nothing when every layer holds the same tokens,
    and feeds real query attention to h2o."""
    model = use_kv_vla_attention(tiny_model("llama", base), base)
    check_against_explicit_mask(model, make_cache(config_for("h2o"), model.config), base, block)


def test_eviction_changes_the_output():
    """Guard against a reference that would pass trivially: the evicting stream differs from full."""
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (1, 160), generator=torch.Generator().manual_seed(2))
    full, _ = stream(model, make_cache(config_for("full", budget_tokens=None), model.config), ids, 16)
    evicted, _ = stream(model, make_cache(config_for("window"), model.config), ids, 16)
    assert (full - evicted).abs().max().item() > 1e-3
