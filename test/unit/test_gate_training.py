"""Gate training data, the train-gate smoke run, and per-layer calibration on a tiny VLA."""

import json

import numpy as np
import pytest
import torch

from kv_vla_ros.cache import ChunkGate, chunk_features
from kv_vla_ros.sim import train_seeds
from kv_vla_ros.cache.budgets import budgets_for
from kv_vla_ros.train.calibrate import write_calibration
from kv_vla_ros.train.gate_data import (
    episode_attention,
    future_utility,
    layer_dispersion,
    policy_rollouts,
    rank_targets,
)
from kv_vla_ros.train.gate_train import train_gate
from kv_vla_ros.vla import VLAConfig, VLAModel, VLASession

TINY = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 4096}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = VLAConfig(backbone=dict(TINY), image_size=56, patch_size=14, vision_hidden=32, max_instruction_tokens=8)
    return VLAModel(cfg).eval()


@pytest.fixture(scope="module")
def rollouts(model):
    return policy_rollouts(model, "MiniGrid-MemoryS7-v0", train_seeds(6, offset=500_000), max_steps=12)


def test_training_features_equal_what_the_cache_pools_online(model, rollouts):
    ep = max(rollouts, key=lambda e: len(e.actions))
    item = episode_attention(model, ep)
    assert item.features.shape[0] == len(ep.actions)
    cfg = model.config.cache.replace(eviction="gated", budget_tokens=None, gate_threshold=0.0)
    session = VLASession(model, cfg)
    session.reset(ep.instruction)
    for frame in ep.frames[:4]:
        session.step(frame)
    cache = session._cache
    for c in range(2):  # chunks 0 and 1 are closed after four steps
        online = chunk_features(cache.chunk_states(c))
        torch.testing.assert_close(online, item.features[c], rtol=1e-4, atol=1e-5)


def test_attention_mass_is_causal_and_normalised(model, rollouts):
    item = episode_attention(model, rollouts[0])
    n = item.mass.shape[-1]
    assert torch.all(item.mass[..., torch.ones(n, n).triu().bool()] == 0)  # no mass on the future
    total = item.mass.sum(-1).mean(1) + item.current  # past chunks + the step itself <= 1 (the rest: prefix)
    assert torch.all(total <= 1 + 1e-4)


def test_future_utility_and_rank_targets():
    mass = torch.zeros(1, 1, 6, 6)
    mass[0, 0, 5, 0] = 0.9  # step 5 looks back at chunk 0
    mass[0, 0, 5, 1:5] = 0.025
    mass[0, 0, 3, :3] = 0.1
    u = future_utility(mass, recent_chunks=2)
    assert torch.isnan(u[4]) and torch.isnan(u[5])  # never out of the window
    assert u[0] == u[~torch.isnan(u)].max()
    t = rank_targets(u)
    assert t[0] == 1.0 and torch.isnan(t[5]) and float(t[~torch.isnan(t)].min()) == 0.0


def test_train_gate_smoke_lowers_loss_and_roundtrips(model, rollouts, tmp_path):
    items = [episode_attention(model, ep) for ep in rollouts]
    gate, log = train_gate(items, recent_chunks=1, in_dim=items[0].features.shape[1], epochs=15, lr=1e-2,
                           hidden=16, progress=False)
    assert log["train_loss"][-1] < log["train_loss"][0]
    loaded = ChunkGate.load(gate.save(str(tmp_path)), expected_in_dim=items[0].features.shape[1])
    feats = items[0].features.clone().unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded(feats)[0], gate(feats)[0])


def test_calibration_keeps_total_and_writes_config(model, rollouts, tmp_path):
    items = [episode_attention(model, ep) for ep in rollouts]
    dispersion = layer_dispersion(items)
    assert len(dispersion) == 2 and all(0 <= d <= 1 for d in dispersion)
    cfg = model.config.cache
    budget = cfg.min_budget + 4 * cfg.chunk_size
    budgets = budgets_for(dispersion, cfg, budget)
    assert sum(budgets) <= 2 * budget and min(budgets) >= cfg.min_budget
    assert budgets[int(np.argmax(dispersion))] == max(budgets)
    model.save_pretrained(tmp_path)
    write_calibration(tmp_path, dispersion, budgets, budget)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["cache"]["layer_budgets"] == budgets
    assert VLAModel.from_pretrained(tmp_path).config.cache.layer_budgets == budgets


def test_checkpoint_loads_its_gate_and_session_runs_per_layer_budgets(model, rollouts, tmp_path):
    from kv_vla_ros.cache import gate_input_dim

    in_dim = gate_input_dim(2, 8)
    model.attach_gate(ChunkGate.untrained(in_dim, seed=5))
    try:
        model.save_pretrained(tmp_path)
    finally:
        model.attach_gate(None)
    loaded = VLAModel.from_pretrained(tmp_path)
    assert loaded.gate is not None and torch.equal(
        loaded.gate.head.weight, ChunkGate.untrained(in_dim, seed=5).head.weight)
    cfg = loaded.config.cache
    budgets = [cfg.min_budget, cfg.min_budget + 2 * cfg.chunk_size]
    session = VLASession(loaded, cfg.replace(eviction="gated", gate_threshold=0.0, budget_tokens=budgets[1],
                                             layer_budgets=budgets))
    assert loaded.backbone.config._attn_implementation == "kv_vla_sdpa"
    ep = max(rollouts, key=lambda e: len(e.actions))
    session.reset(ep.instruction)
    for frame in ep.frames:
        session.step(frame)
    held = session._cache.stats()["tokens_held_per_layer"]
    assert held[0] <= budgets[0] < held[1] <= budgets[1]


def test_keep_alone_value_shares_each_steps_loss_among_the_chunks_that_restore_it(model, rollouts):
    from kv_vla_ros.train.eviction import eviction_mask
    from kv_vla_ros.train.gate_value import keep_alone_value

    ep = max(rollouts, key=lambda e: len(e.actions))
    n, recent = len(ep.actions), 1
    value = keep_alone_value(model, ep, recent)
    assert value.shape == (n,)
    never_old = torch.arange(n) >= n - recent - 1  # chunk c is old for step s only when c < s - recent
    assert torch.isnan(value[never_old]).all() and not torch.isnan(value[~never_old]).any()
    assert (value[~never_old] >= 0).all()
    # the window-only replay's loss, step by step, bounds the value handed out
    c = model.config
    total = c.max_instruction_tokens + n * c.tokens_per_step
    window = eviction_mask(c.max_instruction_tokens, c.tokens_per_frame, c.action.tokens_per_action, n, total,
                           np.zeros(n), 0, recent)
    additive = torch.zeros(1, 1, total, total).masked_fill(~window, torch.finfo(torch.float32).min)
    prefix = torch.as_tensor(model.text_tokenizer.encode(ep.instruction)).unsqueeze(0)
    frames = model.processor(ep.frames).unsqueeze(0)
    tokens = torch.as_tensor(model.action_tokenizer.encode(ep.actions)).unsqueeze(0)
    with torch.no_grad():
        full = model(prefix, frames, tokens)[0].log_softmax(-1)
        base = model(prefix, frames, tokens, attention_mask=additive)[0].log_softmax(-1)
    loss = (full.exp() * (full - base)).sum(-1).sum(-1)  # [steps]
    assert float(value[~never_old].sum()) <= float(loss.sum()) + 1e-4
    assert float(loss.sum()) > 0  # the window alone does change this policy's actions


def test_train_gate_on_keep_alone_values_lowers_loss(model, rollouts):
    from kv_vla_ros.train.gate_value import keep_alone_value

    items = [episode_attention(model, ep) for ep in rollouts]
    values = [keep_alone_value(model, ep, 1) for ep in rollouts]
    gate, log = train_gate(items, recent_chunks=1, in_dim=items[0].features.shape[1], epochs=15, lr=1e-2,
                           hidden=16, progress=False, values=values)
    assert log["train_loss"][-1] < log["train_loss"][0]
