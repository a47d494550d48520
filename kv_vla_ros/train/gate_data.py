"""Training data for the gate and the per-layer calibration: full-cache rollouts of the VLA and,
per rollout, one teacher-forced forward that exposes every layer's keys, values and attention.

For chunk ``c`` (step ``c``'s frame and action tokens) the gate sees the pooled K/V that the cache
would pool online (`chunk_features`), and the target is its *future utility*: how much attention
the frames that come after ``c`` has left the recent window put on it, relative to the average
past chunk at that moment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from kv_vla_ros.cache import ChunkGate, GateConfig, chunk_features
from kv_vla_ros.sim import Episode, SimRobot


@dataclass
class EpisodeAttention:
    """One rollout seen through the backbone.

    Attributes:
        features: ``[chunks, layers * 2 * head_dim]`` the gate's input per closed chunk.
        mass: ``[layers, heads, steps, chunks]`` attention that step ``s``'s frame queries put on
            chunk ``c`` (mean over the frame's queries; zero for ``c >= s``).
        current: ``[layers, steps]`` attention share of the current step's own tokens.
    """

    features: torch.Tensor
    mass: torch.Tensor
    current: torch.Tensor
    task: str
    success: bool


@torch.inference_mode()
def policy_rollouts(model, task: str, seeds: list[int], cache_config=None, progress: bool = False,
                    max_steps: int | None = None) -> list[Episode]:
    """Closed-loop episodes of ``model`` (its own actions) with ``cache_config`` (default: full)."""
    from tqdm import tqdm

    from kv_vla_ros.vla import VLASession

    cfg = cache_config or model.config.cache.replace(eviction="full", budget_tokens=None)
    session = VLASession(model, cfg)
    robot = SimRobot(task, max_steps=max_steps)
    episodes = []
    for seed in tqdm(seeds, desc=f"rollouts {task}", disable=not progress, leave=False):
        frame, instruction = robot.reset(seed)
        session.reset(instruction)
        frames, actions = [], []
        while not robot.done:
            action = int(session.step(frame)[0])
            frames.append(frame)
            actions.append(action)
            frame = robot.step(action).frame
        episodes.append(Episode(task=task, seed=int(seed), instruction=instruction, frames=np.stack(frames),
                                actions=np.asarray(actions, dtype=np.int64), success=bool(robot.success)))
    robot.close()
    return episodes


@torch.inference_mode()
def episode_attention(model, episode: Episode) -> EpisodeAttention:
    """Teacher-forced forward of ``episode`` with eager attention (its probabilities are needed)."""
    cfg = model.config
    prefix_len, step, frame_tokens = cfg.max_instruction_tokens, cfg.tokens_per_step, cfg.tokens_per_frame
    prefix = torch.as_tensor(model.text_tokenizer.encode(episode.instruction)).unsqueeze(0).to(model.device)
    frames = model.processor(episode.frames, model.device).unsqueeze(0)
    tokens = torch.as_tensor(model.action_tokenizer.encode(episode.actions)).unsqueeze(0).to(model.device)
    embeds = model.episode_embeds(prefix, frames, tokens)
    backbone = model.backbone
    previous = backbone.config._attn_implementation
    backbone.set_attn_implementation("eager")
    try:
        cache = DynamicCache(config=backbone.config)
        out = backbone(inputs_embeds=embeds, past_key_values=cache, use_cache=True, output_attentions=True)
    finally:
        backbone.set_attn_implementation(previous)
    n = episode.frames.shape[0]
    att = torch.stack([a[0].float() for a in out.attentions])  # [L, H, T, T]
    cols = att[..., prefix_len : prefix_len + n * step].unflatten(-1, (n, step)).sum(-1)  # [L, H, T, n]
    rows = prefix_len + torch.arange(n).view(-1, 1) * step + torch.arange(frame_tokens).view(1, -1)  # [n, F]
    per_step = cols[:, :, rows.flatten()].unflatten(2, rows.shape).mean(3)  # [L, H, n_steps, n_chunks]
    current = per_step.diagonal(dim1=-2, dim2=-1).mean(1)  # [L, n]
    past = torch.ones(n, n).tril(-1).bool()  # chunk c < step s
    mass = per_step * past
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    feats = []
    for c in range(n):
        sl = slice(prefix_len + c * step, prefix_len + (c + 1) * step)
        feats.append(chunk_features([(k[..., sl, :], v[..., sl, :]) for k, v in layers]))
    return EpisodeAttention(torch.stack(feats), mass, current, episode.task, bool(episode.success))


def future_utility(mass: torch.Tensor, recent_chunks: int, reduce: str = "mean") -> torch.Tensor:
    """``[chunks]`` peak relative attention each chunk gets once out of the window (NaN if never).

    ``mass`` is ``[layers, heads, steps, chunks]``; relative = mass / mean over the step's past
    chunks (1.0 = an ordinary chunk); heads and layers are averaged (``reduce="mean"``) or the
    most selective one is taken (``"max"``).
    """
    n = mass.shape[-1]
    counts = torch.arange(n).clamp(min=1).view(1, 1, -1, 1).float()  # past chunks at step s
    rel = mass / (mass.sum(-1, keepdim=True) / counts).clamp(min=1e-12)
    rel = rel.mean(dim=(0, 1)) if reduce == "mean" else rel.flatten(0, 1).max(0).values  # [steps, chunks]
    steps = torch.arange(n).view(-1, 1)
    chunks = torch.arange(n).view(1, -1)
    out_of_window = steps >= chunks + recent_chunks
    rel = rel.masked_fill(~out_of_window, float("-inf"))
    utility = rel.max(0).values
    return utility.masked_fill(torch.isinf(utility), float("nan"))


def rank_targets(utility: torch.Tensor) -> torch.Tensor:
    """Soft targets in [0, 1]: each chunk's utility percentile within its episode (NaN kept)."""
    valid = ~torch.isnan(utility)
    target = torch.full_like(utility, float("nan"))
    k = int(valid.sum())
    if k == 1:
        target[valid] = 1.0
    elif k > 1:
        order = utility[valid].argsort().argsort().float()
        target[valid] = order / (k - 1)
    return target


def layer_dispersion(items: list[EpisodeAttention]) -> list[float]:
    """ScaleKV selectivity per layer: the share of a frame's attention that goes to past chunks
    (drafters: high) rather than to the current step or the prefix (refiners: low)."""
    shares = []
    for item in items:
        if item.mass.shape[-1] < 2:
            continue
        shares.append(item.mass.sum(-1).mean(1)[:, 1:].mean(-1))  # [L], skipping step 0 (no past)
    if not shares:
        raise ValueError("episodes: need at least one episode of two or more steps to calibrate")
    return torch.stack(shares).mean(0).tolist()


def split_and_init(items: list, seed: int, in_dim: int, hidden: int):
    """Seeded shuffle, a fifth (at least one rollout) held out, a fresh gate:
    ``(rng, train, val, gate)``. Shared by both gate targets so they are compared on equal terms."""
    rng = random.Random(seed)
    items = list(items)
    rng.shuffle(items)
    n_val = max(1, len(items) // 5)
    torch.manual_seed(seed)
    return rng, items[n_val:], items[:n_val], ChunkGate(GateConfig(in_dim=in_dim, hidden=hidden))
