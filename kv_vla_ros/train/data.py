"""Demonstrations for behaviour cloning: expert rollouts on TRAIN seeds, cached as .npz.

Memory tasks use the scanning expert (``scan_turns`` left turns in the start room before
anything else): the episodes get long (>= 20 steps, >= 1000 tokens on S13/S17) while the cue
stays only in the first frames, which is what a long-horizon KV cache must remember.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kv_vla_ros.sim import (Episode, MemoryExpert, SimRobot, is_memory_task, load_episodes, make_expert,
                            save_episodes, train_seeds)
from kv_vla_ros.sim.minigrid.memory import aux_labels, aux_targets, cue_visible, relabel

DEFAULT_SCAN_TURNS = 8  # two full circles: S13 ~20 steps, S17 ~23 steps (measured)


class ScanningMemoryExpert(MemoryExpert):
    """``MemoryExpert`` whose start-room scan lasts ``scan_turns`` left turns (4 = one circle)."""

    def __init__(self, robot: SimRobot, scan_turns: int = DEFAULT_SCAN_TURNS):
        self.scan_turns = int(scan_turns)
        super().__init__(robot, look_around=scan_turns > 0)

    def _new_episode(self) -> None:
        super()._new_episode()
        self.turns_left = self.scan_turns


def expert_for(robot: SimRobot, scan_turns: int = DEFAULT_SCAN_TURNS):
    """The demonstrator of ``robot.task`` (scanning expert on Memory tasks, BabyAI bot otherwise)."""
    if is_memory_task(robot.task):
        return ScanningMemoryExpert(robot, scan_turns)
    return make_expert(robot)


def rollout(robot: SimRobot, expert, seed: int, policy=None, max_steps: int | None = None) -> Episode:
    """One episode; actions are the EXPERT's labels, taken by ``policy`` if given (DAgger).

    ``policy`` is a callable ``(frame, instruction, t) -> int`` or None (expert drives). The
    episode carries the task's privileged auxiliary labels (``kv_vla_ros.sim.minigrid.memory``): on Memory
    tasks the cue's type on every step from the first frame that showed the cue on.
    """
    frame, instruction = robot.reset(seed)
    frames, labels = [], []
    aux: dict[str, list[int]] = {name: [] for name in aux_targets(robot.task)}
    seen_cue = False
    limit = min(max_steps, robot.max_steps) if max_steps else robot.max_steps
    while not robot.done and len(frames) < limit:
        label = expert.act()
        if aux:
            visible = cue_visible(robot.env)
            seen_cue = seen_cue or visible
            for name, value in aux_labels(robot, seen_cue, visible).items():
                aux[name].append(value)
        frames.append(frame)
        labels.append(label)
        taken = label if policy is None else int(policy(frame, instruction, len(frames) - 1))
        frame = robot.step(taken).frame
    return Episode(task=robot.task, seed=int(seed), instruction=instruction,
                   frames=np.stack(frames).astype(np.uint8), actions=np.asarray(labels, dtype=np.int64),
                   success=robot.success, aux={k: np.asarray(v, dtype=np.int64) for k, v in aux.items()})


def demonstrations(task: str, n: int, offset: int = 0, scan_turns: int = DEFAULT_SCAN_TURNS,
                   cache_dir: str | Path | None = None) -> list[Episode]:
    """``n`` successful expert episodes on train seeds ``[offset, offset+n)`` (cached as .npz)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{task}-n{n}-o{offset}-scan{scan_turns}-aux.npz"
        if path.is_file():
            episodes = load_episodes(path)
            missing = set(aux_targets(task)) - (set(episodes[0].aux) if episodes else set())
            if missing:  # saved before these targets existed: label by replay, save again
                robot = SimRobot(task)
                for ep in episodes:
                    ep.aux.update({k: v for k, v in relabel(robot, ep).items() if k in missing})
                robot.close()
                save_episodes(path, episodes)
            return episodes
    robot = SimRobot(task)
    expert = expert_for(robot, scan_turns)
    episodes = [rollout(robot, expert, s) for s in train_seeds(n, offset)]
    robot.close()
    episodes = [e for e in episodes if e.success]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_episodes(path, episodes)
    return episodes


@dataclass
class Batch:
    """prefix (B, P) int64; frames (B, T, H, W, 3) uint8; actions (B, T, A) int64; mask (B, T) bool;
    aux: target name -> (B, T) int64 labels, -1 where a step has none (padding included)."""

    prefix: torch.Tensor
    frames: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    aux: dict[str, torch.Tensor]

    def rows(self, rows: list[int]) -> "Batch":
        """The episodes ``rows`` of the batch (a data-parallel worker's share)."""
        index = torch.tensor(rows, dtype=torch.long)
        return Batch(self.prefix[index], self.frames[index], self.actions[index], self.mask[index],
                     {k: v[index] for k, v in self.aux.items()})


def check_aux_labels(episodes: list[Episode], targets: dict[str, int]) -> None:
    """Every episode of a task that provides a target (``aux_targets``) must carry its labels, in
    range: a dataset written before the labels existed must be regenerated, not trained on."""
    if not targets:  # no auxiliary loss (e.g. episodes read from bags, whose task is no simulator's)
        return
    for i, ep in enumerate(episodes):
        for name in aux_targets(ep.task):
            if name not in targets:
                continue
            labels = ep.aux.get(name)
            if labels is None:
                raise ValueError(f"aux[{name!r}]: episode {i} ({ep.task}, seed {ep.seed}) has no labels for this "
                                 f"target; regenerate its demonstrations")
            if labels.size and (labels.max() >= targets[name] or labels.min() < -1):
                raise ValueError(f"aux[{name!r}]: labels of episode {i} must lie in [-1, {targets[name]})")


class EpisodeSampler:
    """Random batches under a token budget; episodes of similar length go together (less padding).

    Episodes are pre-encoded once (instruction ids, action tokens) and frames kept as uint8.
    """

    def __init__(self, model, episodes: list[Episode], batch_tokens: int, seed: int = 0,
                 aux: dict[str, int] | None = None):
        if not episodes:
            raise ValueError("episodes: the training set is empty")
        self.batch_tokens = batch_tokens
        self.rng = np.random.default_rng(seed)
        self.aux = dict(aux or {})
        self.items = []
        self.step_tokens = model.config.tokens_per_step
        self.prefix_tokens = model.config.max_instruction_tokens
        self.add(model, episodes)

    def add(self, model, episodes: list[Episode]) -> None:
        check_aux_labels(episodes, self.aux)
        for ep in episodes:
            aux = {name: ep.aux.get(name, np.full(len(ep), -1, dtype=np.int64)) for name in self.aux}
            self.items.append((model.text_tokenizer.encode(ep.instruction), ep.frames,
                               model.action_tokenizer.encode(ep.actions), aux))
        self.lengths = np.array([len(it[1]) for it in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def sample(self) -> Batch:
        # Anchor on a random episode, then fill with the episodes closest in length.
        anchor = int(self.rng.integers(len(self.items)))
        t_anchor = self.lengths[anchor]
        near = np.argsort(np.abs(self.lengths - t_anchor) + self.rng.random(len(self.items)) * 2.0)
        chosen, t_max = [], 0
        for i in near:
            t = max(t_max, int(self.lengths[i]))
            if chosen and (len(chosen) + 1) * (self.prefix_tokens + t * self.step_tokens) > self.batch_tokens:
                break
            chosen.append(int(i))
            t_max = t
        return self.collate([self.items[i] for i in chosen])

    @staticmethod
    def collate(items) -> Batch:
        b, t = len(items), max(len(it[1]) for it in items)
        h, w = items[0][1].shape[1:3]
        a = items[0][2].shape[1]
        frames = np.zeros((b, t, h, w, 3), dtype=np.uint8)
        actions = np.zeros((b, t, a), dtype=np.int64)
        mask = np.zeros((b, t), dtype=bool)
        aux = {name: np.full((b, t), -1, dtype=np.int64) for name in items[0][3]}
        for i, (_, f, act, labels) in enumerate(items):
            frames[i, : len(f)], actions[i, : len(f)], mask[i, : len(f)] = f, act, True
            for name, values in labels.items():
                aux[name][i, : len(f)] = values
        prefix = np.stack([it[0] for it in items])
        return Batch(torch.from_numpy(prefix), torch.from_numpy(frames), torch.from_numpy(actions),
                     torch.from_numpy(mask), {k: torch.from_numpy(v) for k, v in aux.items()})


__all__ = ["check_aux_labels", "ScanningMemoryExpert", "expert_for", "rollout", "demonstrations", "EpisodeSampler",
           "Batch",
           "DEFAULT_SCAN_TURNS"]
