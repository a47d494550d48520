"""Budgets, held sets, positions, per-layer budgets, summaries, generate, stats, bad configs."""

import pytest
import torch
from transformers import AttentionInterface, DynamicCache

from cache_models import explicit_mask, tiny_model
from kv_vla_ros.cache import (
    EVICTIONS,
    CacheConfig,
    ChunkGate,
    allocate_layer_budgets,
    chunk_features,
    make_cache,
    use_kv_vla_attention,
)
from kv_vla_ros.cache.attention import eager_attention


def test_what_an_eviction_needs_is_read_from_its_class():
    """Validation and the cache ask the registered class, never the name: a budget only for
    evictions that rank, the prefix only for those that hold it, a gate only for the gated one."""
    for name, cls in EVICTIONS.items():
        if cls.needs_budget:
            with pytest.raises(ValueError, match="budget_tokens: eviction .* needs a budget"):
                CacheConfig(eviction=name, sink_tokens=4)
        else:
            assert CacheConfig(eviction=name, sink_tokens=4).budget_tokens is None
        cfg = CacheConfig(eviction=name, sink_tokens=4, chunk_size=8, budget_tokens=64)
        assert cfg.prefix_tokens == (4 if cls.holds_prefix else 0), name
        assert cfg.min_budget == cfg.prefix_tokens + 2 * 8
        assert cfg.evicts == cls.evicts
    assert [n for n, c in EVICTIONS.items() if not c.holds_prefix] == ["window"]
    assert [n for n, c in EVICTIONS.items() if c.needs_gate] == ["gated"]


def test_a_new_eviction_is_one_registered_class():
    """A new eviction needs its own file only: registered, it is a valid `CacheConfig.eviction`, its
    declared needs apply, and the cache runs it."""
    from kv_vla_ros.cache.eviction import Eviction, register_eviction

    @register_eviction("oldest_first_test")
    class OldestFirst(Eviction):
        holds_prefix = False

        def score(self, chunk_ids):
            return -torch.tensor(chunk_ids, dtype=torch.float32)  # the newest go first

    try:
        with pytest.raises(ValueError, match="needs a budget"):
            CacheConfig(eviction="oldest_first_test")
        cfg = CacheConfig(eviction="oldest_first_test", chunk_size=4, sink_tokens=3, budget_tokens=16)
        assert cfg.prefix_tokens == 0
        model = tiny_model("llama", seed=3)
        cache = make_cache(cfg, model.config)
        with torch.no_grad():
            for _ in range(10):
                model(input_ids=torch.randint(0, 100, (1, 4)), past_key_values=cache, use_cache=True)
        assert cache.stats()["tokens_held"] <= 16
        assert cache.eviction.name == "oldest_first_test"
    finally:
        EVICTIONS.pop("oldest_first_test")


@pytest.mark.parametrize(
    "policy, block",
    [(p, 37) for p in EVICTIONS if p != "full"] + [("gated", 1), ("h2o", 16)],
)
def test_long_stream_never_exceeds_budget_and_keeps_prefix_and_recent(policy, block):
    model = tiny_model("llama", seed=3)
    cfg = CacheConfig(eviction=policy, chunk_size=16, recent_chunks=3, sink_tokens=8, budget_tokens=128)
    cache = make_cache(cfg, model.config)
    ids = torch.randint(0, 97, (1, 2000), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for start in range(0, 2000, block):
            model(input_ids=ids[:, start : start + block], past_key_values=cache, use_cache=True)
            seen = min(2000, start + block)
            for layer in cache.chunked:
                pos = cache.held_positions(layer)
                assert pos.numel() <= cfg.budget_tokens
                assert cache.layers[layer].keys.shape[-2] == cache.layers[layer].values.shape[-2] == pos.numel()
                held = set(pos.tolist())
                prefix = set(range(min(seen, cfg.prefix_tokens)))
                assert prefix <= held
                n_chunks = -(-max(0, seen - cfg.prefix_tokens) // cfg.chunk_size)
                recent_start = cfg.prefix_tokens + max(0, n_chunks - cfg.recent_chunks) * cfg.chunk_size
                assert set(range(recent_start, seen)) <= held
    assert cache.get_seq_length() == 2000
    assert cache.stats()["tokens_seen"] == 2000


@pytest.mark.parametrize("policy", ["gated", "key_norm", "h2o"])
def test_positions_stay_absolute_and_k_v_travel_together(policy):
    """Layer 0's K/V of a token depend only on the token and its absolute position, so the held
    K and V must equal DynamicCache's at the held positions."""
    model = tiny_model("llama", seed=4)
    cfg = CacheConfig(eviction=policy, chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=72)
    cache = make_cache(cfg, model.config)
    dyn = DynamicCache(config=model.config)
    ids = torch.randint(0, 97, (1, 300), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for start in range(0, 300, 16):
            model(input_ids=ids[:, start : start + 16], past_key_values=cache, use_cache=True)
            model(input_ids=ids[:, start : start + 16], past_key_values=dyn, use_cache=True)
    pos = cache.held_positions(0)
    assert pos.numel() < 300
    torch.testing.assert_close(cache.layers[0].keys, dyn.layers[0].keys[..., pos, :], rtol=0, atol=1e-6)
    torch.testing.assert_close(cache.layers[0].values, dyn.layers[0].values[..., pos, :], rtol=0, atol=1e-6)


def register_reference_attention(masks: dict):
    """Eager attention with one explicit mask per layer (the reference for per-layer budgets)."""

    def reference(module, query, key, value, attention_mask, **kwargs):
        mask = masks[module.layer_idx]
        additive = torch.zeros(mask.shape, dtype=query.dtype).masked_fill(~mask, torch.finfo(query.dtype).min)
        return eager_attention(module, query, key, value, additive[None, None], **kwargs)

    AttentionInterface.register("kv_vla_test_reference", reference)


@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("block", [1, 16])
def test_per_layer_budgets_equal_per_layer_explicit_masks(base, block):
    model = use_kv_vla_attention(tiny_model("llama", seed=6), base)
    budgets = [56, 120, 88]
    cfg = CacheConfig(eviction="gated", chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=88,
                      gate_threshold=0.0, layer_budgets=budgets)
    cache = make_cache(cfg, model.config)
    length = 200
    ids = torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(7))
    logits, seen = [], {layer: [] for layer in range(3)}
    with torch.no_grad():
        for start in range(0, length, block):
            for layer in range(3):
                seen[layer].append((start, sorted(cache.held_positions(layer).tolist()) if start else []))
            logits.append(model(input_ids=ids[:, start : start + block], past_key_values=cache, use_cache=True).logits)
    held = [cache.tokens_held(layer) for layer in range(3)]
    assert all(h <= b for h, b in zip(held, budgets))
    assert len(set(held)) == 3, "layers must hold different lengths"
    masks = {layer: explicit_mask(seen[layer], length) for layer in range(3)}
    register_reference_attention(masks)
    model.set_attn_implementation("kv_vla_test_reference")
    with torch.no_grad():
        everything = torch.ones(1, 1, length, length, dtype=torch.bool)
        ref = model(input_ids=ids, use_cache=False, attention_mask=everything).logits
    assert (torch.cat(logits, dim=1) - ref).abs().max().item() <= 1e-5


def test_per_layer_budgets_need_kv_vla_attention():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="layer_budgets"):
        make_cache(CacheConfig(eviction="gated", chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=88,
                               layer_budgets=[56, 120, 88]), model.config)
    with pytest.raises(ValueError, match="layer_budgets"):
        make_cache(CacheConfig(eviction="gated", chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=88,
                               layer_budgets=[88, 88]), model.config)


def test_allocate_layer_budgets_favours_dispersed_layers_and_keeps_total():
    budgets = allocate_layer_budgets([0.8, 0.1, 0.4, 0.1], total=4 * 200, minimum=72, chunk_size=16)
    assert sum(budgets) <= 800 and sum(budgets) > 800 - 16
    assert budgets[0] > budgets[2] > budgets[1] and min(budgets) >= 72
    assert all((b - 72) % 16 == 0 for b in budgets)
    with pytest.raises(ValueError, match="total"):
        allocate_layer_budgets([1, 1], total=100, minimum=72, chunk_size=16)


def test_summaries_hold_one_token_per_summarised_chunk_within_budget():
    model = tiny_model("llama", seed=8)
    cfg = CacheConfig(eviction="random", chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=90,
                      summarize=True, summary_threshold=0.0)
    cache = make_cache(cfg, model.config)
    ids = torch.randint(0, 97, (1, 400), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for start in range(0, 400, 16):
            model(input_ids=ids[:, start : start + 16], past_key_values=cache, use_cache=True)
            assert cache.tokens_held() <= 90
    pos = cache.held_positions()
    summaries = (-pos[pos < 0] - 1).tolist()
    stats = cache.stats()
    assert sorted(summaries) == stats["summary_chunks"] and len(summaries) > 0
    # a summary is the mean of its chunk's layer-0 keys (layer 0 is eviction-independent)
    dyn = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=dyn, use_cache=True)
    c = summaries[0]
    start = 8 + 16 * c
    expected = dyn.layers[0].keys[..., start : start + 16, :].mean(-2)
    got = cache.layers[0].keys[..., (pos == -(c + 1)).nonzero().item(), :]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["gated", "sink_window", "h2o"])
def test_generate_equals_manual_greedy_loop(policy):
    model = tiny_model("qwen2", seed=10)
    cfg = CacheConfig(eviction=policy, chunk_size=8, recent_chunks=2, sink_tokens=4, budget_tokens=36,
                      gate_threshold=0.3)
    prompt = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(11))
    out = model.generate(prompt, past_key_values=make_cache(cfg, model.config), max_new_tokens=40, do_sample=False,
                         min_new_tokens=40, pad_token_id=0)
    cache = make_cache(cfg, model.config)
    tokens, step = prompt, prompt
    with torch.no_grad():
        for _ in range(40):
            nxt = model(input_ids=step, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
            tokens, step = torch.cat([tokens, nxt], dim=1), nxt
    assert cache.tokens_held() <= 36 < cache.get_seq_length()
    assert torch.equal(out, tokens)


def test_stats_report_seen_held_bytes_and_chunks():
    model = tiny_model("llama")
    cfg = CacheConfig(eviction="gated", chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=88,
                      gate_threshold=0.0)
    cache = make_cache(cfg, model.config)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 97, (1, 200)), past_key_values=cache, use_cache=True)
    s = cache.stats()
    assert s["tokens_seen"] == 200 and s["tokens_held"] == 88
    # bytes: layers x (K + V) x kv_heads x head_dim x held x 4 bytes
    assert s["bytes_held"] == 3 * 2 * 2 * 16 * 88 * 4
    assert len(s["kept_chunks"]) == 3 and all(e - b == 16 for b, e in s["kept_ranges"])
    assert set(s["last_gate_scores"]) == set(range(10)) and all(0 <= v <= 1 for v in s["last_gate_scores"].values())
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.stats()["tokens_held"] == 0


def test_gate_is_causal_and_roundtrips(tmp_path):
    gate = ChunkGate.untrained(in_dim=12, seed=1)
    feats = torch.randn(1, 10, 12)
    changed = feats.clone()
    changed[:, 6:] = torch.randn(1, 4, 12)
    a, _ = gate(feats)
    b, _ = gate(changed)
    assert torch.equal(a[:, :6], b[:, :6]) and not torch.equal(a[:, 6:], b[:, 6:])
    # streaming one chunk at a time equals the whole sequence
    state, parts = None, []
    for t in range(10):
        s, state = gate(feats[:, t : t + 1], state)
        parts.append(s)
    torch.testing.assert_close(torch.cat(parts, 1), a)
    loaded = ChunkGate.load(gate.save(str(tmp_path)), expected_in_dim=12)
    assert torch.equal(loaded(feats)[0], a)
    with pytest.raises(ValueError, match="in_dim"):
        ChunkGate.load(str(tmp_path), expected_in_dim=13)
    (tmp_path / "gate.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="gate"):
        ChunkGate.load(str(tmp_path))


def test_chunk_features_are_per_layer_means_of_k_then_v():
    states = [(torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)) for _ in range(3)]
    expected = torch.cat([t.mean(dim=(0, 1, 2)) for kv in states for t in kv])
    torch.testing.assert_close(chunk_features(states), expected)
    # layers with other head counts take the per-layer path: same layout
    states[1] = (torch.randn(1, 4, 16, 8), torch.randn(1, 4, 16, 8))
    expected = torch.cat([t.mean(dim=(0, 1, 2)) for kv in states for t in kv])
    torch.testing.assert_close(chunk_features(states), expected)


def test_gate_scorer_equals_the_modules_chunk_by_chunk():
    gate = ChunkGate.untrained(in_dim=12, seed=3)
    with torch.no_grad():  # a LayerNorm affine and biases that are not the identity / zero
        for p in gate.parameters():
            p.add_(0.1 * torch.randn_like(p))
    feats = torch.randn(10, 12)
    with torch.no_grad():
        expected, (h, c) = gate(feats[None])
    scorer, state, parts = gate.scorer(), None, []
    for lo, hi in [(0, 1), (1, 4), (4, 10)]:  # the state carries across calls
        scores, state = scorer(feats[lo:hi], state)
        assert scores.shape == (hi - lo,) and not scores.requires_grad
        parts.append(scores)
    torch.testing.assert_close(torch.cat(parts), expected[0])
    torch.testing.assert_close(state[0], h[0])
    torch.testing.assert_close(state[1], c[0])
    with torch.no_grad():  # a snapshot: a changed gate needs a new scorer
        gate.head.bias += 1.0
        expected = gate(feats[None])[0][0]
    assert not torch.allclose(scorer(feats)[0], expected)
    torch.testing.assert_close(gate.scorer()(feats)[0], expected)


@pytest.mark.parametrize("block", [16, 7])
def test_chunk_states_equal_a_search_by_position(block):
    model = tiny_model("llama", seed=12)
    cfg = CacheConfig(eviction="gated", chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=90,
                      gate_threshold=0.0, summarize=True, summary_threshold=0.3)
    cache = make_cache(cfg, model.config)
    ids = torch.randint(0, 97, (1, 300), generator=torch.Generator().manual_seed(13))
    checked = 0
    with torch.no_grad():
        for start in range(0, 300, block):
            model(input_ids=ids[:, start : start + block], past_key_values=cache, use_cache=True)
            pos = cache.held_positions()
            held = {int(p - 8) // 16 for p in pos.tolist() if p >= 8}
            for c in held:
                got = cache.chunk_states(c)
                sel = ((pos >= 8 + 16 * c) & (pos < 8 + 16 * (c + 1))).nonzero().flatten()
                for layer_idx, (k, v) in zip(cache.chunked, got):
                    layer = cache.layers[layer_idx]
                    assert torch.equal(k, layer.keys[..., sel, :]) and torch.equal(v, layer.values[..., sel, :])
                checked += 1
    assert checked > 50 and cache.stats()["summary_chunks"]


def test_gate_dimension_mismatch_is_rejected():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="in_dim"):
        make_cache(CacheConfig(eviction="gated"), model.config, gate=ChunkGate.untrained(in_dim=5))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"budget_tokens": -1}, "budget_tokens"),
        ({"eviction": "gated", "chunk_size": 50, "sink_tokens": 32, "budget_tokens": 100},
         "budget_tokens"),  # < 32 + 2 x 50
        ({"eviction": "lru"}, "eviction"),
        ({"recent_chunks": 0}, "recent_chunks"),
        ({"gate_threshold": 1.5}, "gate_threshold"),
        ({"sink_tokens": -3}, "sink_tokens"),
        ({"eviction": "gated", "chunk_size": 50, "sink_tokens": 32, "budget_tokens": 512, "layer_budgets": [512, 10]},
         "layer_budgets"),
        ({"eviction": "window", "budget_tokens": None}, "budget_tokens"),
        ({"chunk_size": 2.5}, "chunk_size"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        CacheConfig(**changes)


def test_make_cache_rejects_non_config():
    with pytest.raises(ValueError, match="config"):
        make_cache({"eviction": "full"}, tiny_model().config)


def stream_ids(model, cache, ids, block=16):
    with torch.no_grad():
        for start in range(0, ids.shape[1], block):
            model(input_ids=ids[:, start : start + block], past_key_values=cache, use_cache=True)


def test_reconfigure_live_keeps_history_and_applies_at_once():
    model = tiny_model("llama", seed=12)
    cfg = CacheConfig(eviction="sink_window", chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=200)
    cache = make_cache(cfg, model.config)
    ids = torch.randint(0, 97, (1, 400), generator=torch.Generator().manual_seed(13))
    stream_ids(model, cache, ids[:, :300])
    assert 200 - 16 < cache.tokens_held() <= 200
    before = set(cache.held_positions().tolist())
    cache.reconfigure(cfg.replace(budget_tokens=104))  # tighten: evicted now, oldest first
    after = set(cache.held_positions().tolist())
    assert cache.tokens_held() <= 104 and after < before and set(range(8)) <= after
    cache.reconfigure(cfg.replace(eviction="gated", budget_tokens=104, gate_threshold=0.0))
    assert cache.stats()["eviction"] == "gated" and cache.get_seq_length() == 300
    stream_ids(model, cache, ids[:, 300:])
    assert cache.tokens_held() <= 104 and cache.get_seq_length() == 400
    with pytest.raises(ValueError, match="chunk_size"):
        cache.reconfigure(cfg.replace(chunk_size=8))
    with pytest.raises(ValueError, match="budget_tokens"):
        cache.reconfigure(cfg.replace(budget_tokens=10))


def test_reconfigure_to_per_layer_budgets_and_back():
    model = use_kv_vla_attention(tiny_model("llama", seed=14), "sdpa")
    cfg = CacheConfig(eviction="key_norm", chunk_size=16, recent_chunks=2, sink_tokens=8, budget_tokens=120)
    cache = make_cache(cfg, model.config)
    ids = torch.randint(0, 97, (1, 320), generator=torch.Generator().manual_seed(15))
    stream_ids(model, cache, ids[:, :240])
    cache.reconfigure(cfg.replace(layer_budgets=[120, 72, 88]))
    held = [cache.tokens_held(i) for i in range(3)]
    assert all(h <= b for h, b in zip(held, [120, 72, 88])) and held[0] > held[2] > held[1]
    stream_ids(model, cache, ids[:, 240:])
    assert all(cache.tokens_held(i) <= b for i, b in enumerate([120, 72, 88]))
    cache.reconfigure(cfg.replace(budget_tokens=72))
    assert max(cache.tokens_held(i) for i in range(3)) <= 72
