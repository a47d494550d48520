"""Training under eviction: teacher-forced masks of what a bounded cache would have held.

A policy trained only on whole histories meets a history with holes the first time a budget
evicts something, and there it wanders (measured: with a quarter budget, episodes ran up to four
times longer than with the full cache, whatever the cache kept). This module builds, for one
episode, the attention mask of a streaming chunked cache that evicts by fixed per-chunk scores
under a budget of ``held_chunks`` old chunks; training on a share of such masks teaches the
policy to act from the prefix, the recent window and whichever old chunks survive.

With fixed scores the streaming keep rule (evict the lowest-scored old chunk while over budget)
holds, at every step, the top ``held_chunks`` of the chunks that have left the recent window, and
a chunk once evicted never comes back: exactly what ``ChunkedKVCache`` does with a gate whose
scores do not change. Every token's row is the view it had when it was fed, so a forward under
this mask equals streaming the episode through such a cache (positions stay absolute).
"""

from __future__ import annotations

import numpy as np
import torch


def eviction_horizon(scores: np.ndarray, held_chunks: int) -> np.ndarray:
    """Last old-chunk count at which each chunk is still held.

    Args:
        scores: ``(C,)`` one score per chunk (higher = kept longer).
        held_chunks: how many old chunks the budget holds (>= 0).
    Returns:
        ``(C,)`` int64 ``h``: chunk ``c`` is held while fewer than ``h[c] + 1`` chunks are old
        (``C`` when it is never evicted).
    """
    if held_chunks < 0:
        raise ValueError(f"held_chunks: must be >= 0, got {held_chunks}")
    n = scores.shape[0]
    out = np.full(n, n, dtype=np.int64)
    for c in range(n):
        # Once `held_chunks` chunks scored higher than c are old, c is out of the top-k for good.
        better = np.flatnonzero(scores > scores[c])  # ascending ids; never c itself
        if held_chunks == 0:
            out[c] = c  # evicted as soon as it leaves the window
        elif better.size >= held_chunks:
            out[c] = max(c, int(better[held_chunks - 1]))
    return out


def eviction_mask(prefix: int, frame_tokens: int, action_tokens: int, steps: int, total: int,
                  scores: np.ndarray, held_chunks: int, recent_chunks: int) -> torch.Tensor:
    """Boolean attention mask ``(total, total)`` (True = attend) of one episode streamed through a
    chunked cache that holds ``held_chunks`` old chunks by ``scores``.

    Layout (``VLAModel.episode_embeds``): ``prefix`` instruction tokens, then per step ``t`` its
    frame tokens and action tokens (one chunk). A control step's forward feeds the previous step's
    action tokens with the new frame, so an action token belongs to the next step's forward. At
    forward ``f`` the cache holds the prefix, the ``recent_chunks`` chunks before ``f`` and chunk
    ``f`` itself, and of the older chunks (``c < f - recent_chunks``) the top ``held_chunks``.

    Args:
        steps: ``T`` real steps of the episode; ``total >= prefix + T * (F + A)`` (padding after
            the episode sees the whole causal past: its rows are never in a loss).
        scores: ``(T,)`` per-chunk scores.
    """
    step_tokens = frame_tokens + action_tokens
    if scores.shape[0] != steps:
        raise ValueError(f"scores: need one score per step ({steps}), got {scores.shape[0]}")
    if recent_chunks < 0:
        raise ValueError(f"recent_chunks: must be >= 0, got {recent_chunks}")
    pos = np.arange(total)
    step_of = np.where(pos >= prefix, (pos - prefix) // step_tokens, -1)
    in_step = np.where(pos >= prefix, (pos - prefix) % step_tokens, 0)
    forward_of = np.where(in_step >= frame_tokens, step_of + 1, step_of)  # action -> next forward
    horizon = eviction_horizon(scores, held_chunks)
    q_fwd, k_chunk = forward_of[:, None], step_of[None, :]
    old = k_chunk < q_fwd - recent_chunks
    # chunk c is held at forward f while the old chunks number at most h[c]: f - recent <= h[c]
    k_horizon = np.where((k_chunk >= 0) & (k_chunk < steps), horizon[np.clip(k_chunk, 0, steps - 1)], total)
    held = ~old | (q_fwd - recent_chunks <= k_horizon)
    real_query = (step_of < steps)[:, None]  # padding rows: plain causal
    visible = (k_chunk < 0) | held | ~real_query
    causal = pos[:, None] >= pos[None, :]
    return torch.from_numpy(visible & causal)


def batch_eviction_mask(rng: np.random.Generator | list[np.random.Generator], lengths: list[int], prefix: int,
                        frame_tokens: int, action_tokens: int, total: int, prob: float, held_choices: list[int],
                        recent_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive float mask ``(B, 1, total, total)`` for a batch, and which episodes got eviction.

    Each episode is, with probability ``prob``, streamed under a random budget (``held_chunks``
    drawn from ``held_choices``) with uniform random chunk scores; the others see their whole
    causal history. ``rng``: one generator for the batch, or one per episode (a sample's own, so
    its mask does not depend on which worker or batch row draws it). Returns ``(mask, evicted (B,) bool)``.
    """
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    rows, evicted = [], []
    rngs = rng if isinstance(rng, (list, tuple)) else [rng] * len(lengths)
    if len(rngs) != len(lengths):
        raise ValueError(f"rng: {len(rngs)} generators for {len(lengths)} episodes")
    for t, rng in zip(lengths, rngs):
        if rng.random() < prob:
            k = int(rng.choice(held_choices))
            rows.append(eviction_mask(prefix, frame_tokens, action_tokens, t, total, rng.random(t), k,
                                      recent_chunks))
            evicted.append(True)
        else:
            rows.append(causal)
            evicted.append(False)
    allowed = torch.stack(rows).unsqueeze(1)
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask, torch.tensor(evicted)


__all__ = ["eviction_horizon", "eviction_mask", "batch_eviction_mask"]
