"""Write a lockstep bag again the way a real arm records it (``kv-vla bag rewrite``): the test
and the documented end-to-end check of the resampling rule (`kv_vla_ros.data.resample`).

Per episode of the source (one output bag each, ``episode_0000``, ...; no instruction topic):

- the camera as ``sensor_msgs/CompressedImage`` JPEG at ``camera_factor`` x the control rate;
  the frames between two control steps blend the two recorded views (so a reader that takes the
  wrong frame sees a different image); received 5 ms after their stamp;
- ``sensor_msgs/JointState`` at ``state_rate_hz`` from the driver, joints in another order
  (``joint_order``: the fingers first), positions interpolated between the recorded states (the
  recorded state itself at each control step's stamp), with velocity and effort, from 50 ms
  before the first frame;
- the recorded commands as ``std_msgs/Float64MultiArray`` (forward_command_controller's type,
  unlabelled, no header) ``command_delay_ms`` after each control step's frame;
- ``/tf`` (50 Hz), ``/rosout`` and ``/diagnostics`` (1 Hz) beside, as a robot's bag holds them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kv_vla_ros.data.errors import cli_errors

CAMERA_TOPIC = "/camera/image_raw/compressed"
COMMAND_TOPIC = "/arm_controller/commands"
STATE_TOPIC = "/joint_states"
CAMERA_LATENCY_NS = 5_000_000
STATE_LEAD_NS = 50_000_000


def read_lockstep_episodes(path, topics) -> tuple[list[dict], dict]:
    """The source's episodes: ``[{instruction, stamps, frames (T,H,W,3), states (T,n) float64,
    actions (T,d)}]`` and the reader's info (state names, rate)."""
    from kv_vla_ros.data.bagio import BagReader
    from kv_vla_ros.data.episodes import iter_lockstep_events

    episodes, info = [], {}
    with BagReader(path) as bag:
        for kind, item in iter_lockstep_events(bag, topics, None, {}, info):
            if kind == "start":
                episodes.append({"instruction": item, "stamps": [], "frames": [], "states": []})
            elif kind == "frame":
                ep = episodes[-1]
                ep["stamps"].append(int(item.stamp_ns))
                ep["frames"].append(item.rgb)
                ep["states"].append(item.state)
            else:
                ep = episodes[-1]
                ep["actions"] = item.aligned()
    return episodes, info


def write_episode(out: Path, ep: dict, state_names: list[str], joint_order: list[str], storage: str = "sqlite3",
                  camera_factor: int = 3, state_rate_hz: float = 100.0, command_delay_ms: float = 20.0,
                  jpeg_quality: int = 90) -> Path:
    """One episode as a robot's bag at ``out``."""
    import cv2

    from kv_vla_ros.data.bagio import AtomicBagWriter
    from kv_vla_ros.data.messages import make_header

    stamps = np.asarray(ep["stamps"], dtype=np.int64)
    period = int(np.median(np.diff(stamps))) if len(stamps) > 1 else 100_000_000
    perm = [state_names.index(n) for n in joint_order]
    with AtomicBagWriter(out, storage) as bag:
        ts = bag.typestore
        T = ts.types
        for topic, msgtype in ((CAMERA_TOPIC, "sensor_msgs/msg/CompressedImage"),
                               (STATE_TOPIC, "sensor_msgs/msg/JointState"),
                               (COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray"), ("/tf", "tf2_msgs/msg/TFMessage"),
                               ("/rosout", "rcl_interfaces/msg/Log"),
                               ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")):
            bag.add_connection(topic, msgtype)
        messages = []  # (bag ns, topic, msg, type)
        frames = ep["frames"]
        for k, t in enumerate(stamps):
            for j in range(camera_factor if k + 1 < len(stamps) else 1):
                if j == 0:
                    rgb = frames[k]
                else:
                    w = j / camera_factor
                    rgb = np.rint((1 - w) * frames[k] + w * frames[k + 1]).astype(np.uint8)
                stamp = int(t) + round(j * (int(stamps[k + 1]) - int(t)) / camera_factor) if j else int(t)
                ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                msg = T["sensor_msgs/msg/CompressedImage"](header=make_header(ts, stamp, "camera_optical"),
                                                            format="rgb8; jpeg compressed bgr8",
                                                            data=np.frombuffer(jpg.tobytes(), dtype=np.uint8))
                messages.append((stamp + CAMERA_LATENCY_NS, CAMERA_TOPIC, msg, "sensor_msgs/msg/CompressedImage"))
            action = ep["actions"][k]
            if action is not None:
                layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
                msg = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(action, dtype=np.float64))
                messages.append((int(t) + int(command_delay_ms * 1e6), COMMAND_TOPIC, msg,
                                 "std_msgs/msg/Float64MultiArray"))
        states = np.asarray(ep["states"], dtype=np.float64)
        step = int(round(1e9 / state_rate_hz))
        for stamp in range(int(stamps[0]) - STATE_LEAD_NS, int(stamps[-1]) + 1, step):
            pos = np.array([np.interp(stamp, stamps, states[:, i]) for i in range(states.shape[1])])
            exact = np.nonzero(stamps == stamp)[0]
            if exact.size:
                pos = states[exact[0]]
            zeros = np.zeros(len(perm))
            msg = T["sensor_msgs/msg/JointState"](header=make_header(ts, stamp, "base_link"), name=list(joint_order),
                                                  position=pos[perm], velocity=zeros, effort=zeros)
            messages.append((stamp + 1_000_000, STATE_TOPIC, msg, "sensor_msgs/msg/JointState"))
        messages += _unrelated(ts, int(stamps[0]) - STATE_LEAD_NS, int(stamps[-1]) + period)
        for bag_ns, topic, msg, msgtype in sorted(messages, key=lambda m: m[0]):
            bag.write(topic, bag_ns, msg, msgtype)
    return out


def _unrelated(ts, start: int, end: int) -> list[tuple]:
    """``/tf`` at 50 Hz, ``/diagnostics`` at 1 Hz and a ``/rosout`` line per second."""
    from kv_vla_ros.data.messages import make_header

    T = ts.types
    out = []
    for stamp in range(start, end, 20_000_000):
        tf = T["geometry_msgs/msg/TransformStamped"](
            header=make_header(ts, stamp, "base_link"), child_frame_id="panda_hand",
            transform=T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=0.3, y=0.0, z=0.5),
                                                       rotation=T["geometry_msgs/msg/Quaternion"](x=0, y=0, z=0, w=1)))
        out.append((stamp, "/tf", T["tf2_msgs/msg/TFMessage"](transforms=[tf]), "tf2_msgs/msg/TFMessage"))
    for stamp in range(start, end, 1_000_000_000):
        status = T["diagnostic_msgs/msg/DiagnosticStatus"](level=b"\x00"[0], name="arm_driver", message="OK",
                                                          hardware_id="panda", values=[])
        out.append((stamp, "/diagnostics", T["diagnostic_msgs/msg/DiagnosticArray"](
            header=make_header(ts, stamp, ""), status=[status]), "diagnostic_msgs/msg/DiagnosticArray"))
        sec, nsec = divmod(stamp, 1_000_000_000)
        log = T["rcl_interfaces/msg/Log"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), level=20,
                                          name="arm_driver", msg="controller running", file="driver.cpp",
                                          function="update", line=42)
        out.append((stamp, "/rosout", log, "rcl_interfaces/msg/Log"))
    return out


def rewrite_bag(source, out_dir, topics=None, storage: str = "sqlite3", joint_order: list[str] | None = None,
                progress: bool = False, **options) -> list[Path]:
    """Every episode of the lockstep bag ``source`` as a robot's bag under ``out_dir``; returns
    their paths. ``joint_order`` None: the source's joints with the last two (an arm's fingers)
    first."""
    from kv_vla_ros.data.episodes import BagTopics
    from kv_vla_ros.progress import progress_bar

    topics = topics or BagTopics(state=STATE_TOPIC)
    episodes, info = read_lockstep_episodes(source, topics)
    names = info.get("state_names")
    if not names:
        raise ValueError(f"bag {source}: its state topic {topics.state} carries no joint names")
    order = list(joint_order) if joint_order else names[-2:] + names[:-2]
    out_dir = Path(out_dir)
    paths = []
    for index, ep in enumerate(progress_bar(episodes, desc="bag rewrite", unit="episode", disable=not progress)):
        paths.append(write_episode(out_dir / f"episode_{index:04d}", ep, names, order, storage, **options))
    return paths


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", nargs="+", help="lockstep bags (kv-vla bag generate's) or directories of them")
    parser.add_argument("-o", "--out", required=True, help="output directory: one bag per episode")
    parser.add_argument("--state-topic", default=STATE_TOPIC, help="the source's JointState topic")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    parser.add_argument("--camera-factor", type=int, default=3, help="camera frames per control step")
    parser.add_argument("--state-rate-hz", type=float, default=100.0, help="joint state rate")
    parser.add_argument("--command-delay-ms", type=float, default=20.0, help="command after its frame")
    parser.add_argument("--no-progress", action="store_true")


@cli_errors("bag rewrite")
def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.data.bagio import bag_paths, normalize_topic
    from kv_vla_ros.data.episodes import BagTopics

    if args.camera_factor < 1 or not args.state_rate_hz > 0 or args.command_delay_ms < 0:
        raise ValueError("--camera-factor >= 1, --state-rate-hz > 0 and --command-delay-ms >= 0 are required")
    topics = BagTopics(state=normalize_topic(args.state_topic, "--state-topic"))
    total = 0
    for i, source in enumerate(bag_paths(args.bag)):
        out = Path(args.out) / (source.name if len(args.bag) > 1 or Path(args.bag[0]) != source else "")
        paths = rewrite_bag(source, out, topics, args.storage, progress=not args.no_progress,
                            camera_factor=args.camera_factor, state_rate_hz=args.state_rate_hz,
                            command_delay_ms=args.command_delay_ms)
        total += len(paths)
    print(f"wrote {total} bag(s) under {args.out}")
    return 0


__all__ = ["CAMERA_TOPIC", "COMMAND_TOPIC", "STATE_TOPIC", "configure", "read_lockstep_episodes", "rewrite_bag",
           "run", "write_episode"]
