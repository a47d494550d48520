"""Training episodes from recorded rosbags (sqlite3 or mcap): what a robot records, nothing else.

The bag reading is ``kv_vla_ros.data`` (the one bag reader every tool uses); this module only
collects its episodes into arrays a trainer takes, and refuses a bad bag in one line while the
other bags still train.

Rules (all from ``kv_vla_ros.data.episodes``, restated here because training depends on them):

- **Episode boundaries**: each message on the instruction topic starts an episode (a simulator or
  an operator publishes one per episode, even when the text repeats). Fallback: with a reset topic
  (``--reset-topic``) a message there ends the episode instead and the next frame starts one with
  the latest instruction; frames before any instruction are skipped (counted).
- **Steps and alignment**: the first camera topic drives the control steps, one step per frame
  (a frame whose header stamp repeats the previous one is the same observation and is skipped).
  Every other camera and the joint state contribute their newest message received at or before
  that frame; a frame for which one has none yet is skipped. Recorded actions go to the frame
  whose header stamp their ``frame_stamp=`` label names (the policy node's and ``bag generate``'s
  convention), an unlabelled action to the newest frame before it that has none yet.
- **A robot's own recording** (any bag that is not lockstep, ``kv_vla_ros.data.episodes.reads_lockstep``):
  resampled to the control rate by ``kv_vla_ros.data.resample``'s rule (``docs/bags.md``); the
  first bag's state joint names and control rate then hold for the others (joints read by name).
- **Control rate** (lockstep bags): with ``control_rate_hz`` the steps are resampled by header stamp: a frame is
  kept when its stamp is at least one control period after the last kept one (a camera faster
  than the controller gives one step per period; the action of the kept frame is the command).
- **Missing actions**: a frame with no recorded action repeats the previous step's action (the
  robot held its last command); frames before the first action are dropped, and an episode with
  fewer than ``min_steps`` steps is dropped (counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from kv_vla_ros.progress import progress_bar

from kv_vla_ros.data.bagio import BagReader
from kv_vla_ros.data.episodes import BagTopics, iter_episode_events
from kv_vla_ros.data.errors import BagError


@dataclass
class RecordedEpisode:
    """One demonstration. Shapes: ``frames (T, cameras, H, W, 3)`` uint8, ``states (T, state_dim)``
    float32 or None, ``actions (T, action_dim)`` float32; ``source``: bag path and episode index."""

    instruction: str
    frames: np.ndarray
    states: np.ndarray | None
    actions: np.ndarray
    source: str

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class BagDataset:
    """Episodes of several bags, the bags refused (one line each) and the reader's counters."""

    episodes: list[RecordedEpisode] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # control_rate_hz, state_names, action_names (the first bag's)


def _finish(instruction, frames, states, actions, source, min_steps, counters) -> RecordedEpisode | None:
    keep, vecs, last = [], [], None
    for i, vec in enumerate(actions):
        last = vec if vec is not None else last
        if last is not None:
            keep.append(i)
            vecs.append(last)
    if len(keep) < min_steps or len({v.shape for v in vecs}) != 1:
        counters["episodes_dropped"] = counters.get("episodes_dropped", 0) + 1
        return None
    frames = np.stack([np.stack(frames[i]) for i in keep])
    states = np.stack([states[i] for i in keep]).astype(np.float32) if states[0] is not None else None
    return RecordedEpisode(instruction, frames, states, np.stack(vecs).astype(np.float32), source)


def read_bag(path: str | Path, topics: BagTopics, image_size: int | None = None, control_rate_hz: float | None = None,
             min_steps: int = 2, counters: dict | None = None, info: dict | None = None) -> list[RecordedEpisode]:
    """Every episode of one bag; ``BagError`` (naming the bag and topic) for a bag that cannot train."""
    out = list(iter_bag_episodes(path, topics, image_size, control_rate_hz, min_steps, counters, info))
    if not out:
        raise BagError(f"bag {path}: no episode with at least {min_steps} steps and recorded actions on "
                       f"{topics.action}")
    return out


def iter_bag_episodes(path: str | Path, topics: BagTopics, image_size: int | None = None,
                      control_rate_hz: float | None = None, min_steps: int = 2, counters: dict | None = None,
                      info: dict | None = None):
    """The episodes of one bag, one at a time as the bag is read (never the whole bag in memory);
    ``info`` (optional) receives what the reader learnt of the recording (control rate, state and
    action names)."""
    if topics.action is None:
        raise BagError(f"bag {path}: training needs the commanded actions (an action topic)")
    counters = counters if counters is not None else {}
    period = round(1e9 / control_rate_hz) if control_rate_hz else 0
    found = 0
    with BagReader(path) as bag:
        instruction, frames, states, stamps, last_kept = None, [], [], [], None
        for kind, item in iter_episode_events(bag, topics, image_size, counters, info):
            if kind == "start":
                instruction, frames, states, stamps, last_kept = item, [], [], [], None
            elif kind == "frame":
                stamp = item.stamp_ns or item.bag_ns
                if period and last_kept is not None and stamp - last_kept < period:
                    counters["frames_between_control_steps"] = counters.get("frames_between_control_steps", 0) + 1
                    stamps.append(None)  # keeps `aligned()`'s frame indices; dropped below
                    frames.append(None)
                    states.append(None)
                    continue
                last_kept = stamp
                frames.append(item.cameras if item.cameras is not None else [item.rgb])
                states.append(item.state)
                stamps.append(stamp)
            else:  # "end": the recorded actions, aligned to every frame of the episode
                aligned = item.aligned()
                kept = [i for i, s in enumerate(stamps) if s is not None]
                episode = _finish(instruction, [frames[i] for i in kept], [states[i] for i in kept],
                                  [aligned[i] for i in kept], f"{path}#{found}", min_steps, counters)
                if episode is not None:
                    found += 1
                    yield episode


def read_bags(paths: list[Path], topics: BagTopics, image_size: int | None = None,
              control_rate_hz: float | None = None, min_steps: int = 2, progress: bool = True,
              log=print, check=None) -> BagDataset:
    """Episodes of every readable bag; a bad bag is refused in one line (``log``) naming the bag and
    the topic, and the others still load. ``check(path, episodes)`` (optional) raises ``BagError``
    for a bag the trainer cannot take (e.g. continuous actions for a discrete policy): refused the
    same way, before the bags are compared. ``ValueError`` when no bag is usable."""
    data = BagDataset()
    for path in progress_bar(paths, desc="read bags", unit="bag", disable=not progress):
        info: dict = {}
        try:
            episodes = read_bag(path, topics, image_size, control_rate_hz, min_steps, data.counters, info)
            if check is not None:
                check(path, episodes)
        except BagError as exc:
            data.refused.append(str(exc))
            log(f"refused: {exc}")
            continue
        if data.episodes and episode_signature(episodes[0]) != episode_signature(data.episodes[0]):
            line = (f"bag {path}: {topics.image} and the other topics give {episode_signature(episodes[0])}, "
                    f"the earlier bags {episode_signature(data.episodes[0])}")
            data.refused.append(line)
            log(f"refused: {line}")
            continue
        data.episodes.extend(episodes)
        if not data.info:  # the first bag's names and rate hold for the others: joints read by name, same rate
            data.info = info
            topics = replace(topics, state_names=topics.state_names or _tuple(info.get("state_names")),
                             default_rate_hz=topics.default_rate_hz or info.get("control_rate_hz"))
    if not data.episodes:
        raise ValueError(f"--bags: no usable bag among {len(paths)} ({len(data.refused)} refused)")
    return data


def _tuple(names):
    return tuple(names) if names else None


def episode_signature(ep: RecordedEpisode) -> str:
    state = ep.states.shape[1] if ep.states is not None else 0
    return f"{ep.frames.shape[1]} camera(s) of {ep.frames.shape[2]}x{ep.frames.shape[3]}, state {state}, " \
           f"action {ep.actions.shape[1]}"


__all__ = ["BagDataset", "RecordedEpisode", "episode_signature", "iter_bag_episodes", "read_bag",
           "read_bags"]
