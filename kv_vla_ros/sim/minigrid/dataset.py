"""Seeded expert-demonstration datasets for behaviour cloning.

Train and evaluation seeds come from disjoint integer ranges so a policy is never scored
on a level layout it was trained on. Datasets are stored as plain ``.npz`` (no pickle):
all episodes' frames are concatenated along time and split again by ``lengths``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from kv_vla_ros.progress import progress_bar

from .env import NUM_ACTIONS, SimRobot, normalize_task
from .experts import make_expert

TRAIN_SEED_RANGE = (0, 1_000_000)            # [start, stop)
EVAL_SEED_RANGE = (1_000_000, 2_000_000)     # [start, stop)
_FORMAT_VERSION = 1
_AUX_PREFIX = "aux_"  # optional keys: auxiliary labels (files without them still load)
_NPZ_KEYS = ("format_version", "tasks", "seeds", "instructions", "success", "lengths", "frames", "actions")


@dataclass(eq=False)  # ndarray fields: element-wise == would be ambiguous
class Episode:
    """One expert demonstration.

    frames: uint8 (T, H, W, 3) -- the RGB frame observed *before* each action.
    actions: int64 (T,) -- the expert action taken after seeing ``frames[t]``.
    success: whether the episode ended with positive reward.
    aux: privileged per-step auxiliary labels, name -> int64 (T,) class ids, -1 where the step
        has no label (its mask is ``labels >= 0``); see ``kv_vla_ros.sim.minigrid.memory.aux_targets``.
    """

    task: str
    seed: int
    instruction: str
    frames: np.ndarray
    actions: np.ndarray
    success: bool
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def _validate_episode(ep: Episode, where: str) -> None:
    if not isinstance(ep, Episode):
        raise ValueError(f"{where} must be an Episode, got {type(ep).__name__}")
    f, a = ep.frames, ep.actions
    if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"{where}.frames must be uint8 (T, H, W, 3), got {getattr(f, 'dtype', type(f))} "
                         f"{getattr(f, 'shape', '')}")
    if not isinstance(a, np.ndarray) or a.dtype != np.int64 or a.ndim != 1:
        raise ValueError(f"{where}.actions must be int64 (T,), got {getattr(a, 'dtype', type(a))} "
                         f"{getattr(a, 'shape', '')}")
    if a.shape[0] != f.shape[0]:
        raise ValueError(f"{where}.actions has length {a.shape[0]} but frames has {f.shape[0]}")
    if a.size and (a.min() < 0 or a.max() >= NUM_ACTIONS):
        raise ValueError(f"{where}.actions must lie in [0, {NUM_ACTIONS})")
    for name, labels in ep.aux.items():
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != a.shape:
            raise ValueError(f"{where}.aux[{name!r}] must be int64 {a.shape} (-1 = no label), got "
                             f"{getattr(labels, 'dtype', type(labels))} {getattr(labels, 'shape', '')}")


# -- generation ------------------------------------------------------------------------------
def generate_episodes(
    task: str,
    seeds: Iterable[int],
    frame_size: int = 56,
    progress: bool = False,
    look_around: bool = False,
) -> list[Episode]:
    """Roll out the expert once per seed; returns one :class:`Episode` per seed, in order.

    ``look_around`` (Memory tasks only) makes the expert walk into the start room and turn
    a full circle before heading for the goal (longer, more memory-demanding episodes).

    Episodes that fail (expert timed out) are kept with ``success=False`` so callers can
    measure the expert; filter on ``ep.success`` before training if needed.
    """
    robot = SimRobot(task, frame_size=frame_size)
    expert = make_expert(robot, look_around=look_around)
    seeds = list(seeds)
    episodes: list[Episode] = []
    for seed in progress_bar(seeds, desc=f"expert {robot.task}", disable=not progress):
        frame, instruction = robot.reset(seed)
        frames, actions = [], []
        while not robot.done:
            action = expert.act()
            frames.append(frame)
            actions.append(action)
            frame = robot.step(action).frame
        episodes.append(
            Episode(
                task=robot.task,
                seed=int(seed),
                instruction=instruction,
                frames=np.stack(frames).astype(np.uint8, copy=False),
                actions=np.asarray(actions, dtype=np.int64),
                success=robot.success,
            )
        )
    robot.close()
    return episodes


# -- seed splits -----------------------------------------------------------------------------
def _seed_block(n: int, offset: int, rng: tuple[int, int], name: str) -> list[int]:
    for field_name, v in (("n", n), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{field_name} must be a non-negative int, got {v!r}")
    start, stop = rng[0] + int(offset), rng[0] + int(offset) + int(n)
    if stop > rng[1]:
        raise ValueError(f"offset + n = {offset + n} exceeds the {name} seed range size {rng[1] - rng[0]}")
    return list(range(start, stop))


def train_seeds(n: int, offset: int = 0) -> list[int]:
    """``n`` consecutive training seeds from [0, 1_000_000), starting at ``offset``."""
    return _seed_block(n, offset, TRAIN_SEED_RANGE, "train")


def eval_seeds(n: int, offset: int = 0) -> list[int]:
    """``n`` consecutive evaluation seeds from [1_000_000, 2_000_000); never train seeds."""
    return _seed_block(n, offset, EVAL_SEED_RANGE, "eval")


SPLITS = ("eval", "train")


def split_seeds(split: str, n: int, offset: int = 0) -> list[int]:
    """``n`` seeds of ``split`` ("eval": held out, "train": for demonstrations) from ``offset``."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return (eval_seeds if split == "eval" else train_seeds)(n, offset)


def check_disjoint(a: Iterable[int], b: Iterable[int]) -> None:
    """Raise ValueError if the two seed collections share any seed."""
    overlap = sorted(set(int(s) for s in a) & set(int(s) for s in b))
    if overlap:
        raise ValueError(f"seed sets overlap in {len(overlap)} seeds, e.g. {overlap[:5]}")


# -- persistence -----------------------------------------------------------------------------
def save_episodes(path: str | os.PathLike, episodes: Sequence[Episode], compress: bool = True) -> None:
    """Write episodes to a ``.npz`` (numpy appends the suffix if missing). No pickle is used:
    strings go in fixed-width unicode arrays, frames of all episodes are concatenated."""
    episodes = list(episodes)
    for i, ep in enumerate(episodes):
        _validate_episode(ep, f"episodes[{i}]")
    if episodes:
        hw = episodes[0].frames.shape[1:3]
        for i, ep in enumerate(episodes):
            if ep.frames.shape[1:3] != hw:
                raise ValueError(f"episodes[{i}].frames is {ep.frames.shape[1:3]}, expected {hw} like episodes[0]")
        frames = np.concatenate([ep.frames for ep in episodes], axis=0)
        actions = np.concatenate([ep.actions for ep in episodes], axis=0)
    else:
        frames = np.zeros((0, 0, 0, 3), dtype=np.uint8)
        actions = np.zeros((0,), dtype=np.int64)
    arrays = dict(
        format_version=np.asarray(_FORMAT_VERSION, dtype=np.int64),
        tasks=np.asarray([ep.task for ep in episodes], dtype=np.str_),
        seeds=np.asarray([ep.seed for ep in episodes], dtype=np.int64),
        instructions=np.asarray([ep.instruction for ep in episodes], dtype=np.str_),
        success=np.asarray([bool(ep.success) for ep in episodes], dtype=bool),
        lengths=np.asarray([len(ep) for ep in episodes], dtype=np.int64),
        frames=frames,
        actions=actions,
    )
    # Auxiliary labels: one key per target, concatenated like the actions; an episode without a
    # target stores -1 (no label) on every step of it.
    for name in sorted({k for ep in episodes for k in ep.aux}):
        arrays[_AUX_PREFIX + name] = np.concatenate(
            [ep.aux.get(name, np.full(len(ep), -1, dtype=np.int64)) for ep in episodes]) if episodes else actions
    (np.savez_compressed if compress else np.savez)(path, **arrays)


def load_episodes(path: str | os.PathLike) -> list[Episode]:
    """Read a file written by :func:`save_episodes`; raises ValueError naming file and key."""
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as data:
        for key in _NPZ_KEYS:
            if key not in data.files:
                raise ValueError(f"{path}: missing key {key!r}")
        arr = {key: data[key] for key in _NPZ_KEYS}
        aux_all = {key[len(_AUX_PREFIX):]: data[key] for key in data.files if key.startswith(_AUX_PREFIX)}
    if int(arr["format_version"]) != _FORMAT_VERSION:
        raise ValueError(f"{path}: key 'format_version' is {int(arr['format_version'])}, expected {_FORMAT_VERSION}")
    n = arr["lengths"].shape[0]
    for key in ("tasks", "seeds", "instructions", "success"):
        if arr[key].shape != (n,):
            raise ValueError(f"{path}: key {key!r} has shape {arr[key].shape}, expected ({n},)")
    for key, kind in (("tasks", "U"), ("instructions", "U"), ("seeds", "i"), ("lengths", "i"), ("actions", "i")):
        if arr[key].dtype.kind != kind:
            raise ValueError(f"{path}: key {key!r} has dtype {arr[key].dtype}, expected kind {kind!r}")
    frames, actions, lengths = arr["frames"], arr["actions"], arr["lengths"]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: key 'frames' must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    total = int(lengths.sum()) if n else 0
    if (lengths < 0).any() or frames.shape[0] != total or actions.shape != (total,):
        raise ValueError(
            f"{path}: key 'lengths' sums to {total} but 'frames' has {frames.shape[0]} and 'actions' "
            f"{actions.shape[0]} rows"
        )
    for name, labels in aux_all.items():
        if labels.dtype.kind != "i" or labels.shape != (total,):
            raise ValueError(f"{path}: key {_AUX_PREFIX + name!r} must be integer ({total},), got {labels.dtype} "
                             f"{labels.shape}")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    episodes = []
    for i in range(n):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        try:
            task = normalize_task(str(arr["tasks"][i]))
        except ValueError as exc:
            raise ValueError(f"{path}: key 'tasks'[{i}]: {exc}") from None
        ep = Episode(
            task=task,
            seed=int(arr["seeds"][i]),
            instruction=str(arr["instructions"][i]),
            frames=frames[lo:hi],
            actions=actions[lo:hi].astype(np.int64, copy=False),
            success=bool(arr["success"][i]),
            aux={name: labels[lo:hi].astype(np.int64, copy=False) for name, labels in aux_all.items()},
        )
        _validate_episode(ep, f"{path}: episode {i}")
        episodes.append(ep)
    return episodes
