"""π0 (transformers' PI0ForConditionalGeneration, tiny random configs) as a long-horizon policy on
the chunked cache: checkpoint round trip, equality with sample_actions and with an explicit-mask
forward under eviction, rollback of the denoising tokens, per-layer budgets and the gate, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pi0_models import held_per_layer, random_frames, reference_actions, reference_model

from kv_vla_ros.cache import ChunkGate, gate_input_dim
from kv_vla_ros.vla import VLASession, load_policy
from kv_vla_ros.vla.pi0 import PI0Policy, processing, write_pi0_checkpoint
from kv_vla_ros.vla.pi0.streaming import denoise, vlm_block

INSTRUCTION = "pick up the red cube"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_pi0_checkpoint(tmp_path_factory.mktemp("pi0") / "tiny", num_cameras=1, state_dim=3, action_dim=2)


@pytest.fixture(scope="module")
def policy(ckpt):
    return load_policy(ckpt)


def _noise(policy, seed=1):
    mc = policy.model.config
    return torch.randn(1, mc.chunk_size, mc.max_action_dim, generator=torch.Generator().manual_seed(seed))


def test_checkpoint_round_trip_through_load_policy(policy, tmp_path):
    assert isinstance(policy, PI0Policy) and policy.state_dim == 3 and policy.action_dim == 2
    out = policy.save_pretrained(tmp_path / "copy")
    again = load_policy(out)
    for (name, a), (_, b) in zip(policy.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.processor.actions_std == policy.processor.actions_std
    frames, state = random_frames(2, 1), np.array([0.1, -0.2, 0.3])
    runs = []
    for pol in (policy, again):
        session = VLASession(pol)
        session.reset(INSTRUCTION)
        runs.append([session.step_action_chunk(f, state, noise=_noise(pol, s)) for s, f in enumerate(frames)])
    for a, b in zip(*runs):
        assert a.shape == (policy.action_chunk_length, 2) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


TINY_VARIANTS = {  # several tiny configs: layers, heads, head size, image tokens, cameras
    "2-layer-1-camera": (dict(), 1),
    "3-layer-2-cameras": (dict(text=dict(num_hidden_layers=3, num_attention_heads=4, head_dim=8)), 2),
    "1-layer-64px": (dict(text=dict(num_hidden_layers=1), vision=dict(image_size=64, patch_size=16)), 1),
}


def _variant_policy(tmp_path, overrides, cameras):
    """A tiny π0 checkpoint with ``overrides`` of the tiny scale's sections, loaded as a policy."""
    import copy

    from kv_vla_ros.vla.pi0 import tiny

    saved = copy.deepcopy(tiny.SCALES["tiny"])
    try:
        for section, fields in overrides.items():
            tiny.SCALES["tiny"][section].update(fields)
        return load_policy(write_pi0_checkpoint(tmp_path / "v", num_cameras=cameras, state_dim=3, action_dim=2, seed=4))
    finally:
        tiny.SCALES["tiny"] = saved


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_first_step_equals_pi0_processor_and_sample_actions(variant, tmp_path):
    """The first step of a stream is transformers' PI0Processor (images before ``<bos> instruction \\n``,
    its padding) + sample_actions on the same frames, state and noise."""
    policy = _variant_policy(tmp_path, *TINY_VARIANTS[variant])
    cams, state, noise = random_frames(1, policy.num_cameras, seed=3)[0], np.array([0.5, 0.0, -1.0]), _noise(policy)
    session = VLASession(policy)
    session.reset(INSTRUCTION)
    got = session.step_action_chunk(cams, state, noise=noise.clone())
    proc = policy.processor
    inputs = proc(images=[cams], text=INSTRUCTION, state=torch.tensor(state, dtype=torch.float32))
    assert inputs["input_ids"][0, 0] == policy.image_token_id  # π0's order: the images come first
    ref = policy.model.sample_actions(state=inputs["state"], input_ids=inputs["input_ids"],
                                      pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"],
                                      pixel_attention_mask=inputs["pixel_attention_mask"], noise=noise.clone())
    ref = processing.unnormalize_actions(proc, ref[0, :, :2])
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    real = int(inputs["attention_mask"].sum())  # the stream holds the block without the processor's padding
    prompt = len(processing.prompt_ids(proc, INSTRUCTION))
    assert session.stats()["tokens_seen"] == real == policy.tokens_per_step + prompt


@pytest.mark.parametrize("cameras", [1, 2])
@pytest.mark.parametrize("spec", ["window", "sink_window", "h2o", "key_norm", "random", "gated"])
def test_every_eviction_keeps_whole_steps(cameras, spec, tmp_path):
    """Chunks are steps (images + prompt), starting at position 0: every eviction holds whole steps."""
    policy = load_policy(write_pi0_checkpoint(tmp_path / "c", num_cameras=cameras, state_dim=3, action_dim=2))
    step = policy.tokens_per_step + len(processing.prompt_ids(policy.processor, INSTRUCTION))
    budget = 3 * step + step // 2  # room for 3.5 steps: a frame-cutting cache would hold 3.5
    cfg = policy.default_cache_config().replace(eviction=spec, budget_tokens=budget, gate_threshold=0.0)
    session = VLASession(policy, cfg)
    session.reset(INSTRUCTION)
    for cams in random_frames(9, cameras):
        session.step_action_chunk(cams, np.zeros(3))
        for layer in session._cache.chunked:
            held = sorted(session._cache.layers[layer].positions.tolist())
            steps = sorted({p // step for p in held})
            assert held == [p for s in steps for p in range(s * step, (s + 1) * step)], (spec, held)
    st = session.stats()
    assert st["tokens_seen"] == 9 * step and st["tokens_held"] == 3 * step


def test_a_budget_is_checked_against_the_episode_stream(policy):
    """The rule: a budget holds recent_chunks whole steps of this episode (images + its prompt)."""
    step_short = policy.tokens_per_step + len(processing.prompt_ids(policy.processor, "go"))  # 16 + 3
    cfg = policy.default_cache_config().replace(eviction="sink_window", budget_tokens=2 * step_short)
    session = VLASession(policy, cfg)  # a budget is not refused for a prompt it has not seen
    session.reset("go")
    assert np.isfinite(session.step_action_chunk(random_frames(1, 1)[0], np.zeros(3))).all()
    with pytest.raises(ValueError, match=r"budget_tokens: 38 cannot hold this episode's recent window: a π0 budget "
                                         r"must hold recent_chunks whole steps, 2 x \(1 camera\(s\) x 16 image "
                                         r"tokens \+ 7 prompt tokens of 'pick up the red cube'\) = 46"):
        session.reset(INSTRUCTION)
    assert session.instruction == "go" and session.stats()["tokens_seen"] == step_short  # untouched
    with pytest.raises(ValueError, match="cache.sink_tokens: must be 0 for π0"):
        VLASession(policy, cfg.replace(sink_tokens=48, budget_tokens=None, eviction="full"))


def _stream(session, frames, state, noise):
    held_before, out = [], None
    session.reset(INSTRUCTION)
    for t, cams in enumerate(frames):
        held_before.append(held_per_layer(session._cache) if t else [set()] * len(session._cache.chunked))
        out = session.step_action_chunk(cams, state, noise=noise.clone() if t == len(frames) - 1 else None)
    return out, held_before, held_per_layer(session._cache)


@pytest.mark.parametrize("changes", [
    {"eviction": "window", "budget_tokens": 80},
    {"eviction": "gated", "budget_tokens": 96, "gate_threshold": 0.0},
    {"eviction": "key_norm", "budget_tokens": 96, "layer_budgets": [80, 120]},
], ids=["window", "gated", "per-layer"])
def test_eviction_equals_explicit_mask_forward(policy, changes):
    cfg = policy.default_cache_config().replace(**changes)
    session = VLASession(policy, cfg)
    frames, state, noise = random_frames(9, 1, seed=5), np.array([0.2, 0.1, 0.0]), _noise(policy, 7)
    got, held_before, held_after = _stream(session, frames, state, noise)
    st = session.stats()
    assert st["tokens_seen"] > max(cfg.layer_budgets or [cfg.budget_tokens])  # eviction happened
    budgets = cfg.layer_budgets or [cfg.budget_tokens] * len(held_after)
    assert all(len(h) <= b for h, b in zip(held_after, budgets))
    if cfg.layer_budgets:
        assert len(held_after[0]) < len(held_after[1])
    ref = reference_actions(reference_model(policy.model), policy, INSTRUCTION, frames, np.array([0.2, 0.1, 0.0]),
                            noise, held_before, held_after)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    # the evicted history mattered: the full cache's last chunk differs
    full = VLASession(policy)
    assert np.abs(_stream(full, frames, state, noise)[0] - got).max() > 1e-4
    policy.model.set_attn_implementation("sdpa")  # per-layer budgets switched it; later tests start plain


def _snapshot(cache):
    layers = [(cache.layers[i].keys.clone(), cache.layers[i].values.clone(), cache.layers[i].positions.clone(),
               cache.layers[i].seen) for i in cache.chunked]
    return layers, cache.scores.clone(), cache.states.clone(), cache.ledger.scored


def test_rollback_leaves_the_cache_exactly_as_before(policy):
    cfg = policy.default_cache_config().replace(eviction="gated", budget_tokens=96, gate_threshold=0.0)
    session = VLASession(policy, cfg)
    session.reset(INSTRUCTION)
    for cams in random_frames(6, 1):
        session.step_action_chunk(cams, np.zeros(3))
    cache, ep = session._cache, session._episode
    embeds = policy.model.model.embed_prefix(
        policy.block_ids(ep), processing.pixel_values(policy.processor, [np.full((8, 8, 3), 0.5, np.float32)],
                                                      torch.float32, "cpu"), torch.ones(1, 1, dtype=torch.bool))
    with torch.inference_mode():
        vlm_block(policy.model, cache, embeds)
        before, gate_state = _snapshot(cache), [s.clone() for s in cache.eviction.state]
        st = torch.zeros(1, policy.model.config.max_state_dim)
        x = denoise(policy.model, cache, st, _noise(policy), 3)
        after = _snapshot(cache)
    assert torch.isfinite(x).all()
    for (k0, v0, p0, s0), (k1, v1, p1, s1) in zip(before[0], after[0]):
        assert torch.equal(k0, k1) and torch.equal(v0, v1) and torch.equal(p0, p1) and s0 == s1
    assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2]) and before[3] == after[3]
    assert all(torch.equal(a, b) for a, b in zip(gate_state, cache.eviction.state))


def test_gate_file_loads_with_the_pi0_checkpoint_and_scores_frames(ckpt, tmp_path):
    import shutil

    directory = shutil.copytree(ckpt, tmp_path / "gated")
    text = load_policy(directory).model.config.vlm_config.text_config
    ChunkGate.untrained(gate_input_dim(text.num_hidden_layers, text.head_dim), seed=3).save(str(directory))
    policy = load_policy(directory)
    assert policy.gate is not None
    session = VLASession(policy, policy.default_cache_config().replace(eviction="gated", budget_tokens=96))
    session.reset(INSTRUCTION)
    scored = {}
    for cams in random_frames(8, 1):
        session.step_action_chunk(cams, np.zeros(3))
        scored.update(session.stats()["gate_scores"])
    assert scored and all(0.0 <= s <= 1.0 for s in scored.values())
    st = session.stats()
    assert st["tokens_held"] <= 96 < st["tokens_seen"] and st["chunks_scored"] > 0


def test_live_reconfiguration_keeps_the_pi0_history(policy):
    session = VLASession(policy)
    session.reset(INSTRUCTION)
    for cams in random_frames(6, 1):
        session.step_action_chunk(cams, np.zeros(3))
    seen = session.stats()["tokens_seen"]
    session.set_cache_config(session.cache_config.replace(eviction="sink_window", budget_tokens=80))
    st = session.stats()
    assert st["tokens_seen"] == seen and st["tokens_held"] <= 80
    assert np.isfinite(session.step_action_chunk(random_frames(1, 1)[0], np.zeros(3))).all()


def test_bad_inputs_give_clear_errors(ckpt, policy, tmp_path):
    import shutil

    bare = shutil.copytree(ckpt, tmp_path / "bare")
    (bare / "processor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="processor_config.json"):
        load_policy(bare)
    wrong = shutil.copytree(ckpt, tmp_path / "wrong")
    meta = json.loads((wrong / "kv_vla_policy.json").read_text())
    (wrong / "kv_vla_policy.json").write_text(json.dumps({**meta, "num_cameras": 4}))
    with pytest.raises(ValueError, match="num_cameras: 4 cameras, the checkpoint allows at most 3"):
        load_policy(wrong)
    session = VLASession(policy)
    session.reset(INSTRUCTION)
    frame = random_frames(1, 1)[0][0]
    with pytest.raises(ValueError, match="images: expected 1 camera"):
        session.step_action_chunk([frame, frame], np.zeros(3))
    with pytest.raises(ValueError, match="state: expected a vector of dimension 3"):
        session.step_action_chunk(frame, np.zeros(5))
    with pytest.raises(ValueError, match="state: this checkpoint expects"):
        session.step_action_chunk(frame, None)
    with pytest.raises(ValueError, match="state: contains NaN"):
        session.step_action_chunk(frame, np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="cache.chunk_size"):
        VLASession(policy, policy.default_cache_config().replace(chunk_size=7))
    with pytest.raises(ValueError, match="cache.static"):
        VLASession(policy, policy.default_cache_config().replace(eviction="window", budget_tokens=80, static=True))
    assert np.isfinite(session.step_action_chunk(frame, np.zeros(3))).all()  # still usable after the errors
    odd = shutil.copytree(ckpt, tmp_path / "odd")
    meta = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**meta, "model_type": "not_a_vla"}))
    with pytest.raises(ValueError, match="model_type 'not_a_vla' is not a supported policy"):
        load_policy(odd)


def test_bfloat16_pi0_tracks_float32_and_compile_is_refused(ckpt, policy):
    """π0 loaded in bfloat16 streams with half the K/V bytes and actions close to float32's (measured
    on this tiny config: max difference 1.1e-3 at an action scale of 3.4); π0 has no compiled step."""
    half = load_policy(ckpt, dtype="bfloat16")
    runs = []
    for pol in (policy, half):
        session = VLASession(pol, pol.default_cache_config().replace(eviction="sink_window", budget_tokens=80))
        session.reset(INSTRUCTION)
        runs.append(np.stack([session.step_action_chunk(f, np.zeros(3), noise=_noise(pol, s))
                              for s, f in enumerate(random_frames(6, 1))]))
        runs.append(session.stats())
    (a32, s32), (a16, s16) = runs[:2], runs[2:]
    assert s16["dtype"] == "bfloat16" and s16["bytes_held"] * 2 == s32["bytes_held"]
    assert np.isfinite(a16).all() and np.abs(a16 - a32).max() <= 0.02 * np.abs(a32).max()
    with pytest.raises(ValueError, match="compile: the pi0 policy has no compiled decode step"):
        VLASession(policy, compile=True)
    with pytest.raises(ValueError, match="dtype: the pi0 policy was loaded in float32"):
        VLASession(policy, dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype: float16 needs a CUDA device"):
        load_policy(ckpt, dtype="float16")


def test_pi0_inner_modules_are_checked_at_load_time_naming_transformers(ckpt, monkeypatch):
    """The streaming code reaches π0's embed_prefix and its VLM's language model: a transformers
    version without them fails when the policy is built, naming the version, not mid-episode."""
    import transformers

    from kv_vla_ros.vla.pi0 import PI0Policy

    good = load_policy(ckpt)
    inner = type(good.model.model)
    monkeypatch.delattr(inner, "embed_prefix")
    with pytest.raises(ValueError, match=rf"model.embed_prefix not found in transformers {transformers.__version__}"):
        PI0Policy(good.model, good.processor, good.config)
