"""Tiny random π0 checkpoints and an explicit-mask reference of the streamed π0 (shared by the π0
tests): the whole stream in one VLM forward where each step's block sees what the cache held
before that step (per layer), then sample_actions' Euler loop over what the cache held at the end.
Written apart from the policy's streaming code on purpose (transformers' modules only)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kv_vla_ros.vla.pi0 import processing

LAYER_MASKS: dict[int, torch.Tensor] = {}  # layer_idx -> [1, 1, q, kv] bool, set before each forward


def _per_layer_sdpa(module, query, key, value, attention_mask, **kwargs):
    if getattr(module, "layer_idx", None) is None:  # the vision tower: its own (no) mask
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, LAYER_MASKS[module.layer_idx], **kwargs)


def reference_model(model):
    """A copy of ``model`` whose attention takes one mask per layer (``LAYER_MASKS``)."""
    import copy

    AttentionInterface.register("pi0_per_layer_ref", _per_layer_sdpa)
    AttentionMaskInterface.register("pi0_per_layer_ref", sdpa_mask)
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("pi0_per_layer_ref")
    return ref


def held_per_layer(cache) -> list[set[int]]:
    return [set(cache.layers[i].positions.tolist()) for i in cache.chunked]


@torch.no_grad()
def reference_actions(ref, policy, instruction: str, frames: list[list[np.ndarray]], state, noise,
                      held_before: list[list[set[int]]], held_after: list[set[int]]) -> np.ndarray:
    """Actions of the last step of a streamed episode, from one explicit-mask forward.

    Args:
        frames: per step, the cameras' uint8 frames.
        held_before: per step, per layer, positions the cache held before that step.
        held_after: per layer, positions held after the last step (what the action expert read).
    """
    mc, proc = ref.config, policy.processor
    prompt = processing.prompt_ids(proc, instruction)
    per_step = policy.tokens_per_step
    step_ids = [policy.image_token_id] * per_step + prompt  # π0's order: images, then the prompt
    ids = step_ids * len(frames)
    n = len(ids)
    pix = torch.cat([processing.pixel_values(proc, [f.astype(np.float32) / 255 for f in cams], torch.float32, "cpu")
                     for cams in frames], dim=1)
    embeds = ref.model.embed_prefix(torch.tensor([ids]), pix, torch.ones(1, pix.shape[1], dtype=torch.bool))
    block = torch.tensor([t for t in range(len(frames)) for _ in range(len(step_ids))])
    layers = mc.vlm_config.text_config.num_hidden_layers
    for layer in range(layers):
        mask = block[:, None] == block[None, :]  # bidirectional within a step's block
        for t, held in enumerate(held_before):
            if held[layer]:
                rows = (block == t).nonzero().flatten()
                mask[rows[:, None], torch.tensor(sorted(held[layer]))[None, :]] = True
        LAYER_MASKS[layer] = mask[None, None]
    cache = DynamicCache(config=mc.vlm_config.text_config)
    ref.model.vlm.language_model(inputs_embeds=embeds, position_ids=torch.arange(n)[None], past_key_values=cache,
                                 use_cache=True, attention_mask=LAYER_MASKS[0])
    h = mc.chunk_size
    for layer in range(layers):
        mask = torch.zeros(1 + h, n + 1 + h, dtype=torch.bool)
        mask[:, torch.tensor(sorted(held_after[layer]))] = True
        mask[0, n] = True  # the state token: the prefix and itself
        mask[1:, n:] = True  # the action tokens: everything
        LAYER_MASKS[layer] = mask[None, None]
    st = processing.normalized_state(proc, policy.check_state(state), mc.max_state_dim, torch.float32, "cpu")
    x, dt = noise.clone(), -1.0 / policy.num_inference_steps
    for k in range(policy.num_inference_steps):
        emb = ref.embed_action_time(st, x, torch.full((1,), 1.0 + k * dt))
        out = ref.model.dit(inputs_embeds=emb, position_ids=torch.arange(n, n + 1 + h)[None], past_key_values=cache,
                            use_cache=True, attention_mask=LAYER_MASKS[0])
        cache.crop(n - cache.get_seq_length())
        x = x + dt * ref.action_out_proj(out.last_hidden_state[:, -h:])
    return processing.unnormalize_actions(proc, x[0, :, : policy.action_dim])


def random_frames(steps: int, cameras: int, seed: int = 0, shape=(40, 56, 3)) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(cameras)] for _ in range(steps)]


def arm_pi0_checkpoint(directory, drift=(0.6, 0.5, 0.0), actions_per_inference: int = 2, seed: int = 0):
    """A tiny random π0 that fits the arm tasks (one 64 px camera, the 9 joint positions, 4 actions)
    and, through its action statistics, drifts by ``drift`` (dx, dy, dz in action units) with a
    little noise and never opens the hand: closed-loop episodes run long enough to reach the lane's
    end and take a decision (random weights alone would open the hand on the first steps)."""
    import json
    from pathlib import Path

    from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

    directory = Path(directory)
    write_pi0_checkpoint(directory, num_cameras=1, state_dim=9, action_dim=4, max_dim=16, seed=seed,
                         actions_per_inference=actions_per_inference)
    path = directory / "processor_config.json"
    config = json.loads(path.read_text())
    config["actions_mean"] = [*map(float, drift), -3.0]
    config["actions_std"] = [0.05, 0.05, 0.05, 0.1]
    path.write_text(json.dumps(config, indent=2))
    return directory
