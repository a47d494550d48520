"""π0 teacher-forced over a whole streamed episode: the stream ``VLASession`` feeds, in one forward.

Stream (``kv_vla_ros.vla.pi0.streaming``): one block per inference step, each π0's own prefix
``[cameras x image tokens][<bos> instruction \\n]``, one cache chunk per block, no prefix. Block
``s`` sees itself bidirectionally and the earlier blocks the cache held *before* step ``s``
(``before[s]``); after block ``s`` the cache evicts, and the action expert's tokens of step ``s``
(the state token and the noisy action chunk) read what it holds *after* (``after[s]``), with π0's
own suffix rule (the state token sees the prefix and itself, the action tokens everything of their
step). Positions are absolute (tokens seen), as in the stream. Under the same held sets this equals
streaming the episode through ``ChunkedKVCache`` (tested), so what is trained is what the node runs.

``held_steps(n, scores, held_chunks, recent)`` gives the held sets of a cache that evicts by fixed
per-chunk scores under a budget of ``held_chunks`` old chunks beside ``recent`` newest ones (what
``ChunkedKVCache`` does with a gate whose scores do not change; ``window``: scores = recency).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

NEG = torch.finfo(torch.float32).min


def held_steps(n: int, scores: np.ndarray | None, held_chunks: int | None,
               recent: int) -> tuple[np.ndarray, np.ndarray]:
    """``(before, after)`` bool ``(n, n)``: ``after[s, c]``: step ``c``'s chunk is held once step ``s``
    was fed and the cache evicted; ``before[s] = after[s - 1]``. ``held_chunks`` None: the full cache."""
    after = np.tril(np.ones((n, n), dtype=bool))
    if held_chunks is not None:
        if recent < 1:
            raise ValueError(f"recent: the cache keeps at least the newest step, got {recent}")
        for s in range(n):
            old = np.arange(max(0, s + 1 - recent))  # chunks that left the recent window
            after[s, old] = False
            if held_chunks and old.size:
                # top-k by score (newer first among equals), as ChunkedKVCache ranks them
                order = sorted(old.tolist(), key=lambda c: (-scores[c], -c))[:held_chunks]
                after[s, order] = True
        # fixed scores: a chunk out of the top-k never comes back (the old set only grows)
        for s in range(1, n):
            after[s] &= after[s - 1] | (np.arange(n) == s)
    before = np.zeros_like(after)
    before[1:] = after[:-1]
    return before, after


def prefix_mask(before: np.ndarray, step_tokens: int) -> torch.Tensor:
    """Additive ``(1, 1, N, N)`` mask of the blocks (``N = n x step_tokens``): bidirectional within a
    block, and to the earlier blocks held before it. ``before (B, n, n)``: ``(B, 1, N, N)``."""
    if before.ndim == 3:
        return torch.cat([prefix_mask(b, step_tokens) for b in before])
    n = before.shape[0]
    see = before | np.eye(n, dtype=bool)
    allowed = torch.from_numpy(np.repeat(np.repeat(see, step_tokens, 0), step_tokens, 1))
    return torch.zeros(allowed.shape).masked_fill(~allowed, NEG)[None, None]


def suffix_mask(after: np.ndarray, step_tokens: int, horizon: int) -> torch.Tensor:
    """Additive ``(1, 1, M, N + M)`` mask of every step's action-expert tokens (``M = n x (1 + horizon)``):
    the prefix blocks held after the step, then π0's suffix rule within the step's own tokens.
    ``after (B, n, n)``: ``(B, 1, M, N + M)``."""
    if after.ndim == 3:
        return torch.cat([suffix_mask(a, step_tokens, horizon) for a in after])
    n, width = after.shape[0], 1 + horizon
    to_prefix = np.repeat(np.repeat(after, width, 0), step_tokens, 1)
    own = np.kron(np.eye(n, dtype=bool), np.ones((width, width), dtype=bool))
    state_rows = (np.arange(n * width) % width) == 0
    own[state_rows] &= np.eye(n * width, dtype=bool)[state_rows]  # the state token: itself only
    allowed = torch.from_numpy(np.concatenate([to_prefix, own], axis=1))
    return torch.zeros(allowed.shape).masked_fill(~allowed, NEG)[None, None]


def block_ids(image_token_id: int, image_tokens: int, prompt: list[int], steps: int) -> torch.Tensor:
    """``(1, steps x (image_tokens + len(prompt)))`` ids of the stream (π0's order in every block)."""
    return torch.tensor([([image_token_id] * image_tokens + list(prompt)) * steps], dtype=torch.long)


def prefix_states(model, ids: torch.Tensor, pixel_values: torch.Tensor, before: np.ndarray,
                  return_hidden: bool = False):
    """The VLM over the whole stream under ``before``'s held sets: a ``DynamicCache`` of every block's K/V
    (and, with ``return_hidden``, the last hidden states ``(1, N, D)``).

    Args:
        ids: (1, N) stream ids; pixel_values: (1, steps x cameras, 3, S, S) normalized.
        before: (n, n), or (B, n, n) for B replays of the same episode under other held sets (a batch).
    """
    cams = torch.ones(1, pixel_values.shape[1], dtype=torch.bool, device=ids.device)
    embeds = model.model.embed_prefix(ids, pixel_values, cams)
    step_tokens = ids.shape[1] // before.shape[-1]
    mask = prefix_mask(before, step_tokens).to(device=embeds.device, dtype=embeds.dtype)
    embeds = embeds.expand(mask.shape[0], -1, -1)
    cache = DynamicCache(config=model.config.vlm_config.text_config)
    pos = torch.arange(ids.shape[1], device=ids.device)[None].expand(mask.shape[0], -1)
    out = model.model.vlm.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                         past_key_values=cache, use_cache=True)
    return (cache, out.last_hidden_state) if return_hidden else cache


def velocities(model, cache: DynamicCache, after: np.ndarray, step_tokens: int, states: torch.Tensor,
               noisy: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """The action expert at every step at once: predicted velocities ``(steps, horizon, max_action_dim)``.

    Args:
        cache: ``prefix_states``' cache (its K/V are used, then cropped back to the prefix).
        states: (steps, max_state_dim) normalized; noisy: (steps, horizon, max_action_dim); time: (steps,).
        after: (n, n), or (B, n, n) with a batched cache: velocities (B, steps, horizon, max_action_dim).
    """
    n, horizon = noisy.shape[0], noisy.shape[1]
    total = n * step_tokens
    batch = after.shape[0] if after.ndim == 3 else 1
    emb = model.embed_action_time(states, noisy, time)  # (steps, 1 + horizon, D)
    emb = emb.reshape(1, n * (1 + horizon), emb.shape[-1]).expand(batch, -1, -1)
    seen = (torch.arange(n, device=emb.device) + 1) * step_tokens  # tokens seen after each step
    pos = (seen[:, None] + torch.arange(1 + horizon, device=emb.device)[None]).reshape(1, -1).expand(batch, -1)
    mask = suffix_mask(after, step_tokens, horizon).to(device=emb.device, dtype=emb.dtype)
    out = model.model.dit(inputs_embeds=emb, attention_mask=mask, position_ids=pos, past_key_values=cache,
                          use_cache=True)
    cache.crop(total - cache.get_seq_length())  # the expert's tokens are never history
    hidden = out.last_hidden_state.reshape(batch, n, 1 + horizon, -1)[:, :, 1:]
    pred = model.action_out_proj(hidden)
    return pred if after.ndim == 3 else pred[0]


def flow_matching_loss(model, cache, after, step_tokens, states, actions, valid, generator=None,
                       time: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """π0's loss per step ``(steps,)``: MSE between the predicted and the true velocity
    ``noise - actions`` at ``x_t = t noise + (1 - t) actions``, over ``valid (steps, horizon, A)``.
    ``time``/``noise`` default to π0's own sampling (Beta time, Gaussian noise)."""
    mc = model.config
    n = actions.shape[0]
    if time is None:
        beta = torch.distributions.Beta(torch.tensor(mc.time_sampling_beta_alpha),
                                        torch.tensor(mc.time_sampling_beta_beta))
        time = (beta.sample((n,)) * mc.time_sampling_scale + mc.time_sampling_offset).to(actions.device)
    if noise is None:
        noise = torch.randn(actions.shape, generator=generator).to(actions.device)
    t = time[:, None, None]
    noisy = t * noise + (1 - t) * actions
    pred = velocities(model, cache, after, step_tokens, states, noisy.to(states.dtype), time)
    err = ((pred.float() - (noise - actions)) ** 2) * valid
    return err.sum((-1, -2)) / valid.sum((1, 2)).clamp(min=1)  # (steps,), or (B, steps) batched


__all__ = [
    "block_ids",
    "flow_matching_loss",
    "held_steps",
    "prefix_mask",
    "prefix_states",
    "suffix_mask",
    "velocities",
]
