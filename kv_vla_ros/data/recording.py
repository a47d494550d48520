"""A robot's own recording read at the control rate: the rule of `kv_vla_ros.data.resample`
applied to a bag, yielding the same events as the package's lockstep reader
(``kv_vla_ros.data.episodes.iter_episode_events``): ``("start", instruction)``, ``("frame", BagFrame)``
per kept tick, ``("end", TickActions)``.

Episodes: each message on the instruction topic starts one (a reset topic ends one); a bag with no
instruction topic takes ``BagTopics.instruction_text`` (``--instruction``) and is one episode; in
every case a gap of more than ``gap_periods`` control periods in the first camera splits it.
A first pass reads the stamps of every topic used (keeping the small messages, not the pixels), so
stamps that go backwards are sorted (and counted) and every tick is planned; a second pass over
the camera topics decodes only the frames the ticks take, each held until its last tick is out (an
hour of 30 Hz camera never sits in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Iterator

import numpy as np

from kv_vla_ros.data.bagio import BagReader
from kv_vla_ros.data.commands import (COMMAND_TYPES, JOINT_STATE, JOINT_TRAJECTORY, STATE_TYPES, command_names,
                                      command_vector, duration_ns, message_time_ns, state_names, state_vector)
from kv_vla_ros.data.errors import BagError
from kv_vla_ros.data.messages import IMAGE_TYPES, STRING, frame_to_rgb
from kv_vla_ros.data.resample import (ResampleRule, answering, measured_rate_hz, median_interval_ns,
                                      newest_at_or_before, split_at_gaps, tick_times, trajectory_point)

COUNTERS = ("ticks", "ticks_dropped_camera_missing", "ticks_dropped_camera_too_old", "ticks_dropped_state_missing",
            "ticks_dropped_state_too_old", "ticks_without_command", "commands_nonfinite", "stamps_backwards",
            "frames_without_instruction", "episodes_split_at_gaps")


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
class TickActions:
    """One episode's recorded command per kept tick (None: no command answered it)."""

    actions: list[np.ndarray | None] = field(default_factory=list)

    def aligned(self) -> list[np.ndarray | None]:
        return list(self.actions)


@dataclass
class Stream:
    """One topic's messages sorted by stamp: ``stamps`` int64 ns, ``msgs``, ``bag_ns``."""

    topic: str
    msgtype: str
    stamps: np.ndarray
    msgs: list
    bag_ns: list[int]
    backwards: int = 0
    bag_timed: bool = False  # no header stamps: timed by the bag's receive times
    positions: list[int] = field(default_factory=list)  # each message's place in the topic's bag order

    @classmethod
    def of(cls, topic: str, msgtype: str, items: list[tuple[int, object]]) -> "Stream":
        stamps = np.array([message_time_ns(m, b) for b, m in items], dtype=np.int64)
        bag_timed = bool(items) and all(int(s) == int(b) for s, (b, _) in zip(stamps, items))
        backwards = int(np.sum(np.diff(stamps) < 0)) if stamps.size > 1 else 0
        order = np.argsort(stamps, kind="stable")
        return cls(topic, msgtype, stamps[order], [items[i][1] for i in order], [items[i][0] for i in order],
                   backwards, bag_timed, order.tolist())

    def clock_offset_ns(self) -> int:
        """Median of receive time - header stamp: ~ the transport latency on one clock; seconds or
        more when the stamps come from another clock (simulated time, a camera's own)."""
        return int(np.median(np.asarray(self.bag_ns, dtype=np.int64) - self.stamps)) if self.msgs else 0


CLOCK_MISMATCH_NS = 1_000_000_000  # header stamps this far from the receive times: another clock


def align_bag_timed(streams: list["Stream"], reference: "Stream") -> int:
    """Streams timed by receive time (no header) compared with a camera stamped on another clock
    (``use_sim_time``, a device clock): shifted onto the camera's clock by its receive-time offset.
    Returns the offset applied (0 when the clocks agree)."""
    offset = reference.clock_offset_ns() if not reference.bag_timed else 0
    if abs(offset) < CLOCK_MISMATCH_NS:
        return 0
    for s in streams:
        if s.bag_timed:
            s.stamps = s.stamps - offset
    return offset


def recording_types(bag: BagReader, topics) -> dict[str, str]:
    """Message type per topic used; ``BagError`` naming the first missing or mistyped one (a
    missing instruction topic is fine with ``instruction_text``)."""
    types = {topics.image: bag.require_topic(topics.image, IMAGE_TYPES, "image")}
    for topic in topics.extra_images:
        types[topic] = bag.require_topic(topic, IMAGE_TYPES, "image")
    if topics.state:
        types[topics.state] = bag.require_topic(topics.state, STATE_TYPES, "state")
    for topic in topics.action_topics:
        types[topic] = bag.require_topic(topic, COMMAND_TYPES, "action")
    if topics.reset:
        types[topics.reset] = bag.require_topic(topics.reset, None, "reset")
    if topics.instruction in bag.topics or not topics.instruction_text:
        try:
            types[topics.instruction] = bag.require_topic(topics.instruction, (STRING,), "instruction")
        except BagError as exc:
            raise BagError(f"{exc}; give the episodes' instruction with --instruction TEXT") from None
    return types


def control_rule(topics, streams: dict[str, Stream]) -> ResampleRule:
    """The rule at ``--control-rate-hz``, else the checkpoint's rate, else the first command
    topic's measured rate (a trajectory's: its points' spacing, a plan covering several ticks),
    else the first camera's."""
    rate = topics.control_rate_hz or topics.default_rate_hz
    if not rate:
        for topic in (*topics.action_topics, topics.image):
            rate = _point_rate(streams[topic]) or measured_rate_hz(streams[topic].stamps)
            if rate:
                break
    if not rate:
        raise BagError(f"control rate: cannot measure one from {topics.image}; give --control-rate-hz")
    return ResampleRule(float(rate), topics.max_age_s, topics.gap_periods)


def _point_rate(stream: Stream) -> float | None:
    """A trajectory topic's rate: 1 / the spacing of the points of its first plan with two."""
    if stream.msgtype != JOINT_TRAJECTORY:
        return None
    for msg in stream.msgs:
        if len(msg.points) >= 2:
            step = duration_ns(msg.points[1].time_from_start) - duration_ns(msg.points[0].time_from_start)
            return 1e9 / step if step > 0 else None
    return None


def _segments(topics, streams: dict[str, Stream], events: list[tuple[int, str, object]], counters: dict):
    """``[(instruction, first-camera indices)]`` by instruction/reset messages (bag time)."""
    cam = streams[topics.image]
    order = sorted(range(len(cam.msgs)), key=lambda i: cam.bag_ns[i])
    fallback = topics.instruction_text if topics.instruction not in streams else None
    segments: list[tuple[str, list[int]]] = []
    instruction, current, k = fallback, None, 0
    for i in order:
        while k < len(events) and events[k][0] <= cam.bag_ns[i]:
            _, kind, value = events[k]
            k += 1
            if kind == "instruction" and str(value).strip():
                instruction, current = str(value), None
            elif kind == "reset":
                current = None
        if instruction is None:
            counters["frames_without_instruction"] += 1
            continue
        if current is None:
            current = (instruction, [])
            segments.append(current)
        current[1].append(i)
    return segments


def iter_resampled_events(bag: BagReader, topics, image_size: int | None, counters: dict | None = None,
                          info: dict | None = None) -> Iterator[tuple]:
    """Yields ``("start", instruction)``, ``("frame", BagFrame)``, ``("end", TickActions)`` per
    episode at the control rate. ``counters`` gets `COUNTERS`; ``info`` gets ``control_rate_hz``,
    ``state_names`` and ``action_names`` (what a checkpoint trained on it records)."""
    types = recording_types(bag, topics)
    counters = counters if counters is not None else {}
    info = info if info is not None else {}
    for name in COUNTERS:
        counters.setdefault(name, 0)
    camera_topics = [topics.image, *topics.extra_images]
    items: dict[str, list] = {t: [] for t in types}
    for topic, bag_ns, msg in bag.messages(list(types)):  # a camera's pixels are dropped: read again below
        items[topic].append((bag_ns, SimpleNamespace(header=msg.header) if topic in camera_topics else msg))
    streams = {t: Stream.of(t, types[t], items[t]) for t in types if t not in (topics.instruction, topics.reset)}
    if topics.instruction in types:
        streams[topics.instruction] = None
    for s in streams.values():
        if s is not None:
            counters["stamps_backwards"] += s.backwards
    events = sorted([(b, "instruction", m.data) for b, m in items.get(topics.instruction, [])]
                    + [(b, "reset", None) for b, _ in items.get(topics.reset, [])], key=lambda e: e[0])
    cams = [streams[t] for t in (topics.image, *topics.extra_images)]
    state = streams.get(topics.state) if topics.state else None
    commands = [streams[t] for t in topics.action_topics]
    offset = align_bag_timed([*commands, *([state] if state else [])], cams[0])
    rule = control_rule(topics, streams)
    period = rule.period_ns
    ages = {id(s): rule.max_age_ns(s.stamps) for s in (*cams, *([state] if state else []), *commands)}
    snames = list(topics.state_names) if topics.state_names else None
    if state is not None and snames is None and state.msgs:
        snames = state_names(state.msgs[0], state.msgtype)
    info.update(control_rate_hz=rule.rate_hz, state_names=snames, clock_offset_s=offset / 1e9,
                action_names=[n for c in commands if c.msgs for n in _names_of(c)] or None)
    plan: list[tuple] = []
    for instruction, frames in _segments(topics, streams, events, counters):
        stamps = np.sort(cams[0].stamps[frames])
        runs = split_at_gaps(stamps, period, rule.gap_periods)
        counters["episodes_split_at_gaps"] += len(runs) - 1
        interval = median_interval_ns(stamps) or 0
        for first, last in runs:
            plan.append(("start", instruction))
            actions = TickActions()
            # up to the last frame and half a camera interval after it (a tick there still has that frame)
            for tick in tick_times(int(stamps[first]), int(stamps[last]) + max(interval // 2 - 1, 0), period):
                counters["ticks"] += 1
                picks = []
                for c, s in enumerate(cams):
                    i, why = newest_at_or_before(s.stamps, int(tick), ages[id(s)])
                    if i is None:
                        break
                    picks.append(i)
                if len(picks) < len(cams):
                    counters[f"ticks_dropped_camera_{why}"] += 1
                    continue
                vec = None
                if state is not None:
                    j, why = newest_at_or_before(state.stamps, int(tick), ages[id(state)])
                    if j is None:
                        counters[f"ticks_dropped_state_{why}"] += 1
                        continue
                    vec = state_vector(state.msgs[j], state.msgtype, snames, f"bag {bag.path}: {state.topic}")
                actions.actions.append(_command_at(commands, int(tick), period, ages, counters, bag.path))
                plan.append(("frame", picks, int(tick), vec))
            plan.append(("end", actions))
    yield from _with_images(bag, cams, plan, image_size)


def _with_images(bag: BagReader, cams: list[Stream], plan: list[tuple], image_size: int | None) -> Iterator[tuple]:
    """The planned events, each tick with its cameras' frames: one more pass over the camera
    topics decodes only the frames a tick takes, and holds each only until its last tick is out."""
    needed: dict[tuple[int, int], int] = {}  # (camera, sorted index) -> the last plan entry that takes it
    for k, entry in enumerate(plan):
        if entry[0] == "frame":
            for c, i in enumerate(entry[1]):
                needed[(c, i)] = k
    sorted_index = [{pos: i for i, pos in enumerate(s.positions)} for s in cams]
    camera_of = {s.topic: c for c, s in enumerate(cams)}
    decoded: dict[tuple[int, int], np.ndarray] = {}
    seen = [0] * len(cams)
    done = 0

    def ready() -> Iterator[tuple]:
        nonlocal done
        while done < len(plan):
            entry = plan[done]
            if entry[0] == "frame":
                picks, tick, vec = entry[1:]
                if not all((c, i) in decoded for c, i in enumerate(picks)):
                    return
                rgbs = [decoded[(c, i)] for c, i in enumerate(picks)]
                yield "frame", BagFrame(rgbs[0], cams[0].bag_ns[picks[0]], tick, rgbs if len(cams) > 1 else None, vec)
                for c, i in enumerate(picks):
                    if needed[(c, i)] == done:
                        del decoded[(c, i)]
            else:
                yield entry
            done += 1

    yield from ready()
    for topic, _, msg in bag.messages([s.topic for s in cams]):
        c = camera_of[topic]
        key = (c, sorted_index[c][seen[c]])
        seen[c] += 1
        if key in needed:
            decoded[key] = frame_to_rgb(msg, cams[c].msgtype, image_size, f"bag {bag.path}: {topic} frame #{seen[c]}")
            yield from ready()
    if done < len(plan):
        raise BagError(f"bag {bag.path}: {cams[0].topic}: frames changed between two reads")


def _names_of(stream: Stream) -> list[str]:
    return command_names(stream.msgs[0], stream.msgtype, stream.topic)


def _command_at(commands: list[Stream], tick: int, period: int, ages: dict, counters: dict, path) -> np.ndarray | None:
    """The commands answering ``tick``, concatenated in topic order (None if one topic has none)."""
    parts = []
    for s in commands:
        i = answering(s.stamps, tick, period)
        if i is None and s.msgtype == JOINT_TRAJECTORY:  # a plan still in force answers the tick
            i, _ = newest_at_or_before(s.stamps, tick, ages[id(s)])
        if i is None:
            counters["ticks_without_command"] += 1
            return None
        msg = s.msgs[i]
        point = None
        names = None
        if s.msgtype == JOINT_TRAJECTORY:
            point = trajectory_point(int(s.stamps[i]), [duration_ns(p.time_from_start) for p in msg.points], tick,
                                     period)
            names = _names_of(s)
        elif s.msgtype == JOINT_STATE:
            names = _names_of(s)
        try:
            vec = command_vector(msg, s.msgtype, names, point)
        except BagError as exc:
            raise BagError(f"bag {path}: {s.topic}: {exc}") from None
        if vec is None:
            counters["ticks_without_command"] += 1
            return None
        if not np.all(np.isfinite(vec)):
            counters["commands_nonfinite"] += 1
            return None
        parts.append(vec)
    return np.concatenate(parts).astype(np.float32) if parts else None


__all__ = ["BagFrame", "COUNTERS", "Stream", "TickActions", "control_rule", "iter_resampled_events", "recording_types"]
