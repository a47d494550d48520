"""``kv-vla bag inspect BAG...``: what a recording holds and what the readers will make of it.

Per bag: every topic with its type, message count, measured rate and interval jitter (p50/p99 of
the deviation from the median interval), which ones the reader uses (camera, state, command,
instruction, reset) and which it ignores; then, at the control rate, episodes, steps and the ticks
dropped and why (`kv_vla_ros.data.resample`'s rule); finally the command line that trains on the
bags. Topics not given are guessed (a camera, a ``JointState`` whose name says joint states, a
command topic), and the guess is printed. One line per problem, naming the bag and topic: a camera
slower than the control rate, two publishers on a command topic, header stamps that go
backwards, non-finite commands (warnings), a bag that cannot be read as asked (refused); the other
bags still go through.
"""

from __future__ import annotations

import argparse
import shlex

import numpy as np

from kv_vla_ros.data.errors import BagError, cli_errors

CAMERA_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.data.topic_flags import add_recording_arguments

    parser.add_argument("bag", nargs="+", help="rosbag2 bags or directories of bags")
    parser.add_argument("--image-topic", action="append", default=None, help="camera topic(s) (default: guessed)")
    parser.add_argument("--state-topic", default=None, help="robot state topic (default: guessed)")
    parser.add_argument("--instruction-topic", default="/instruction", help="std_msgs/String episode instructions")
    parser.add_argument("--model", default=None, help="a checkpoint whose joint names and control rate apply")
    add_recording_arguments(parser)


def topic_table(bag) -> list[dict]:
    """One row per topic: type, count, rate (Hz), jitter p50/p99 (ms), header stamps backwards,
    publishers (connections and offered QoS profiles)."""
    from kv_vla_ros.data.commands import message_time_ns
    from kv_vla_ros.data.resample import interval_jitter_ms, measured_rate_hz

    rows = []
    for topic, (msgtype, count) in sorted(bag.topics.items()):
        conns = [c for c in bag.connections if c.topic == topic]
        publishers = max(len(conns), max((len(getattr(c.ext, "offered_qos_profiles", []) or []) for c in conns),
                                         default=0))
        stamps, backwards = [], 0
        try:
            if msgtype in bag.typestore.types and "/srv/" not in msgtype:
                for _, bag_ns, msg in bag.messages([topic]):
                    stamps.append(message_time_ns(msg, bag_ns))
            else:
                stamps = [ns for _, ns, _ in bag.raw_messages([topic])]
        except BagError:
            stamps = [ns for _, ns, _ in bag.raw_messages([topic])]
        arr = np.asarray(stamps, dtype=np.int64)
        if arr.size > 1:
            backwards = int(np.sum(np.diff(arr) < 0))
        srt = np.sort(arr)
        rows.append({"topic": topic, "type": msgtype, "count": count, "rate_hz": measured_rate_hz(srt),
                     "jitter_ms": interval_jitter_ms(srt), "backwards": backwards, "publishers": publishers})
    return rows


def guess_topics(args, rows: list[dict]) -> dict:
    """The flags' topics, else a guess from the bag's types and names."""
    from kv_vla_ros.data.commands import COMMAND_TYPES, JOINT_STATE

    types = {r["topic"]: r["type"] for r in rows}
    guessed = {}
    images = args.image_topic or [t for t in ("/image",) if t in types] or \
        [t for t, m in types.items() if m in CAMERA_TYPES][:1]
    guessed["image"] = images
    state = args.state_topic or next((t for t, m in types.items() if m == JOINT_STATE and "joint_states" in t), None)
    guessed["state"] = state
    commands = [t for t, m in types.items() if m in COMMAND_TYPES and t != state
                and any(w in t for w in ("command", "cmd"))]
    actions = args.action_topic or (["/action"] if "/action" in types else commands[:1])
    guessed["action"] = actions
    return guessed


def inspect_bag(path, args, policy=None, log=print) -> dict | None:
    """Print one bag's report; returns the topics it used (None when refused)."""
    from kv_vla_ros.data.bagio import BagReader
    from kv_vla_ros.data.episodes import iter_episode_events
    from kv_vla_ros.data.topic_flags import bag_topics

    try:
        with BagReader(path) as bag:
            rows = topic_table(bag)
    except BagError as exc:
        log(f"refused: {exc}")
        return None
    guess = guess_topics(args, rows)
    used = {}
    try:
        if not guess["image"]:
            raise BagError(f"bag {path}: no camera topic (Image or CompressedImage)")
        ns = argparse.Namespace(**{**vars(args), "image_topic": guess["image"], "state_topic": guess["state"],
                                   "action_topic": guess["action"] or [""]})
        topics = bag_topics(ns, policy)
        used = {topics.image: "camera", **{t: "camera" for t in topics.extra_images},
                **({topics.state: "state"} if topics.state else {}), **{t: "command" for t in topics.action_topics},
                topics.instruction: "instruction", **({topics.reset: "reset"} if topics.reset else {})}
        _print_table(path, rows, used, log)
        counters, info, steps, episodes = {}, {}, 0, 0
        with BagReader(path) as bag:
            for kind, _ in iter_episode_events(bag, topics, 16, counters, info):
                steps += kind == "frame"
                episodes += kind == "start"
    except BagError as exc:
        if not used:
            _print_table(path, rows, used, log)
        log(f"\nrefused: {exc}\n")
        return None
    rate = info.get("control_rate_hz")
    mode = "lockstep (one step per labelled frame)" if info.get("lockstep") else "a robot's recording, resampled"
    dropped = {k: v for k, v in counters.items() if v and (k.startswith("ticks_dropped") or k in (
        "ticks_without_command", "commands_nonfinite", "frames_without_instruction", "frames_missing_inputs",
        "repeated_frames", "episodes_split_at_gaps"))}
    rate_text = f"{rate:.2f} Hz" if rate else "one step per frame"
    log(f"\n{mode} at {rate_text}: {episodes} episode(s), {steps} steps"
        + (f", of {counters['ticks']} ticks" if "ticks" in counters else "")
        + ("; " + ", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped else "; nothing dropped"))
    if info.get("state_names"):
        log(f"state joints: {', '.join(info['state_names'])}")
    if info.get("action_names"):
        log(f"command dimensions: {', '.join(info['action_names'])}")
    if info.get("clock_offset_s"):
        log(f"note: bag {path}: {topics.image}'s header stamps are {info['clock_offset_s']:+.3f} s from the receive "
            "times (another clock): the topics without a header were moved onto the camera's clock")
    for line in warnings_for(path, rows, used, rate, counters):
        log(line)
    log("")
    return {"topics": topics, "rate": rate, "lockstep": info.get("lockstep")}


def _print_table(path, rows: list[dict], used: dict, log) -> None:
    log(f"## {path}\n")
    log("| topic | type | count | rate Hz | jitter p50 / p99 ms | use |")
    log("|---|---|---|---|---|---|")
    for r in rows:
        jit = "-" if r["jitter_ms"] is None else f"{r['jitter_ms'][0]:.2f} / {r['jitter_ms'][1]:.2f}"
        hz = "-" if r["rate_hz"] is None else f"{r['rate_hz']:.1f}"
        log(f"| {r['topic']} | {r['type']} | {r['count']} | {hz} | {jit} | {used.get(r['topic'], 'ignored')} |")


def warnings_for(path, rows: list[dict], used: dict, rate: float | None, counters: dict) -> list[str]:
    out = []
    for r in rows:
        role = used.get(r["topic"])
        if role == "camera" and rate and r["rate_hz"] and r["rate_hz"] < 0.95 * rate:
            out.append(f"warning: bag {path}: camera {r['topic']} runs at {r['rate_hz']:.1f} Hz, slower than the "
                       f"control rate {rate:.1f} Hz: ticks reuse frames")
        if role == "command" and r["publishers"] > 1:
            out.append(f"warning: bag {path}: command topic {r['topic']} has {r['publishers']} publishers: "
                       "two controllers (or a teleop and a policy) command the robot")
        if role and r["backwards"]:
            out.append(f"warning: bag {path}: {r['topic']}: header stamps go backwards {r['backwards']} time(s) "
                       "(sorted by stamp before resampling)")
    if counters.get("commands_nonfinite"):
        out.append(f"warning: bag {path}: {counters['commands_nonfinite']} command(s) hold NaN or inf: their ticks "
                   "keep no action (never trained on)")
    return out


def train_command(paths: list[str], args, used: dict) -> str:
    topics = used["topics"]
    cmd = ["kv-vla", "train", "--bags", *paths]
    for t in (topics.image, *topics.extra_images):
        cmd += ["--image-topic", t]
    if topics.state:
        cmd += ["--state-topic", topics.state]
    for t in topics.action_topics:
        cmd += ["--action-topic", t]
    if topics.instruction != "/instruction":
        cmd += ["--instruction-topic", topics.instruction]
    if topics.instruction_text:
        cmd += ["--instruction", topics.instruction_text]
    if topics.reset:
        cmd += ["--reset-topic", topics.reset]
    if not used["lockstep"] and used["rate"]:
        cmd += ["--control-rate-hz", f"{used['rate']:g}"]
    return " ".join(shlex.quote(c) for c in cmd) + " --out MODEL_DIR"


@cli_errors("bag inspect")
def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.data.bagio import bag_paths

    policy = None
    if args.model:
        from kv_vla_ros.vla import load_policy

        policy = load_policy(args.model)
    paths = bag_paths(args.bag)
    good = []
    for path in paths:
        used = inspect_bag(path, args, policy)
        if used is not None:
            good.append((str(path), used))
    if not good:
        print(f"no usable bag among {len(paths)}")
        return 1
    print(f"{len(good)} of {len(paths)} bag(s) usable; to train on them:\n")
    print(train_command(list(args.bag), args, good[0][1]))
    return 0


__all__ = ["configure", "guess_topics", "inspect_bag", "run", "topic_table", "train_command", "warnings_for"]
