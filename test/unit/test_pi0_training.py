"""π0 trained on its own stream: the teacher-forced episode forward equals streaming through
ChunkedKVCache under the same held sets (full, window, evictions with holes), the fixed-score held
sets are the cache's, and a few training steps on bags lower the loss of a tiny π0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pi0_models import random_frames

from kv_vla_ros.cache.transient import TransientView
from kv_vla_ros.train.pi0_stream import block_ids, held_steps, prefix_states, velocities
from kv_vla_ros.vla import VLASession, load_policy
from kv_vla_ros.vla.pi0 import processing, write_pi0_checkpoint
from kv_vla_ros.vla.pi0.streaming import vlm_block

INSTRUCTION = "pick up the red cube"
STEPS = 7


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_policy(write_pi0_checkpoint(tmp_path_factory.mktemp("pi0") / "tiny", num_cameras=2, state_dim=3,
                                            action_dim=2))


def _stream(policy, cfg, frames, states, noisy, time):
    """Stream the episode through a session's cache; per step the velocity at (noisy[s], time[s]) and
    the steps held before and after the step."""
    session = VLASession(policy, cfg)
    session.reset(INSTRUCTION)
    cache, ep = session._cache, session._episode
    step = ep.data["step_tokens"]
    n = len(frames)
    before, after, out = np.zeros((n, n), bool), np.zeros((n, n), bool), []
    with torch.inference_mode():
        for s, cams in enumerate(frames):
            held = sorted({p // step for p in cache.held_positions().tolist()})
            before[s, held] = True
            pix = processing.pixel_values(policy.processor, [f.astype(np.float32) / 255 for f in cams],
                                          torch.float32, "cpu")
            embeds = policy.model.model.embed_prefix(policy.block_ids(ep), pix, torch.ones(1, 2, dtype=torch.bool))
            vlm_block(policy.model, cache, embeds)
            ep.steps += 1
            after[s, sorted({p // step for p in cache.held_positions().tolist()})] = True
            v = policy.model(state=states[s:s + 1], noise=noisy[s:s + 1], timestep=time[s:s + 1],
                             past_key_values=TransientView(cache)).logits
            out.append(v[0])
    return torch.stack(out), before, after, step


@pytest.mark.parametrize("spec", [{"eviction": "full"}, {"eviction": "window", "budget_tokens": 3 * 39},
                                  {"eviction": "random", "budget_tokens": 4 * 39},
                                  {"eviction": "key_norm", "budget_tokens": 3 * 39, "recent_chunks": 1}],
                         ids=["full", "window", "random", "key_norm"])
def test_teacher_forced_episode_equals_streaming(policy, spec):
    mc = policy.model.config
    frames = random_frames(STEPS, 2, seed=2)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(STEPS, mc.max_state_dim, generator=g)
    noisy = torch.randn(STEPS, mc.chunk_size, mc.max_action_dim, generator=g)
    time = torch.rand(STEPS, generator=g)
    cfg = policy.default_cache_config().replace(**spec)
    streamed, before, after, step = _stream(policy, cfg, frames, states, noisy, time)
    assert step == 2 * 16 + 7
    if spec["eviction"] != "full":
        assert not after[-1].all() and after[-1].sum() < STEPS  # holes: eviction happened
    prompt = processing.prompt_ids(policy.processor, INSTRUCTION)
    ids = block_ids(policy.image_token_id, policy.tokens_per_step, prompt, STEPS)
    pix = torch.cat([processing.pixel_values(policy.processor, [f.astype(np.float32) / 255 for f in cams],
                                             torch.float32, "cpu") for cams in frames], dim=1)
    with torch.no_grad():
        cache = prefix_states(policy.model, ids, pix, before)
        forced = velocities(policy.model, cache, after, step, states, noisy, time)
    torch.testing.assert_close(forced, streamed, atol=2e-5, rtol=1e-4)
    if spec["eviction"] == "window":  # the fixed-score held sets are the cache's (window: scores = recency)
        b, a = held_steps(STEPS, np.arange(STEPS, dtype=float), 1, 2)
        assert (b == before).all() and (a == after).all()
    if spec["eviction"] == "full":
        b, a = held_steps(STEPS, None, None, 2)
        assert (b == before).all() and (a == after).all()
