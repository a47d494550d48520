"""Training under eviction: the teacher-forced eviction mask is what the streaming chunked cache
holds, step by step, so training on it trains the policy on the histories a budget leaves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kv_vla_ros.cache import CacheConfig
from kv_vla_ros.train import TrainConfig
from kv_vla_ros.train.eviction import batch_eviction_mask, eviction_horizon, eviction_mask
from kv_vla_ros.vla import VLAConfig, VLAModel, VLASession

TINY = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 2048}


def tiny_model(seed: int = 0) -> VLAModel:
    torch.manual_seed(seed)
    cfg = VLAConfig(backbone=dict(TINY), image_size=24, patch_size=8, vision_hidden=32, frame_tokens=2,
                    max_instruction_tokens=8, vision_frame_context=True)
    return VLAModel(cfg).eval()


def stream(model: VLAModel, frames: np.ndarray, cfg: CacheConfig):
    """Stream an episode; per step the action logits and the scores the cache gave each chunk."""
    session = VLASession(model, cache_config=cfg)
    session.reset("go to the red ball")
    actions, logits, scores, held = [], [], {}, []
    for f in frames:
        actions.append(int(session.step(f)[0]))
        logits.append(session.last_logits.clone())
        scores.update(session._cache.ledger.last_scores)
        held.append(session.stats()["tokens_held"])
    return np.asarray(actions), torch.stack(logits), scores, held


@pytest.mark.parametrize("held_chunks,recent", [(2, 1), (0, 1), (3, 2), (1, 3)])
def test_eviction_mask_equals_streaming_a_budgeted_cache(held_chunks, recent):
    model = tiny_model()
    c = model.config
    steps = 14
    frames = np.random.default_rng(held_chunks).integers(0, 256, (steps, 24, 24, 3), dtype=np.uint8)
    step_tokens = c.tokens_per_step
    budget = c.max_instruction_tokens + (recent + held_chunks) * step_tokens  # prefix + recent + held old
    cfg = CacheConfig(eviction="random", chunk_size=step_tokens, sink_tokens=c.max_instruction_tokens,
                      recent_chunks=recent, budget_tokens=budget, seed=3)
    actions, streamed, scores, held = stream(model, frames, cfg)
    assert max(held) <= budget
    full = model.episode_action_logits("go to the red ball", frames, actions)
    assert not torch.allclose(full, streamed, atol=1e-4)  # eviction changed what the policy saw

    score = np.array([scores.get(i, 0.0) for i in range(steps)])
    total = c.max_instruction_tokens + steps * step_tokens
    mask = eviction_mask(c.max_instruction_tokens, c.tokens_per_frame, c.action.tokens_per_action, steps, total,
                         score, held_chunks, recent)
    additive = torch.zeros(1, 1, total, total).masked_fill(~mask, torch.finfo(torch.float32).min)
    prefix = torch.as_tensor(model.text_tokenizer.encode("go to the red ball")).unsqueeze(0)
    x = model.processor(frames).unsqueeze(0)
    tokens = torch.as_tensor(model.action_tokenizer.encode(actions)).unsqueeze(0)
    with torch.no_grad():
        masked = model(prefix, x, tokens, attention_mask=additive)[0]
    assert torch.allclose(masked, streamed, atol=1e-5), (masked - streamed).abs().max()


def test_eviction_horizon_keeps_the_top_scores_and_never_brings_a_chunk_back():
    scores = np.array([0.9, 0.1, 0.5, 0.95, 0.2, 0.7])
    h = eviction_horizon(scores, held_chunks=2)
    # chunks 0 and 3 have at most one better chunk: never evicted; chunk 2 (0.5) is out once
    # 0.9 and 0.95 are old (4 old chunks), chunk 1 (0.1) once 0 and 2 are (3 old chunks)
    assert h[0] == h[3] == len(scores)
    assert h[2] == 3 and h[1] == 2
    assert (eviction_horizon(scores, 0) == np.arange(6)).all()
    for m in range(1, 7):  # at every old count m the held set is the top-2 of the first m chunks
        held = {c for c in range(m) if m <= h[c]}
        assert held == set(np.argsort(-scores[:m])[:2].tolist())


def test_batch_mask_evicts_only_the_drawn_share_and_padding_stays_causal():
    rng = np.random.default_rng(0)
    mask, evicted = batch_eviction_mask(rng, [10, 6, 10, 8] * 8, prefix=4, frame_tokens=2, action_tokens=1,
                                        total=4 + 10 * 3, prob=0.5, held_choices=[1], recent_chunks=1)
    assert mask.shape == (32, 1, 34, 34) and 6 <= int(evicted.sum()) <= 26
    allowed = mask[:, 0] == 0
    causal = torch.ones(34, 34, dtype=torch.bool).tril()
    assert (allowed[~evicted] == causal).all()
    assert (allowed[evicted] != causal).any(dim=(1, 2)).all()  # every evicted episode lost something
    assert allowed[:, 4:, :4].all()  # the prefix (sink) is never evicted: no row is ever empty


@pytest.mark.parametrize("field,value", [("evict_prob", 1.5), ("evict_from", -0.1), ("evict_held_chunks", [-1]),
                                         ("evict_recent_chunks", -1)])
def test_bad_eviction_training_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value}).validate()


def test_session_reports_the_cache_policys_own_time_within_the_step():
    model = tiny_model()
    c = model.config
    frames = np.random.default_rng(1).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    for policy, budget in (("gated", c.max_instruction_tokens + 2 * c.tokens_per_step), ("full", None)):
        cfg = CacheConfig(eviction=policy, chunk_size=c.tokens_per_step, sink_tokens=c.max_instruction_tokens,
                          recent_chunks=1, budget_tokens=budget, gate_threshold=0.0)
        session = VLASession(model, cache_config=cfg)
        session.reset("go to the red ball")
        shares, scoring = [], []
        for f in frames:
            session.step(f)
            lat = session.stats()["latency_ms"]
            assert 0.0 <= lat["cache_scoring"] <= lat["cache_policy"] <= lat["total"]
            shares.append(lat["cache_policy"])
            scoring.append(lat["cache_scoring"])
        assert sum(shares) > 0  # scoring and eviction (bookkeeping only for `full`) are timed
        # the gate scores one chunk per step once the first has left the window
        assert (sum(x > 0 for x in scoring) >= len(frames) - 2) if policy == "gated" else True
