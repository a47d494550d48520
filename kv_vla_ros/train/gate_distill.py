"""End-to-end gate target (METHOD.md, target b): distillation under a budget penalty.

The frozen VLA replays a full-cache rollout teacher-forced. The gate scores every chunk from the
same pooled K/V it reads online; each score ``s_c`` becomes a soft attention bias ``log s_c`` on
chunk ``c``'s keys for every query that comes after ``c`` has left the recent window (where the
cache would judge it). The gate is trained so that the biased policy's action distribution stays
close (KL) to the full-cache one, while a penalty on the mean score pushes it to hold little:
chunks whose loss changes the actions earn high scores, the rest sink.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from kv_vla_ros.cache import ChunkGate


@dataclass
class DistillItem:
    """One rollout, ready for the distillation loss.

    Attributes:
        embeds: ``[1, tokens, hidden]`` the episode's input embeddings (frozen VLA).
        features: ``[chunks, in_dim]`` the gate's input per chunk (pooled K/V).
        teacher: ``[steps, actions, vocab]`` full-cache action log-probabilities.
        task: the episode's task.
    """

    embeds: torch.Tensor
    features: torch.Tensor
    teacher: torch.Tensor
    task: str


@torch.no_grad()  # not inference_mode: the tensors take part in the gate's backward later
def distill_item(model, episode, features: torch.Tensor) -> DistillItem:
    """Inputs and full-cache targets of one rollout (``features`` from ``episode_attention``)."""
    prefix = torch.as_tensor(model.text_tokenizer.encode(episode.instruction)).unsqueeze(0).to(model.device)
    frames = model.processor(episode.frames, model.device).unsqueeze(0)
    tokens = torch.as_tensor(model.action_tokenizer.encode(episode.actions)).unsqueeze(0).to(model.device)
    embeds = model.episode_embeds(prefix, frames, tokens)
    teacher = model(prefix, frames, tokens)[0].float().log_softmax(-1)
    return DistillItem(embeds.clone(), features.clone(), teacher.clone(), episode.task)


def chunk_bias(log_scores: torch.Tensor, prefix: int, step_tokens: int, recent_chunks: int,
               total: int) -> torch.Tensor:
    """Additive attention mask ``[total, total]``: causal, plus ``log_scores[c]`` on chunk ``c``'s
    keys for queries of steps ``s >= c + recent_chunks`` (chunk ``c`` has left the window there)."""
    n = log_scores.shape[0]
    pos = torch.arange(total, device=log_scores.device)
    step_of = torch.where(pos >= prefix, (pos - prefix) // step_tokens, -1)  # -1: prefix
    q_step, k_step = step_of.view(-1, 1), step_of.view(1, -1)
    judged = (k_step >= 0) & (q_step >= k_step + recent_chunks)
    per_key = torch.cat([log_scores.new_zeros(1), log_scores])[(k_step + 1).clamp(max=n).expand(total, total)]
    bias = torch.where(judged, per_key, log_scores.new_zeros(()))
    causal = pos.view(-1, 1) >= pos.view(1, -1)
    return bias.masked_fill(~causal, torch.finfo(bias.dtype).min)


def distill_loss(model, gate: ChunkGate, item: DistillItem, recent_chunks: int,
                 budget_weight: float) -> tuple[torch.Tensor, float, float]:
    """``(loss, kl, mean score)`` of one rollout; gradients reach the gate only (VLA frozen)."""
    cfg = model.config
    logits, _ = gate.logits(item.features.unsqueeze(0))
    log_scores = F.logsigmoid(logits[0])
    total = item.embeds.shape[1]
    mask = chunk_bias(log_scores, cfg.max_instruction_tokens, cfg.tokens_per_step, recent_chunks, total)
    student = model.forward_embeds(item.embeds, item.teacher.shape[0], mask[None, None])[0].float().log_softmax(-1)
    kl = F.kl_div(student, item.teacher, log_target=True, reduction="none").sum(-1).mean()
    n = item.features.shape[0]
    judged = log_scores[: max(0, n - recent_chunks)]  # chunks that ever leave the window
    mean_score = judged.exp().mean() if judged.numel() else log_scores.new_zeros(())
    return kl + budget_weight * mean_score, float(kl.detach()), float(mean_score.detach())


def train_gate_distill(model, items: list[DistillItem], recent_chunks: int, in_dim: int, epochs: int,
                       lr: float, hidden: int, budget_weight: float = 0.05, seed: int = 0,
                       progress: bool = True) -> tuple[ChunkGate, dict]:
    """Fit a gate by distillation (VLA frozen, eager attention for the additive mask)."""
    from tqdm import tqdm

    if len(items) < 2:
        raise ValueError("episodes: need at least two rollouts to train and validate the gate")
    if budget_weight < 0:
        raise ValueError(f"budget_weight: must be >= 0, got {budget_weight}")
    from kv_vla_ros.train.gate_data import split_and_init

    rng, train, val, gate = split_and_init(items, seed, in_dim, hidden)
    opt = torch.optim.Adam(gate.parameters(), lr=lr)
    backbone = model.backbone
    previous = backbone.config._attn_implementation
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    backbone.set_attn_implementation("eager")  # an additive float mask, with gradients through it

    def evaluate(split):
        with torch.no_grad():
            parts = [distill_loss(model, gate, it, recent_chunks, budget_weight) for it in split]
        return (sum(float(p[0]) for p in parts) / len(parts), sum(p[1] for p in parts) / len(parts),
                sum(p[2] for p in parts) / len(parts))

    log = {"train_loss": [], "val_loss": [], "val_kl": [], "val_mean_score": []}
    try:
        with torch.enable_grad():
            first = evaluate(val)
            log["val_loss"].append(first[0]), log["val_kl"].append(first[1]), log["val_mean_score"].append(first[2])
            bar = tqdm(range(epochs), desc="train-gate (distill)", disable=not progress)
            for _ in bar:
                gate.train()
                rng.shuffle(train)
                total = 0.0
                for item in train:
                    opt.zero_grad()
                    loss, _, _ = distill_loss(model, gate, item, recent_chunks, budget_weight)
                    loss.backward()
                    opt.step()
                    total += loss.item()
                gate.eval()
                v = evaluate(val)
                log["train_loss"].append(total / len(train))
                log["val_loss"].append(v[0]), log["val_kl"].append(v[1]), log["val_mean_score"].append(v[2])
                bar.set_postfix(train=f"{log['train_loss'][-1]:.4f}", val_kl=f"{v[1]:.4f}", score=f"{v[2]:.2f}")
    finally:
        backbone.set_attn_implementation(previous)
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    log.update(episodes_train=len(train), episodes_val=len(val), parameters=gate.num_parameters(),
               budget_weight=budget_weight)
    return gate.eval(), log


__all__ = ["DistillItem", "distill_item", "chunk_bias", "distill_loss", "train_gate_distill"]
