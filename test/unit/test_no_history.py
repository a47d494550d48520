"""The true no-history baseline (issue 30, point 5): a session on the current frame alone
(``VLASession(history=False)``, the eval spec ``no_history``) is the single-frame π0 checkpoint at
every step, while a cache holding only the newest step is not: that step's keys and values at
layers >= 1 were computed with the previous step held. Tiny random π0, real transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pi0_models import random_frames
from test_pi0_policy import INSTRUCTION, _noise, _variant_policy

from kv_vla_ros.cache.spec import is_full_history, parse_spec
from kv_vla_ros.vla import VLASession
from kv_vla_ros.vla.pi0 import processing


def _single_frame(policy, cams, state, noise):
    """transformers' PI0Processor + sample_actions on one frame: the checkpoint with no history."""
    proc = policy.processor
    inputs = proc(images=[cams], text=INSTRUCTION, state=torch.tensor(state, dtype=torch.float32))
    ref = policy.model.sample_actions(state=inputs["state"], input_ids=inputs["input_ids"],
                                      pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"],
                                      pixel_attention_mask=inputs["pixel_attention_mask"], noise=noise.clone())
    return processing.unnormalize_actions(proc, ref[0, :, :2])


def test_no_history_is_the_single_frame_checkpoint_at_every_step_one_held_step_is_not(tmp_path):
    policy = _variant_policy(tmp_path, dict(text=dict(num_hidden_layers=3, num_attention_heads=4, head_dim=8)), 1)
    frames, state = random_frames(4, 1, seed=5), np.array([0.2, -0.4, 0.1])
    step = policy.tokens_per_step + len(processing.prompt_ids(policy.processor, INSTRUCTION))
    one_step = policy.default_cache_config().replace(eviction="window", recent_chunks=1, budget_tokens=step)
    alone, held = VLASession(policy, history=False), VLASession(policy, one_step)
    for s in (alone, held):
        s.reset(INSTRUCTION)
    gaps = []
    for k, cams in enumerate(frames):
        ref = _single_frame(policy, cams[0], state, _noise(policy, k))
        got = alone.step_action_chunk(cams, state, noise=_noise(policy, k))
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), k
        stats = alone.stats()
        assert stats["tokens_held"] == step and stats["steps"] == k + 1
        assert stats["kept_chunks"] == [] and stats["chunks_scored"] == k  # only chunk k is held
        gaps.append(np.abs(held.step_action_chunk(cams, state, noise=_noise(policy, k)) - ref).max())
        assert held.stats()["tokens_held"] == step
    assert gaps[0] <= 1e-5 and min(gaps[1:]) > 1e-4  # one held step still carries earlier frames


def test_no_history_spec_and_its_refusals():
    from kv_vla_ros.cache.config import CacheConfig

    base = CacheConfig(eviction="gated", budget_tokens=300)
    changes, frac = parse_spec("no_history", base)
    assert changes["eviction"] == "full" and changes["_history"] == "none" and frac is None
    assert not is_full_history(changes) and is_full_history(parse_spec("full", base)[0])
    assert "_history" not in parse_spec("full:history=all", base)[0]
    with pytest.raises(ValueError, match="history must be 'none'"):
        parse_spec("full:history=some", base)


def test_bag_eval_refuses_no_history_by_name(tmp_path):
    from kv_vla_ros.eval.bag_eval import build_configs
    from kv_vla_ros.vla import load_policy
    from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

    policy = load_policy(write_pi0_checkpoint(tmp_path / "p", num_cameras=1, state_dim=3, action_dim=2))
    with pytest.raises(ValueError, match="no_history.*closed-loop"):
        build_configs(policy, ["no_history"])
