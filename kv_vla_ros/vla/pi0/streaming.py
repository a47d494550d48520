"""Long-horizon π0 on the chunked cache: the stream and the two forwards of a control step.

The stream of an episode, one cache chunk per control step::

    [step 1: cameras x image tokens, <bos> instruction \n][step 2: images, <bos> instruction \n] ...

Every step's block is π0's own single-frame prefix, in ``PI0Processor``'s order (images first, then
the prompt). Why this layout for a checkpoint trained on single frames: at every step the tokens
nearest the action expert (the current images, then the prompt, then the state and the noisy
actions) sit at exactly the relative positions and in exactly the order the checkpoint was trained
on; the history is extra context before that block, never between its parts. So the first step
*is* ``PI0Processor`` + ``sample_actions`` (tested), and the instruction is never evicted: each
chunk carries it (its cost: the prompt's few tokens per step, beside cameras x 256 image tokens at
π0's size). There is no prefix to hold (``sink_tokens`` 0), so
chunks start at position 0 and every eviction, ``window`` included, keeps or drops whole steps.

Which baseline is which: a cache that holds only the newest step is *not* the single-frame
checkpoint: that step's keys and values at layers >= 1 were computed while the previous step was
held, so up to L-1 steps back still reach the action. The true no-history baseline is the session
emptied before every step (``VLASession(history=False)``, the eval spec ``no_history``): every step
is then the single-frame checkpoint on the current frame.

1. ``vlm_block``: the step's block goes through the VLM's language model into the cache, at
   absolute positions ``tokens_seen ...``. π0 attends bidirectionally over its prefix; a stream
   cannot let an old frame see a newer one, so attention is bidirectional within a step's block
   and causal across steps: every held token and every token of the block is visible to the
   block, nothing later exists yet. The cache then applies its eviction (one step = one chunk).
2. ``denoise``: the action expert's tokens (state + noisy chunk) attend to the held prefix through
   a ``TransientView``: they are never stored, scored, evicted or counted as history. π0's own
   ``forward`` runs each denoising step (its block mask: the state token sees the prefix and
   itself, the action tokens see everything).
"""

from __future__ import annotations

import torch

from kv_vla_ros.cache.transient import TransientView


def held_tokens(cache) -> int:
    """Tokens held by the first attention layer (every layer, unless per-layer budgets)."""
    return cache.tokens_held()


def visible_mask(q: int, held: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``[1, 1, q, held + q]`` additive mask with every key visible (an expanded zero, no memory).
    The ``kv_vla_*`` attention widens it per layer when layers hold different lengths."""
    return torch.zeros(1, 1, 1, 1, dtype=dtype, device=device).expand(1, 1, q, held + q)


def vlm_block(model, cache, embeds: torch.Tensor) -> None:
    """Append one block ``embeds (1, q, D)`` of prefix tokens to ``cache`` through π0's VLM."""
    q = embeds.shape[1]
    seen = cache.get_seq_length()
    pos = torch.arange(seen, seen + q, device=embeds.device).unsqueeze(0)
    mask = visible_mask(q, held_tokens(cache), embeds.dtype, embeds.device)
    model.model.vlm.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                   past_key_values=cache, use_cache=True)


def denoise(model, cache, state: torch.Tensor, noise: torch.Tensor, num_steps: int, guide=None) -> torch.Tensor:
    """Flow matching from ``noise (1, chunk, max_action_dim)`` at t=1 to actions at t=0, Euler steps
    as in ``sample_actions``, reading ``cache`` without changing it.

    Args:
        state: (1, max_state_dim) normalized, padded state in the model's dtype.
        guide: None, or real-time chunking's inpainting (Black et al. 2025): ``(target (1, m, A),
            weights (m,), max_guidance, hard)`` in normalized units, the first ``m`` rows and ``A``
            action dimensions guided (see `guided_velocity`).
    Returns:
        (1, chunk, max_action_dim) normalized actions (``noise``'s dtype).
    """
    view = TransientView(cache)
    dt = -1.0 / num_steps
    x = noise
    for k in range(num_steps):
        time = 1.0 + k * dt
        t = torch.full((1,), time, dtype=torch.float32, device=noise.device)
        out = model(state=state, noise=x.to(state.dtype), timestep=t, past_key_values=view)
        v = out.logits.to(x.dtype)
        if guide is not None:
            v = guided_velocity(x, v, time, *guide[:3])
        x = x + dt * v
        if guide is not None and guide[3]:  # hard: the weight-1 rows are the target, at flow time t + dt
            target, weights = guide[0], guide[1]
            rows, dims, t_next = int((weights >= 1.0).sum()), target.shape[2], max(time + dt, 0.0)
            x[:, :rows, :dims] = t_next * noise[:, :rows, :dims] + (1.0 - t_next) * target[:, :rows]
    return x


def guided_velocity(x: torch.Tensor, v: torch.Tensor, time: float, target: torch.Tensor, weights: torch.Tensor,
                    max_guidance: float) -> torch.Tensor:
    """RTC's guided velocity at flow time ``time`` (1: noise, 0: actions): ``v - w(t) * W (Y - x1)``
    with ``x1 = x - t v`` the actions the step predicts, ``Y`` the target on the first ``m`` rows and
    ``A`` dimensions (``W``: their weights; the rest unguided), ``w(t) = min(beta, (1 - tau) / tau *
    (tau^2 + (1 - tau)^2) / (1 - tau)^2)`` with ``tau = 1 - t`` (eq. 2 of the paper, in this time
    convention). The Jacobian of ``x1`` by ``x`` is taken as the identity, as LeRobot's RTC does: no
    backward pass through the action expert (and it runs under inference mode). A zero weight
    leaves ``v`` as it is. Shapes: x, v (1, chunk, max_action_dim); target (1, m, A); weights (m,)."""
    m, dims = target.shape[1], target.shape[2]
    tau = 1.0 - time
    gain = max_guidance if tau <= 0.0 or tau >= 1.0 else min(
        max_guidance, (1.0 - tau) / tau * (tau ** 2 + (1.0 - tau) ** 2) / (1.0 - tau) ** 2)
    predicted = x[:, :m, :dims] - time * v[:, :m, :dims]
    correction = torch.zeros_like(v)
    correction[:, :m, :dims] = (target - predicted) * weights.view(1, m, 1)
    return v - gain * correction


__all__ = ["held_tokens", "visible_mask", "vlm_block", "denoise", "guided_velocity"]
