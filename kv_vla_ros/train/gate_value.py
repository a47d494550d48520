"""A third gate target: the value of keeping a chunk, measured by keeping it alone.

Future attention utility asks where the full-cache policy looks; it does not ask whether the
policy needs what it looks at, and a chunk repeated in five frames gets five high targets. Here
each chunk ``c`` of a rollout is kept *alone* beside the prefix and the recent window, and the
frozen VLA replays the rollout teacher-forced under that mask (the stream a cache holding only
``c`` would give, `train.eviction`). The chunk's value is how much closer its actions come to the
full-cache ones than with the window alone, summed over the steps after ``c`` left the window:

    value[c] = sum_s max(0, KL(full_s || window_s) - KL(full_s || window+c_s))

A cue frame that decides the exit scores high at the decision; a frame whose content the recent
window repeats scores about zero. The gate is fit to each episode's value percentiles (the same
BCE as the utility target), so what it learns is an order: under a hard budget, the order is all
that decides what stays.
"""

from __future__ import annotations

import numpy as np
import torch

from kv_vla_ros.train.eviction import eviction_mask


@torch.inference_mode()
def keep_alone_value(model, episode, recent_chunks: int) -> torch.Tensor:
    """``[chunks]`` value of keeping each chunk alone (NaN for chunks that never leave the window).

    One teacher-forced forward of the full history, one with only the window, and one per chunk
    with the window plus that chunk, batched.
    """
    cfg = model.config
    p, f, a = cfg.max_instruction_tokens, cfg.tokens_per_frame, cfg.action.tokens_per_action
    n = episode.frames.shape[0]
    prefix = torch.as_tensor(model.text_tokenizer.encode(episode.instruction)).unsqueeze(0).to(model.device)
    frames = model.processor(episode.frames, model.device).unsqueeze(0)
    tokens = torch.as_tensor(model.action_tokenizer.encode(episode.actions)).unsqueeze(0).to(model.device)
    total = p + n * (f + a)
    window = eviction_mask(p, f, a, n, total, np.zeros(n), 0, recent_chunks)  # [total, total]
    pos = torch.arange(total)
    chunk_of = torch.where(pos >= p, (pos - p) // (f + a), -1)
    causal = pos.view(-1, 1) >= pos.view(1, -1)
    masks = [torch.ones(total, total, dtype=torch.bool).tril(), window]
    masks += [window | (causal & (chunk_of == c).view(1, -1)) for c in range(n)]
    allowed = torch.stack(masks).unsqueeze(1)  # [2 + n, 1, total, total]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    embeds = model.episode_embeds(prefix, frames, tokens)  # the vision encoder runs once
    logp = []
    for i in range(0, allowed.shape[0], 16):  # bounded memory on long episodes
        m = additive[i: i + 16]
        logits = model.forward_embeds(embeds.expand(m.shape[0], -1, -1), n, m)
        logp.append(logits.float().log_softmax(-1))
    logp = torch.cat(logp)  # [2 + n, steps, A, V]
    full, base, alone = logp[0], logp[1], logp[2:]

    def kl(student):  # KL(full || student) per step: [..., steps]
        return (full.exp() * (full - student)).sum(-1).sum(-1)

    loss = kl(base)  # [steps] what the window alone loses at each step
    # step s's forward can read chunk c as an old chunk once c < s - recent_chunks
    steps = torch.arange(n).view(1, -1)
    chunks = torch.arange(n).view(-1, 1)
    judged = chunks < steps - recent_chunks
    gain = (loss.unsqueeze(0) - kl(alone)).clamp(min=0) * judged  # [chunks, steps]
    # Each step's loss is shared among the chunks that restore it, in proportion: a fact repeated
    # by twenty frames is worth little per frame, one shown by two frames is worth much to each.
    share = gain / gain.sum(0, keepdim=True).clamp(min=1e-9)
    value = (share * loss.unsqueeze(0)).sum(1)
    return value.masked_fill(~judged.any(1), float("nan"))


__all__ = ["keep_alone_value"]
