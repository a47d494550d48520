"""The chunk gate of a π0 checkpoint trained offline from recorded bags (``kv-vla train-gate --bags``):
no simulator, no rollouts, only teacher-forced replays of the recorded episodes.

Target (as ``gate_value`` for the package's own VLA): the value of keeping each chunk (one
inference step) *alone* beside the recent window. With the π0 frozen, each episode's stream is
replayed teacher-forced (``pi0_stream``) with the full history, with the recent window only, and
once per chunk ``c`` with the window plus ``c``, under the same noise and flow-matching times; the
per-step flow-matching losses give

    gain[c, s] = max(0, loss_window[s] - loss_window+c[s])   for steps s at which c is old
    value[c]   = sum_s  gain[c, s] / sum_c' gain[c', s] x loss_window[s]

(a step's loss shared among the chunks that restore it). The gate reads each chunk's pooled K/V
(``chunk_features``, from the full-history replay) in order, as the cache feeds it online, and is fit
to each episode's value percentiles (``gate_train.train_gate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kv_vla_ros.cache import chunk_features
from kv_vla_ros.train.pi0_stream import flow_matching_loss, held_steps, prefix_states


@dataclass
class StreamFeatures:
    """The gate's input of one episode: ``features [chunks, layers x 2 x head_dim]``."""

    features: torch.Tensor


def keep_alone_sets(n: int, recent: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Held sets of a cache holding the recent window and ``chunk`` alone (once fed)."""
    before, after = held_steps(n, None, 0, recent)
    after[chunk:, chunk] = True
    before[1:] = after[:-1]
    return before, after


@torch.no_grad()
def keep_alone_value(policy, ep, recent: int, draws: int = 1, seed: int = 0,
                     batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(value [n], features [n, in_dim])`` of one ``StreamEpisode``; value NaN for chunks that never
    leave the window. The replays (full, window, window + each chunk) run ``batch`` at a time."""
    model = policy.model
    n = ep.states.shape[0]
    gen = torch.Generator().manual_seed(seed)
    time = torch.rand(draws, n, generator=gen) * 0.998 + 0.001
    noise = torch.randn((draws, *ep.actions.shape), generator=gen)
    judged = torch.arange(n).view(-1, 1) <= torch.arange(n).view(1, -1) - recent  # [chunks, steps]: c is old
    chunks = [c for c in range(n) if judged[c].any()]
    sets = [held_steps(n, None, None, recent), held_steps(n, None, 0, recent)]
    sets += [keep_alone_sets(n, recent, c) for c in chunks]
    losses, features = [], None
    for i in range(0, len(sets), batch):
        part = sets[i:i + batch]
        before, after = np.stack([b for b, _ in part]), np.stack([a for _, a in part])
        cache = prefix_states(model, ep.ids, ep.pixels, before)
        if features is None:  # the full-history replay (row 0): each block's pooled K/V
            span = ep.step_tokens
            features = torch.stack([chunk_features([(layer.keys[:1, ..., s * span:(s + 1) * span, :],
                                                     layer.values[:1, ..., s * span:(s + 1) * span, :])
                                                    for layer in cache.layers]) for s in range(n)])
        losses.append(sum(flow_matching_loss(model, cache, after, ep.step_tokens, ep.states, ep.actions, ep.valid,
                                             time=time[d], noise=noise[d]) for d in range(draws)) / draws)
    losses = torch.cat(losses)  # [2 + len(chunks), steps]
    window = losses[1]
    gain = torch.zeros(n, n)
    gain[chunks] = (window.unsqueeze(0) - losses[2:]).clamp(min=0)
    gain = gain * judged
    share = gain / gain.sum(0, keepdim=True).clamp(min=1e-9)
    value = (share * window.unsqueeze(0)).sum(1)
    return value.masked_fill(~judged.any(1), float("nan")), features


def load_frozen_policy(model_path: str):
    """A worker's copy of the frozen π0 (float32), loaded once per worker."""
    from kv_vla_ros.vla import load_policy

    return load_policy(model_path, dtype="float32")


def episode_value(policy, item, tick):
    """``keep_alone_value`` of one recorded episode ``item = (index, episode, recent, seed)`` (its draws
    seeded by ``seed + index``: the same on any worker)."""
    from kv_vla_ros.train.pi0_train import stream_episode

    i, ep, recent, seed = item
    value, features = keep_alone_value(policy, stream_episode(policy, ep), recent, seed=seed + i)
    tick(1)
    return value, features


def train_gate_from_bags(policy, episodes, recent: int, epochs: int = 40, lr: float = 3e-3, hidden: int = 64,
                         seed: int = 0, progress: bool = True, runner=None, model_path: str | None = None):
    """``(gate, log)``: keep-alone values of every episode (the slow part: spread over the workers of
    ``runner``, a ``RunnerConfig``, each loading the π0 from ``model_path``; default in-process), then
    ``train_gate`` on them."""
    from kv_vla_ros.cache import gate_input_dim
    from kv_vla_ros.parallel.runner import Runner, RunnerConfig
    from kv_vla_ros.train.gate_train import train_gate

    runner = runner or RunnerConfig(workers=1, progress=progress)
    if runner.uses_ray and model_path is None:
        raise ValueError("model_path: workers load the π0 from its directory; give it with a RunnerConfig")
    text = policy.model.config.vlm_config.text_config
    items = [(i, ep, recent, seed) for i, ep in enumerate(episodes)]
    with Runner(load_frozen_policy, (model_path,), runner, total=len(items), desc="keep-alone values",
                local_state=policy) as pool:
        results = pool.map(episode_value, items)
    values = [v for v, _ in results]
    gate, log = train_gate([StreamFeatures(f) for _, f in results], recent,
                           gate_input_dim(text.num_hidden_layers, text.head_dim), epochs, lr, hidden,
                           seed=seed, progress=progress, values=values)
    log["values"] = [v.tolist() for v in values]
    log["workers"] = pool.workers
    return gate, log


__all__ = ["StreamFeatures", "episode_value", "keep_alone_sets", "keep_alone_value", "load_frozen_policy",
           "train_gate_from_bags"]
