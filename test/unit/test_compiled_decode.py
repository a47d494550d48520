"""The compiled decode step: the prepared static-cache step (eager on CPU, a CUDA graph on a GPU)
equals the plain static cache step for step, across episodes and live reconfiguration."""

import pytest
import torch

from cache_models import tiny_model
from kv_vla_ros.cache import CacheConfig, make_cache, use_kv_vla_attention
from kv_vla_ros.cache.compiled import CompiledDecode

CHUNK, SINK = 8, 4


def config(**kw):
    base = dict(eviction="gated", chunk_size=CHUNK, recent_chunks=2, sink_tokens=SINK, budget_tokens=52,
                gate_threshold=0.0, static=True)
    base.update(kw)
    return CacheConfig(**base)


def embeds(model, ids):
    return model.get_input_embeddings()(ids)


@torch.inference_mode()
def run_plain(model, cache, ids, steps):
    """Prefix, then ``steps`` chunks through ``model(...)``: per-step last logits, held positions."""
    model(inputs_embeds=embeds(model, ids[:, :SINK]), past_key_values=cache, use_cache=True)
    out = []
    for t in range(steps):
        block = embeds(model, ids[:, SINK + t * CHUNK: SINK + (t + 1) * CHUNK])
        logits = model(inputs_embeds=block, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        out.append((logits, sorted(cache.held_positions().tolist())))
    return out


@torch.inference_mode()
def run_decode(model, decode, ids, steps):
    model(inputs_embeds=embeds(model, ids[:, :SINK]), past_key_values=decode.cache, use_cache=True)
    out = []
    for t in range(steps):
        logits = decode(embeds(model, ids[:, SINK + t * CHUNK: SINK + (t + 1) * CHUNK]))
        out.append((logits, sorted(decode.cache.held_positions().tolist())))
    return out


def assert_same(a, b, atol):
    assert len(a) == len(b)
    for (la, pa), (lb, pb) in zip(a, b):
        assert pa == pb, "the prepared step must make the plain step's keep decisions"
        assert (la.float() - lb.float()).abs().max().item() <= atol


@pytest.mark.parametrize("arch, kw", [("llama", {}), ("qwen2", dict(summarize=True, summary_threshold=0.0)),
                                      ("mistral", dict(layer_budgets=[52, 36, 44], eviction="key_norm"))])
def test_eager_decode_equals_plain_static_steps(arch, kw):
    model = use_kv_vla_attention(tiny_model(arch, seed=7))
    ids = torch.randint(0, 97, (1, SINK + 30 * CHUNK), generator=torch.Generator().manual_seed(8))
    plain = run_plain(model, make_cache(config(**kw), model.config), ids, 30)
    decode = CompiledDecode(model, make_cache(config(**kw), model.config))
    assert decode.mode == "eager"
    assert_same(run_decode(model, decode, ids, 30), plain, atol=1e-5)


def test_eager_decode_across_episodes_and_live_changes():
    model = use_kv_vla_attention(tiny_model("llama", seed=9))
    ids = torch.randint(0, 97, (1, SINK + 20 * CHUNK), generator=torch.Generator().manual_seed(10))
    cache = make_cache(config(), model.config)
    decode = CompiledDecode(model, cache)
    first = run_decode(model, decode, ids, 20)
    buffers = cache.layers[0].keys.data_ptr()
    cache.reset()  # a new episode reuses the slot buffers (a captured graph stays valid)
    again = run_decode(model, decode, ids, 20)
    assert cache.layers[0].keys.data_ptr() == buffers
    assert_same(again, first, atol=0)  # same episode again, same results
    with torch.inference_mode():
        cache.reconfigure(cache.config.replace(budget_tokens=36))  # tighter: evicted at once, same slots
    assert cache.tokens_held() <= 36
    with pytest.raises(ValueError, match="budget_tokens: the static cache has 60 slots"):
        cache.reconfigure(cache.config.replace(budget_tokens=100))


def test_failed_forward_leaves_the_cache_usable():
    model = use_kv_vla_attention(tiny_model("llama", seed=11))
    decode = CompiledDecode(model, make_cache(config(), model.config))
    ids = torch.randint(0, 97, (1, SINK + 4 * CHUNK), generator=torch.Generator().manual_seed(12))
    run_decode(model, decode, ids, 3)
    with pytest.raises(Exception), torch.inference_mode():
        decode(torch.zeros(1, CHUNK, 5))  # wrong hidden size
    assert not decode.cache.external_step
    with torch.inference_mode():
        assert torch.isfinite(decode(embeds(model, ids[:, -CHUNK:]))).all()


def test_compile_rejects_what_it_cannot_run():
    model = use_kv_vla_attention(tiny_model("llama"))
    with pytest.raises(ValueError, match="static"):
        CompiledDecode(model, make_cache(config(static=False), model.config))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        CompiledDecode(model, make_cache(config(), model.config), mode="cuda_graph")
    with pytest.raises(ValueError, match="compile mode"):
        CompiledDecode(model, make_cache(config(), model.config), mode="max-autotune")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_graph_never_recaptures_after_warm_up(dtype):
    """GPU only: one capture per block length, then none across steps, episodes and live
    parameter changes that keep the layout; results equal the eager prepared step."""
    model = use_kv_vla_attention(tiny_model("llama", seed=13)).to("cuda", dtype)
    ids = torch.randint(0, 97, (1, SINK + 40 * CHUNK), generator=torch.Generator().manual_seed(14)).cuda()
    eager = run_decode(model, CompiledDecode(model, make_cache(config(), model.config), mode="eager"), ids, 40)
    cache = make_cache(config(), model.config)
    graph = CompiledDecode(model, cache, mode="cuda_graph")
    captured = run_decode(model, graph, ids, 40)
    assert graph.captures == 1
    atol = 1e-4 if dtype == torch.float32 else 5e-2
    assert_same(captured, eager, atol)
    for _ in range(2):  # new episodes
        cache.reset()
        assert_same(run_decode(model, graph, ids, 40), eager, atol)
    with torch.inference_mode():
        cache.reconfigure(cache.config.replace(budget_tokens=36, gate_threshold=0.3))
    with torch.inference_mode():
        for t in range(5):
            assert torch.isfinite(graph(embeds(model, ids[:, SINK + t * CHUNK: SINK + (t + 1) * CHUNK]))).all()
    assert graph.captures == 1, "a live change that keeps the layout must not re-capture"
