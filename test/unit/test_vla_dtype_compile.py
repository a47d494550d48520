"""VLASession in half precision (bfloat16 on CPU, what CI can run) and with the compiled decode
step (its uncompiled CPU form): same decisions as the reference paths, within dtype tolerance."""

from __future__ import annotations

import pytest
import torch

from kv_vla_ros.cache import ChunkGate, gate_input_dim
from kv_vla_ros.vla import VLASession
from kv_vla_ros.vla.session import resolve_device_dtype
from test_vla_model import frames, tiny_model

STEPS = 24


def gated(model, **kw):
    per_step = model.config.tokens_per_step
    base = dict(eviction="gated", gate_threshold=0.0, budget_tokens=8 + 4 * per_step)
    base.update(kw)
    return model.config.cache.replace(**base)


def with_gate(model, seed=0):
    cfg = model.backbone_config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    model.attach_gate(ChunkGate.untrained(gate_input_dim(cfg.num_hidden_layers, head_dim), seed=seed))
    return model


def run(session, frs, episodes=1):
    logits, kept = [], []
    for _ in range(episodes):
        session.reset("go to the red ball")
        for f in frs:
            session.step(f)
            logits.append(session.last_logits.clone())
            kept.append(session.stats()["kept_chunks"])
    return torch.stack(logits), kept


def test_bfloat16_session_on_cpu_holds_half_the_bytes_and_tracks_float32():
    frs = frames(STEPS, seed=1)
    l32, _ = run(VLASession(with_gate(tiny_model(seed=2)), None), frs)
    s32 = VLASession(with_gate(tiny_model(seed=2)), None)
    run(s32, frs)
    s16 = VLASession(with_gate(tiny_model(seed=2)), None, dtype="bfloat16")
    l16, _ = run(s16, frs)
    assert s16.model.dtype == torch.bfloat16 and s16.stats()["dtype"] == "bfloat16"
    assert s16._cache.layers[0].keys.dtype == torch.bfloat16
    assert s16.stats()["tokens_held"] == s32.stats()["tokens_held"]
    assert s16.stats()["bytes_held"] * 2 == s32.stats()["bytes_held"]
    assert torch.isfinite(l16).all()
    # bfloat16 keeps ~3 significant digits: the logits follow float32's closely, not exactly
    assert (l16 - l32).abs().max() <= 0.05 * l32.abs().max() + 0.05
    assert (l16.argmax(-1) == l32.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_static_cache_matches_dynamic_in_each_dtype(dtype):
    frs = frames(STEPS, seed=3)
    model = with_gate(tiny_model("qwen2", seed=4))
    dyn_logits, dyn_kept = run(VLASession(model, gated(model), dtype=dtype), frs)
    st = VLASession(model, gated(model, static=True), dtype=dtype)
    st_logits, st_kept = run(st, frs)
    assert st_kept == dyn_kept, "the static cache must make the dynamic cache's decisions"
    assert st._cache.eviction.gate.lstm.weight_ih_l0.dtype == torch.float32  # scores in float32
    scores = list(st.stats()["gate_scores"].values())
    assert scores and all(0.0 <= s <= 1.0 for s in scores)
    tol = 1e-5 if dtype == "float32" else 0.05 * dyn_logits.abs().max().item() + 0.05
    assert (st_logits.float() - dyn_logits.float()).abs().max() <= tol


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_session_equals_the_static_session(dtype):
    """compile=True on a CPU runs the prepared step uncompiled: the same results as the plain static
    session, step for step, across episodes (the cache and its buffers are reused)."""
    frs = frames(12, seed=5)
    model = with_gate(tiny_model(seed=6))
    ref_logits, ref_kept = run(VLASession(model, gated(model, static=True), dtype=dtype), frs, episodes=2)
    compiled = VLASession(model, gated(model, static=True), dtype=dtype, compile=True)
    compiled.reset("warm")
    cache = compiled._cache
    logits, kept = run(compiled, frs, episodes=2)
    assert compiled._cache is cache, "a new episode must reuse the compiled cache"
    assert compiled.stats()["compiled"] == "eager"
    assert kept == ref_kept
    assert (logits - ref_logits).abs().max() <= 1e-6


def test_compile_needs_the_static_cache_and_device_dtype_checks():
    model = tiny_model()
    with pytest.raises(ValueError, match="cache.static: compile needs"):
        VLASession(model, gated(model), compile=True)
    session = VLASession(model, gated(model, static=True), compile=True)
    with pytest.raises(ValueError, match="cache.static"):
        session.set_cache_config(gated(model))
    session.set_cache_config(gated(model, static=True, gate_threshold=0.3))  # keeps the layout: fine
    with pytest.raises(ValueError, match="compile: expected a bool"):
        session.set_compile("yes")
    with pytest.raises(ValueError, match="dtype: float16 needs a CUDA device"):
        resolve_device_dtype("cpu", "float16")
    with pytest.raises(ValueError, match="dtype: expected one of"):
        resolve_device_dtype("cpu", "float64")
    with pytest.raises(ValueError, match="device:"):
        resolve_device_dtype("not-a-device", "float32")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda requested but CUDA is not available"):
            VLASession(model, device="cuda")
