"""Behaviour cloning of the VLA on expert demonstrations over a task mixture (+ DAgger rounds).

One step = one batch of whole episodes under a token budget, one no-cache forward, CE on the
action positions (the same stream layout ``VLASession`` streams). The learning rate follows a
cosine over ``progress = max(step / max_steps, elapsed / minutes)`` so a run always finishes
inside its time cap; DAgger rounds (policy drives, expert labels) start at fixed progress points.

The same loop trains from recorded bags (``kv-vla train --bags --policy-type kv_vla``,
``kv_vla_ros.train.own_bags``): ``train(..., episodes=...)`` takes the bags' episodes instead of the
simulator's demonstrations, with no DAgger (no expert) and no auxiliary labels (bags carry none).
Outputs beside the model: ``train_log.jsonl`` (a line every ``log_every`` steps), ``train_curves.png``,
``train_summary.json``, ``train_config.json`` and ``checkpoint/`` for ``resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import kv_vla_ros.progress as bars
from kv_vla_ros.sim import load_episodes, save_episodes, train_seeds
from kv_vla_ros.sim.minigrid.memory import aux_targets
from kv_vla_ros.train.aux import AuxHeads
from kv_vla_ros.train.checkpoint import load_optimizer, load_progress, save_checkpoint
from kv_vla_ros.train.collective import Collective, sample_rng
from kv_vla_ros.train.curves import LOG_FILE, write_curves
from kv_vla_ros.train.eviction import batch_eviction_mask
from kv_vla_ros.train.data import DEFAULT_SCAN_TURNS, EpisodeSampler, demonstrations, expert_for, rollout
from kv_vla_ros.vla import VLAConfig, VLAModel, VLASession, default_backbone
from kv_vla_ros.vla.kv_vla.processor import ImageProcessor
from kv_vla_ros.vla.kv_vla.tokenization import TextTokenizer, build_text_tokenizer

DEFAULT_TASKS = {
    # Short hallways make the cue -> exit association cheap to find; the long fixed hallway
    # (S37: the cue 34+ steps before the decision) teaches recall across histories a budget must
    # compress; BabyAI teaches the instruction (the prefix) to decide the goal.
    "MiniGrid-MemoryS7-v0": 1000,
    "MiniGrid-MemoryS13Random-v0": 2000,
    "MiniGrid-MemoryS17Random-v0": 2000,
    "MiniGrid-MemoryS37-v0": 2000,
    "BabyAI-GoToObj-v0": 500,
    "BabyAI-GoToLocal-v0": 7000,
}


def default_vla_fields() -> dict:
    """VLAConfig fields of the recipe: 4 visual tokens per frame, linearly pooled from the patch
    features (with 49 tokens per frame the Memory cue was never recalled within the time cap, see
    the model card), a 16-token prefix (the longest instruction of the task mix is 12 tokens) and
    64-wide patch features (the pooling map reads all 49 x 64 of them)."""
    return {"vision_frame_context": True, "frame_tokens": 4, "frame_pooling": "linear",
            "max_instruction_tokens": 16, "vision_hidden": 64}


@dataclass
class TrainConfig:
    """Hyper-parameters of ``kv-vla train`` (saved as train_config.json next to the model)."""

    tasks: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TASKS))
    scan_turns: int = DEFAULT_SCAN_TURNS
    backbone: dict = field(default_factory=default_backbone)
    vla: dict = field(default_factory=default_vla_fields)  # other VLAConfig fields
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    focal_gamma: float = 2.0
    aux_weight: float = 1.0  # weight of the auxiliary-target loss (0: behaviour cloning only)
    # Training under eviction (train/eviction.py): from progress `evict_from` on, each episode of
    # a batch is, with probability `evict_prob`, seen through a cache that holds only
    # `evict_held_chunks[i]` old chunks (random scores) besides the prefix and `evict_recent_chunks`
    # recent ones, so the policy learns to act from what a budget leaves (0: never).
    evict_prob: float = 0.5
    evict_from: float = 0.4
    evict_held_chunks: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 6, 8, 12])
    evict_recent_chunks: int = 1
    init_from: str | None = None  # a saved model to fine-tune (None: a new model)
    batch_tokens: int = 8192
    max_steps: int = 100000
    minutes: float = 55.0
    seed: int = 0
    threads: int = 2
    checkpoint_minutes: float = 5.0
    dagger_at: list[float] = field(default_factory=lambda: [0.45, 0.7])
    dagger_episodes: int = 150  # per task per round
    # Compounding errors hurt the BabyAI search most; on Memory tasks a wrong exit ends the episode.
    dagger_tasks: list[str] | None = field(default_factory=lambda: ["BabyAI-GoToLocal-v0"])
    dagger_max_steps: int = 64
    data_dir: str = "runs/data"
    log_every: int = 20  # steps between train_log.jsonl lines (and train_summary.json loss points)
    bags: list[str] = field(default_factory=list)  # recorded bags trained from (empty: the simulator's tasks)

    def validate(self) -> None:
        if not self.tasks and not self.bags:
            raise ValueError("tasks: at least one task is needed")
        if self.bags and self.dagger_at:
            raise ValueError(f"dagger_at: DAgger rounds need a simulator expert; training from bags takes none, "
                             f"got {self.dagger_at!r}")
        if isinstance(self.log_every, bool) or not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError(f"log_every: must be an int >= 1, got {self.log_every!r}")
        for name in ("lr", "minutes", "batch_tokens", "max_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not isinstance(self.aux_weight, (int, float)) or not self.aux_weight >= 0:
            raise ValueError(f"aux_weight: must be >= 0, got {self.aux_weight!r}")
        if not 0.0 <= self.evict_prob <= 1.0:
            raise ValueError(f"evict_prob: must lie in [0, 1], got {self.evict_prob!r}")
        if not 0.0 <= self.evict_from <= 1.0:
            raise ValueError(f"evict_from: must lie in [0, 1], got {self.evict_from!r}")
        if self.evict_prob > 0 and (not self.evict_held_chunks or min(self.evict_held_chunks) < 0):
            raise ValueError(f"evict_held_chunks: need at least one count >= 0, got {self.evict_held_chunks!r}")
        if self.evict_recent_chunks < 0:
            raise ValueError(f"evict_recent_chunks: must be >= 0, got {self.evict_recent_chunks!r}")

    def aux_targets(self) -> dict[str, int]:
        """The auxiliary targets the task mix provides (none when ``aux_weight`` is 0)."""
        if self.aux_weight == 0:
            return {}
        out: dict[str, int] = {}
        for task in self.tasks:
            out.update(aux_targets(task))
        return out


def update_aux_ema(ema: dict, loss: float, stats: dict[str, tuple[int, int]], decay: float = 0.98) -> dict:
    """Running auxiliary loss and per-target accuracy (over labelled steps) for the training log."""
    out = {"loss": loss if "loss" not in ema else decay * ema["loss"] + (1 - decay) * loss,
           "acc": dict(ema.get("acc", {}))}
    for name, (correct, count) in stats.items():
        if count:
            acc = correct / count
            out["acc"][name] = acc if name not in out["acc"] else decay * out["acc"][name] + (1 - decay) * acc
    return out


def aux_log(aux_ema: dict) -> list:
    """``[aux_loss, {target: accuracy}]`` for the loss log (empty without auxiliary targets)."""
    if not aux_ema:
        return []
    return [round(aux_ema["loss"], 5), {k: round(v, 4) for k, v in aux_ema["acc"].items()}]


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def eviction_batch_mask(model: VLAModel, cfg: TrainConfig, batch, rng):
    """``(mask (B, 1, L, L) additive, evicted (B,) bool)`` for one batch (see ``train.eviction``;
    ``rng``: a generator, or one per episode of the batch)."""
    c = model.config
    lengths = batch.mask.sum(dim=1).tolist()
    total = c.max_instruction_tokens + batch.frames.shape[1] * c.tokens_per_step
    return batch_eviction_mask(rng, lengths, c.max_instruction_tokens, c.tokens_per_frame,
                               c.action.tokens_per_action, total, cfg.evict_prob, list(cfg.evict_held_chunks),
                               cfg.evict_recent_chunks)


def build_model(cfg: TrainConfig, episodes) -> VLAModel:
    frames = np.concatenate([e.frames[:: max(1, len(e.frames) // 4)] for e in episodes[:2000]])
    vcfg = VLAConfig(backbone=dict(cfg.backbone), processor=ImageProcessor.stats(frames), **cfg.vla)
    text = None
    if cfg.bags:  # a team's instructions may use words outside MiniGrid's missions: the vocabulary takes them
        words = {w for e in episodes for w in re.findall(r"\w+|[^\w\s]+", e.instruction.lower())}
        text = TextTokenizer(build_text_tokenizer(sorted(words)), vcfg.max_instruction_tokens)
    return VLAModel(vcfg, text)


def dagger_round(model: VLAModel, cfg: TrainConfig, round_idx: int, out: Path, progress: bool = True) -> list:
    """Roll out the current policy on fresh train seeds; label every visited state with the expert."""
    from kv_vla_ros.sim import SimRobot

    path = out / f"dagger{round_idx}.npz"
    if path.is_file():
        return load_episodes(path)
    model.eval()
    session = VLASession(model)
    episodes = []
    for task_idx, task in enumerate(cfg.tasks):
        if cfg.dagger_tasks is not None and task not in cfg.dagger_tasks:
            continue
        robot = SimRobot(task)
        expert = expert_for(robot, cfg.scan_turns)

        def policy(frame, instruction, t):
            if t == 0:
                session.reset(instruction)
            return int(session.step(frame)[0])

        # Seeds beyond every demonstration block: offset 500k + round/task blocks.
        seeds = train_seeds(cfg.dagger_episodes, 500_000 + (round_idx * 16 + task_idx) * 10_000)
        for s in bars.progress_bar(seeds, desc=f"dagger{round_idx} {task}", leave=False,
                      disable=not progress):
            episodes.append(rollout(robot, expert, s, policy=policy, max_steps=cfg.dagger_max_steps))
        robot.close()
    model.train()
    save_episodes(path, episodes)
    return episodes


@dataclass
class _Run:
    """What one training run carries from step to step (built by `_prepare`)."""

    model: VLAModel
    heads: AuxHeads | None
    opt: torch.optim.Optimizer
    params: list
    sampler: EpisodeSampler
    state: dict
    ckpt: Path
    data_s: float


def _prepare(cfg: TrainConfig, out: Path, resume: bool, progress_bar: bool, episodes: list | None = None) -> _Run:
    """Demonstrations (``episodes``, else the simulator's), the model (new, from ``init_from``, or
    resumed), auxiliary heads, optimizer and sampler, with the DAgger rounds a resumed run had done."""
    t_data = time.perf_counter()
    if episodes is None:
        episodes = []
        for task, n in cfg.tasks.items():
            episodes += demonstrations(task, n, scan_turns=cfg.scan_turns, cache_dir=cfg.data_dir)
    data_s = time.perf_counter() - t_data
    ckpt = out / "checkpoint"
    state = {"step": 0, "elapsed_s": 0.0, "episodes_seen": 0, "dagger_done": 0, "losses": []}
    if resume and (ckpt / "train_state.json").is_file():
        model = VLAModel.from_pretrained(ckpt)
        state.update(load_progress(ckpt))
    elif cfg.init_from:
        model = VLAModel.from_pretrained(cfg.init_from)
    else:
        model = build_model(cfg, episodes)
    model.train()
    targets = cfg.aux_targets()
    heads = AuxHeads(targets, model.backbone_config.hidden_size) if targets else None
    if heads is not None and resume:
        heads.load(ckpt)
    params = list(model.named_parameters()) + (list(heads.named_parameters()) if heads is not None else [])
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    if "param_groups" in state:
        groups = state.pop("param_groups")
        load_optimizer(opt, ckpt / "optimizer.safetensors", groups)
    sampler = EpisodeSampler(model, episodes, cfg.batch_tokens, seed=cfg.seed + state["step"], aux=targets)
    for r in range(state["dagger_done"]):
        sampler.add(model, dagger_round(model, cfg, r, out, progress_bar))
    return _Run(model, heads, opt, params, sampler, state, ckpt, data_s)


def _train_step(cfg: TrainConfig, run: _Run, progress: float, lr: float, step: int,
                comm: Collective) -> tuple[float, dict, int]:
    """One optimizer step on a sampled batch; returns (behaviour-cloning loss, auxiliary statistics
    or {}, episodes in the batch). With ``evict_prob``, the batch's histories go through the masks
    of a budgeted chunked cache (docs/method.md, "A policy that uses its memory"), each episode's
    drawn by its own generator ``(seed, step, row)``. With several workers (``comm``), every worker
    samples the same global batch (the sampler's generator is the step's), computes its rows
    (``comm.mine``) with the loss scaled to the global batch's token count, and the gradients are
    summed (``kv_vla_ros.train.collective``)."""
    model, heads = run.model, run.heads
    for g in run.opt.param_groups:
        g["lr"] = lr
    batch = run.sampler.sample()
    size = batch.frames.shape[0]
    rows = list(comm.mine(size))
    global_tokens = batch.mask.sum() * batch.actions.shape[2]
    if comm.world > 1:
        batch = batch.rows(rows)
    b, t = batch.frames.shape[:2]
    run.opt.zero_grad(set_to_none=True)
    bc_sum, aux_out = 0.0, {}
    if b:
        frames = model.processor(batch.frames.flatten(0, 1)).unflatten(0, (b, t))
        mask, aux = None, batch.aux
        if cfg.evict_prob > 0 and progress >= cfg.evict_from:
            rngs = [sample_rng(cfg.seed, step, k, stream=2) for k in rows]
            mask, evicted = eviction_batch_mask(model, cfg, batch, rngs)
            # A target about what was seen long ago is unlearnable once it may be gone: auxiliary
            # losses read whole histories only.
            aux = {k: v.masked_fill(evicted.view(-1, 1), -1) for k, v in batch.aux.items()}
        share = (batch.mask.sum() * batch.actions.shape[2]) / global_tokens  # 1 in one process
        if heads is None:
            logits = model(batch.prefix, frames, batch.actions, attention_mask=mask)
            loss = bc_loss = model.action_loss(logits, batch.actions, batch.mask, cfg.focal_gamma) * share
        else:
            logits, hidden = model(batch.prefix, frames, batch.actions, return_hidden=True, attention_mask=mask)
            bc_loss = model.action_loss(logits, batch.actions, batch.mask, cfg.focal_gamma) * share
            aux_loss, aux_stats = heads.loss(hidden, aux)
            loss = bc_loss + cfg.aux_weight * aux_loss
            aux_out = {"loss": aux_loss.item(), "stats": aux_stats}
        loss.backward()
        bc_sum = bc_loss.item()
    (bc_sum,) = comm.reduce_gradients([p for _, p in run.params], [bc_sum])
    torch.nn.utils.clip_grad_norm_([p for _, p in run.params], 1.0)
    run.opt.step()
    return bc_sum, aux_out, size


def _save(run: _Run) -> None:
    save_checkpoint(run.ckpt, run.model, run.opt, run.state, run.heads.save if run.heads is not None else None)


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress_bar: bool = True,
          episodes: list | None = None) -> VLAModel:
    """Train; writes ``out/checkpoint`` periodically and the final model to ``out``. ``episodes``
    (``kv_vla_ros.sim.Episode`` list, e.g. read from bags): train on these instead of the simulator's
    demonstrations of ``cfg.tasks``. As one of several data-parallel workers (``torch.distributed``
    initialised; bags only: no DAgger, no auxiliary heads) every worker holds ``episodes`` and
    samples the same global batch; rank 0 writes the files."""
    cfg.validate()
    comm = Collective()
    if comm.world > 1 and (cfg.dagger_at or cfg.aux_targets()):
        raise ValueError("workers: data-parallel training of the kv_vla policy takes bags (no DAgger, no "
                         "auxiliary labels)")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    if comm.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    run = _prepare(cfg, out, resume, progress_bar, episodes)
    comm.broadcast_parameters(run.model)  # every worker starts from rank 0's weights
    model, state = run.model, run.state
    if state["step"] == 0 and comm.is_main:  # a fresh run (or a resume with no checkpoint yet): a new log
        (out / LOG_FILE).write_text("")
    budget_s = cfg.minutes * 60.0 - run.data_s
    start = time.perf_counter() - state["elapsed_s"]
    last_ckpt = time.perf_counter()
    bar = bars.progress_bar(total=cfg.max_steps, initial=state["step"], desc="train",
                            disable=not progress_bar or not comm.is_main)
    ema, aux_ema = None, {}
    while True:
        elapsed = time.perf_counter() - start
        # rank 0's clock decides for every worker: the same schedule and the same last step
        progress = comm.broadcast_float(max(state["step"] / cfg.max_steps, elapsed / budget_s))
        if progress >= 1.0:
            break
        if state["dagger_done"] < len(cfg.dagger_at) and progress >= cfg.dagger_at[state["dagger_done"]]:
            run.sampler.add(model, dagger_round(model, cfg, state["dagger_done"], out, progress_bar))
            state["dagger_done"] += 1
            continue
        lr = lr_at(cfg, state["step"], progress)
        run.sampler.rng = sample_rng(cfg.seed, state["step"], 0, stream=1)  # the step's batch, on every worker
        bc_loss, aux, episodes = _train_step(cfg, run, progress, lr, state["step"], comm)
        if aux:
            aux_ema = update_aux_ema(aux_ema, aux["loss"], aux["stats"])
            if any(count for _, count in aux["stats"].values()):  # a batch with labels (not BabyAI only)
                state.setdefault("first_aux_loss", aux["loss"])
        state["step"] += 1
        state["episodes_seen"] += episodes
        # the logged loss is behaviour cloning's; the auxiliary loss and accuracy are logged apart
        if ema is None:
            state.setdefault("first_loss", bc_loss)
        ema = bc_loss if ema is None else 0.98 * ema + 0.02 * bc_loss
        if state["step"] % cfg.log_every == 0 or state["step"] == 1:
            if state["step"] % cfg.log_every == 0:
                state["losses"].append([state["step"], round(ema, 5)] + aux_log(aux_ema))
            row = {"step": state["step"], "loss": round(bc_loss, 5), "loss_ema": round(ema, 5), "lr": lr,
                   "aux_loss": aux_ema.get("loss"), "elapsed_s": round(time.perf_counter() - start, 1)}
            if comm.is_main:
                with (out / LOG_FILE).open("a") as logf:  # opened per line: nothing left open if training raises
                    logf.write(json.dumps(row) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}", eps=state["episodes_seen"], data=len(run.sampler),
                        **{f"aux_{k}_acc": f"{v:.2f}" for k, v in aux_ema.get("acc", {}).items()})
        if comm.is_main and time.perf_counter() - last_ckpt > cfg.checkpoint_minutes * 60:
            state["elapsed_s"] = time.perf_counter() - start
            _save(run)
            last_ckpt = time.perf_counter()
    bar.close()
    state["elapsed_s"] = time.perf_counter() - start
    state["data_s"] = run.data_s
    model.eval()
    if not comm.is_main:
        return model
    _save(run)
    model.save_pretrained(out)  # the policy only: auxiliary heads stay in the training checkpoint
    write_curves(out, loss_title="behaviour-cloning loss")
    summary = {k: v for k, v in state.items() if k != "losses"}
    summary["final_loss"] = ema
    summary["aux"] = aux_ema
    (out / "train_summary.json").write_text(json.dumps({**summary, "losses": state["losses"]}, indent=2) + "\n")
    return model


__all__ = ["TrainConfig", "train", "lr_at", "DEFAULT_TASKS", "dagger_round", "build_model"]
