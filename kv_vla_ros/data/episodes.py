"""A bag as a stream of episodes: instruction, frames (in bag time order) and the recorded actions
aligned to the frames they answer. Numpy + rosbags only.

Episode boundaries: every message on the instruction topic starts a new episode (the simulator
publishes one per episode, even when the text repeats); with ``reset_topic`` a message there ends
the episode instead, and the next frame starts one with the latest instruction.

Cameras and state: the first image topic drives the steps; every further camera (``extra_images``)
and the robot state (``state``: JointState or Float32MultiArray) contribute their newest message
at or before that frame, or, when one stamped with the frame's header stamp arrives after the
frame but before the next one (a recording over DDS receives two topics in either order), that
one; a frame for which one of them has none is skipped and counted (``frames_missing_inputs``),
as the node stops on a missing input.

Frames: a frame whose header stamp equals the previous frame's (a simulator re-sending its view
while it waits for an action) is the same observation and is skipped, as the policy node does.

Recorded actions -> frames: an action labelled ``frame_stamp=`` (the policy node's and
``bag generate``'s convention) belongs to the frame with that header stamp; an unlabelled action
belongs to the newest frame before it that has none yet. Stop commands (empty arrays) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from kv_vla_ros.data.bagio import BagReader
from kv_vla_ros.data.errors import BagError
from kv_vla_ros.data.messages import (FLOAT32_ARRAY, IMAGE_TYPES, STATE_TYPES, STRING, action_source_stamp_ns,
                                      action_vector, frame_to_rgb, header_stamp_ns, state_vector)


@dataclass
class BagTopics:
    """Which topics hold what. ``action`` None: the bag has no recorded actions to compare with."""

    image: str = "/image"
    instruction: str = "/instruction"
    action: str | None = "/action"
    reset: str | None = None
    extra_images: tuple[str, ...] = ()
    state: str | None = None


@dataclass
class BagFrame:
    rgb: np.ndarray
    bag_ns: int
    stamp_ns: int | None  # header stamp (None or 0: unknown)
    cameras: list[np.ndarray] | None = None  # every camera's frame (first: ``rgb``) with extra_images
    state: np.ndarray | None = None

    @property
    def images(self):
        """What a policy's step takes: one frame, or the list of cameras."""
        return self.cameras if self.cameras is not None else self.rgb


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
    """Message type per role; `BagError` naming the first missing or mistyped topic."""
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


def _bag_frame(bag: BagReader, topics: BagTopics, types: dict, extras: dict, image_size: int | None,
               frame: _PendingFrame) -> BagFrame:
    """A complete pending frame decoded: its image, further cameras and state."""
    rgb = frame_to_rgb(frame.msg, types["image"], image_size, f"bag {bag.path}: {topics.image} message #{frame.number}")
    cameras = [rgb] + [frame_to_rgb(frame.inputs[t], types[role], image_size, f"bag {bag.path}: {t}")
                       for t, role in extras.items()] if extras else None
    state = state_vector(frame.inputs[topics.state], types["state"]) if topics.state else None
    return BagFrame(rgb, frame.bag_ns, frame.stamp, cameras, state)


def iter_episode_events(bag: BagReader, topics: BagTopics, image_size: int | None,
                        counters: dict | None = None) -> Iterator[tuple]:
    """Yields ``("start", instruction)``, ``("frame", BagFrame)`` and ``("end", EpisodeActions)``.

    ``counters`` (optional) receives ``frames_without_instruction`` and ``repeated_frames``.
    A frame is handed out once the next message on the image topic (or an episode boundary) is read:
    a further camera or state message received after it but stamped with its header stamp (two
    topics over DDS arrive in either order) is then its input, not the next frame's.
    """
    types = check_topics(bag, topics)
    counters = counters if counters is not None else {}
    for name in ("frames_without_instruction", "repeated_frames", "frames_missing_inputs"):
        counters.setdefault(name, 0)
    extras = {topic: f"camera{i + 1}" for i, topic in enumerate(topics.extra_images)}
    inputs = [t for t in (*extras, topics.state) if t]
    wanted = [t for t in (topics.image, topics.instruction, topics.action, topics.reset, *inputs) if t]
    latest: dict[str, object] = {}  # newest raw message per extra camera / state topic
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
            latest[topic] = msg
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


__all__ = ["BagTopics", "BagFrame", "EpisodeActions", "check_topics", "iter_episode_events"]
