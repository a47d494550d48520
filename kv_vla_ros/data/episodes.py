"""A bag as a stream of episodes: instruction, frames (in bag time order) and the recorded actions
aligned to the frames they answer. Numpy + rosbags only.

`iter_episode_events` reads a lockstep bag (`reads_lockstep`: the package's own, or kv_vla_node's
labelled output) by the rules below, frame by frame, exactly as before recordings were resampled;
any other recording goes to ``kv_vla_ros.data.recording`` (the control-rate rule of
``kv_vla_ros.data.resample``). The rules of a lockstep bag:

Episode boundaries: every message on the instruction topic starts a new episode (the simulator
publishes one per episode, even when the text repeats); with ``reset_topic`` a message there ends
the episode instead, and the next frame starts one with the latest instruction.

Cameras and state: the first image topic drives the steps; every further camera (``extra_images``)
and the robot state (``state``: JointState or Float32MultiArray) contribute the message whose
header stamp is closest to the frame's within ``camera_sync_slop_s`` (an approximate-time rule,
as kv_vla_node's ``camera_sync_slop_s``) among their last 16 messages up to the next frame (a
recording over DDS receives two topics in either order, and a camera's next frame may arrive
before the first camera's frame of the same stamp); without stamps (or none within the slop)
their newest message at or before that frame, or one stamped with the frame's header stamp that
arrives after it; a frame for which one of them has none is skipped and counted
(``frames_missing_inputs``), as the node stops on a missing input.

Frames: a frame whose header stamp equals the previous frame's (a simulator re-sending its view
while it waits for an action) is the same observation and is skipped, as the policy node does.

Recorded actions -> frames: an action labelled ``frame_stamp=`` (the policy node's and
``bag generate``'s convention) belongs to the frame with that header stamp; an unlabelled action
belongs to the newest frame before it that has none yet. Stop commands (empty arrays) are skipped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from kv_vla_ros.data.bagio import BagReader
from kv_vla_ros.data.errors import BagError
from kv_vla_ros.data.commands import STATE_TYPES, state_names, state_vector
from kv_vla_ros.data.recording import BagFrame, iter_resampled_events, recording_types
from kv_vla_ros.data.messages import (FLOAT32_ARRAY, IMAGE_TYPES, STRING, action_source_stamp_ns, action_vector,
                                      frame_to_rgb, header_stamp_ns)


@dataclass
class BagTopics:
    """Which topics hold what. ``action`` None: the bag has no recorded actions to compare with."""

    image: str = "/image"
    instruction: str = "/instruction"
    action: str | None = "/action"
    reset: str | None = None
    extra_images: tuple[str, ...] = ()
    state: str | None = None
    camera_sync_slop_s: float = 0.05  # pairing by header stamp (0: arrival order, as before)
    extra_actions: tuple[str, ...] = ()  # further command topics, concatenated after ``action`` in this order
    instruction_text: str | None = None  # every episode's instruction when the bag has no instruction topic
    control_rate_hz: float | None = None  # given by the user (--control-rate-hz)
    default_rate_hz: float | None = None  # the checkpoint's trained rate (used when none is given)
    state_names: tuple[str, ...] | None = None  # the checkpoint's state joints: JointState read by name
    max_age_s: float | None = None  # oldest camera frame / state a tick takes (None: resample.AGE_FACTOR rule)
    gap_periods: float = 5.0  # a first-camera gap of more control periods than this splits an episode

    @property
    def action_topics(self) -> tuple[str, ...]:
        return (self.action, *self.extra_actions) if self.action else ()


@dataclass
class EpisodeActions:
    """Collects one episode's frames and recorded actions; `aligned()` pairs them."""

    frames: list[tuple[int, int | None]] = field(default_factory=list)  # (bag_ns, stamp_ns)
    actions: list[tuple[int, int | None, np.ndarray]] = field(default_factory=list)

    def aligned(self) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = [None] * len(self.frames)
        by_stamp = {stamp: i for i, (_, stamp) in enumerate(self.frames) if stamp}
        for bag_ns, source, vec in self.actions:
            if source is not None and source in by_stamp:
                i = by_stamp[source]
            elif source is None:
                i = _newest_frame_before(self.frames, bag_ns)
            else:
                continue  # labelled with a frame of another episode (or a dropped frame)
            if i is not None and out[i] is None:  # repeats of a held action keep the first
                out[i] = vec
        return out


def _newest_frame_before(frames: list[tuple[int, int | None]], bag_ns: int) -> int | None:
    best = None
    for i, (frame_ns, _) in enumerate(frames):
        if frame_ns <= bag_ns:
            best = i
        else:
            break
    return best


def check_topics(bag: BagReader, topics: BagTopics) -> dict[str, str]:
    """Message type per role (lockstep) or per topic (a robot's recording); `BagError` naming the
    first missing or mistyped topic."""
    if not reads_lockstep(bag, topics):
        return recording_types(bag, topics)
    return _lockstep_types(bag, topics)


def _lockstep_types(bag: BagReader, topics: BagTopics) -> dict[str, str]:
    types = {"image": bag.require_topic(topics.image, IMAGE_TYPES, "image")}
    if topics.reset:
        types["reset"] = bag.require_topic(topics.reset, None, "reset")
    for i, topic in enumerate(topics.extra_images):
        types[f"camera{i + 1}"] = bag.require_topic(topic, IMAGE_TYPES, "image")
    if topics.state:
        types["state"] = bag.require_topic(topics.state, STATE_TYPES, "state")
    types["instruction"] = bag.require_topic(topics.instruction, (STRING,), "instruction")
    if topics.action:
        types["action"] = bag.require_topic(topics.action, (FLOAT32_ARRAY,), "action")
    return types


@dataclass
class _PendingFrame:
    """A frame read but not yet handed out: an input with its header stamp may still come."""

    msg: object
    bag_ns: int
    stamp: int | None
    number: int
    inputs: dict  # input topic -> its raw message (newest so far, or the one with this stamp)


def paired_inputs(recent: dict[str, deque], stamp_ns: int | None, slop_s: float) -> dict:
    """Per input topic, its message whose header stamp is closest to ``stamp_ns`` within
    ``slop_s`` (topics without one, or without stamps, are left out: the caller's fallback)."""
    if not stamp_ns or slop_s <= 0:
        return {}
    from kv_vla_ros.data.resample import closest_within

    out = {}
    for topic, messages in recent.items():
        messages = list(messages)
        i = closest_within([s for s, _ in messages], stamp_ns, int(round(slop_s * 1e9)))
        if i is not None:
            out[topic] = messages[i][1]
    return out


def _bag_frame(bag: BagReader, topics: BagTopics, types: dict, extras: dict, image_size: int | None,
               frame: _PendingFrame) -> BagFrame:
    """A complete pending frame decoded: its image, further cameras and state."""
    rgb = frame_to_rgb(frame.msg, types["image"], image_size, f"bag {bag.path}: {topics.image} message #{frame.number}")
    cameras = [rgb] + [frame_to_rgb(frame.inputs[t], types[role], image_size, f"bag {bag.path}: {t}")
                       for t, role in extras.items()] if extras else None
    state = state_vector(frame.inputs[topics.state], types["state"], list(topics.state_names or []) or None,
                         f"bag {bag.path}: {topics.state}") if topics.state else None
    return BagFrame(rgb, frame.bag_ns, frame.stamp, cameras, state)


def reads_lockstep(bag: BagReader, topics: BagTopics) -> bool:
    """Is this a lockstep bag (the package's own, or kv_vla_node's recorded output): one command
    topic of ``Float32MultiArray`` whose actions name the frame they answer (``frame_stamp=``), and
    an instruction topic? Then each labelled frame is a tick, exactly as before the resampling
    rule existed; a bag without actions is read so unless a control rate is given. Anything else is
    a robot's recording, read by `kv_vla_ros.data.recording` at the control rate."""
    if topics.extra_actions or topics.instruction not in bag.topics:
        return False
    if not topics.action:
        return topics.control_rate_hz is None
    if bag.topics.get(topics.action, (None,))[0] != FLOAT32_ARRAY:
        return False
    for _, _, msg in bag.messages([topics.action]):
        if action_vector(msg) is not None:
            return action_source_stamp_ns(msg) is not None
    return False


def iter_episode_events(bag: BagReader, topics: BagTopics, image_size: int | None, counters: dict | None = None,
                        info: dict | None = None) -> Iterator[tuple]:
    """Yields ``("start", instruction)``, ``("frame", BagFrame)`` and ``("end", actions)`` (an object
    whose ``aligned()`` gives each frame's recorded action): a lockstep bag (`reads_lockstep`) frame
    by frame, any other recording at the control rate (`kv_vla_ros.data.recording`). ``info``
    receives ``control_rate_hz``, ``state_names``, ``action_names`` and ``lockstep``."""
    info = info if info is not None else {}
    if reads_lockstep(bag, topics):
        info["lockstep"] = True
        yield from iter_lockstep_events(bag, topics, image_size, counters, info)
    else:
        info["lockstep"] = False
        yield from iter_resampled_events(bag, topics, image_size, counters, info)


def iter_lockstep_events(bag: BagReader, topics: BagTopics, image_size: int | None,
                         counters: dict | None = None, info: dict | None = None) -> Iterator[tuple]:
    """Yields ``("start", instruction)``, ``("frame", BagFrame)`` and ``("end", EpisodeActions)``.

    ``counters`` (optional) receives ``frames_without_instruction`` and ``repeated_frames``.
    A frame is handed out once the next message on the image topic (or an episode boundary) is read:
    a further camera or state message received after it but stamped with its header stamp (two
    topics over DDS arrive in either order) is then its input, not the next frame's.
    """
    types = _lockstep_types(bag, topics)
    counters = counters if counters is not None else {}
    info = info if info is not None else {}
    info.update(control_rate_hz=topics.control_rate_hz or _frame_rate(bag, topics.image), action_names=None,
                state_names=list(topics.state_names) if topics.state_names else None)
    for name in ("frames_without_instruction", "repeated_frames", "frames_missing_inputs"):
        counters.setdefault(name, 0)
    extras = {topic: f"camera{i + 1}" for i, topic in enumerate(topics.extra_images)}
    inputs = [t for t in (*extras, topics.state) if t]
    wanted = [t for t in (topics.image, topics.instruction, topics.action, topics.reset, *inputs) if t]
    latest: dict[str, object] = {}  # newest raw message per extra camera / state topic
    recent: dict[str, deque] = {t: deque(maxlen=16) for t in inputs}  # (header stamp, message), for pairing
    instruction: str | None = None
    episode: EpisodeActions | None = None
    pending: _PendingFrame | None = None
    last_stamp: int | None = None
    n_frames = 0

    def flush() -> Iterator[tuple]:
        nonlocal pending
        frame, pending = pending, None
        if frame is None:
            return
        frame.inputs.update(paired_inputs(recent, frame.stamp, topics.camera_sync_slop_s))
        if len(frame.inputs) < len(inputs):
            counters["frames_missing_inputs"] += 1
            return
        episode.frames.append((frame.bag_ns, frame.stamp))
        yield "frame", _bag_frame(bag, topics, types, extras, image_size, frame)

    for topic, bag_ns, msg in bag.messages(wanted):
        if topic == topics.image:
            n_frames += 1
            stamp = header_stamp_ns(msg)
            if episode is None:
                if instruction is None:
                    counters["frames_without_instruction"] += 1
                    continue
                episode, last_stamp = EpisodeActions(), None
                yield "start", instruction
            if stamp and stamp == last_stamp:
                counters["repeated_frames"] += 1
                continue
            last_stamp = stamp
            yield from flush()
            pending = _PendingFrame(msg, bag_ns, stamp, n_frames, {t: latest[t] for t in inputs if t in latest})
        elif topic in inputs:
            if topic == topics.state and info.get("state_names") is None:
                info["state_names"] = state_names(msg, types["state"])
            latest[topic] = msg
            recent[topic].append((header_stamp_ns(msg), msg))
            if pending is not None and pending.stamp and header_stamp_ns(msg) == pending.stamp:
                pending.inputs[topic] = msg
        elif topic == topics.instruction:
            text = str(msg.data)
            if not text.strip():
                continue  # an empty instruction carries no task: keep the current one
            instruction = text
            if not topics.reset:
                if episode is not None:
                    yield from flush()
                    yield "end", episode
                episode = None  # the next frame opens the episode of this instruction
        elif topic == topics.reset:
            if episode is not None:
                yield from flush()
                yield "end", episode
            episode = None
        elif topic == topics.action and episode is not None:
            vec = action_vector(msg)
            if vec is not None:
                episode.actions.append((bag_ns, action_source_stamp_ns(msg), vec))
    if episode is not None:
        yield from flush()
        yield "end", episode
    if n_frames == 0:
        raise BagError(f"bag {bag.path}: image topic {topics.image} has no readable frames")


def _frame_rate(bag: BagReader, topic: str) -> float | None:
    """The first camera's measured rate from its bag times (a lockstep bag steps once per frame)."""
    from kv_vla_ros.data.resample import measured_rate_hz

    return measured_rate_hz([stamp for _, stamp, _ in bag.raw_messages([topic])])


__all__ = ["BagTopics", "BagFrame", "EpisodeActions", "check_topics", "iter_episode_events", "iter_lockstep_events",
           "paired_inputs", "reads_lockstep"]
