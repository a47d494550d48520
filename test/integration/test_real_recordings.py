"""A robot's own recordings (issue 28): a generated arm bag written again the way a real arm records
it (`kv-vla bag rewrite`: 30 Hz JPEG camera, 100 Hz joint states in the driver's order, Float64
commands 20 ms after the frame, no instruction topic, /tf /rosout /diagnostics) reads into the
lockstep bag's episodes, and the shipped arm π0 replays it like the lockstep bag; the command types
controllers take; joints by name; `kv-vla bag inspect` warnings. Real bags (rosbags), real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from kv_vla_ros.data.bagio import AtomicBagWriter, bag_paths
from kv_vla_ros.data.episodes import BagTopics
from kv_vla_ros.data.errors import BagError
from kv_vla_ros.data.generate import generate_bag
from kv_vla_ros.data.messages import make_header, make_image
from kv_vla_ros.data.resample import answering, newest_at_or_before, trajectory_point
from kv_vla_ros.data.robot_recording import CAMERA_TOPIC, COMMAND_TOPIC, rewrite_bag
from kv_vla_ros.sim.arm.scene import STATE_JOINT_NAMES
from kv_vla_ros.sim.arm.task import INSTRUCTION
from kv_vla_ros.train.bag_episodes import read_bags

REPO = Path(__file__).resolve().parents[2]
ARM_MODEL = REPO / "models" / "kv-vla-arm-pi0"
QOS = Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE, QosTime(0, 0), QosTime(0, 0),
          QosLiveliness.AUTOMATIC, QosTime(0, 0), False)
ROBOT = dict(image=CAMERA_TOPIC, state="/joint_states", action=COMMAND_TOPIC, instruction_text=INSTRUCTION)


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("arm")
    generate_bag(root / "lockstep", "Arm-CueCarryShort", episodes=2, start_time_ns=1_700_000_000 * 10**9)
    rewrite_bag(root / "lockstep", root / "robot")
    return root / "lockstep", root / "robot"


def test_rewritten_recording_reads_into_the_lockstep_episodes(bags):
    lockstep, robot = bags
    assert len(bag_paths([str(robot)])) == 2  # one bag per episode
    ref = read_bags([lockstep], BagTopics(state="/joint_states"), progress=False)
    by_name = read_bags(bag_paths([str(robot)]), BagTopics(**ROBOT, state_names=STATE_JOINT_NAMES), progress=False)
    as_recorded = read_bags(bag_paths([str(robot)]), BagTopics(**ROBOT), progress=False)
    assert [len(e) for e in by_name.episodes] == [len(e) for e in ref.episodes]
    order = [as_recorded.info["state_names"].index(n) for n in STATE_JOINT_NAMES]
    assert order != list(range(len(order)))  # the driver lists the fingers first
    assert by_name.info["control_rate_hz"] == pytest.approx(10.0)  # measured on the command topic
    for a, b, c in zip(ref.episodes, by_name.episodes, as_recorded.episodes):
        assert b.instruction == INSTRUCTION
        np.testing.assert_array_equal(b.actions, a.actions)
        np.testing.assert_array_equal(b.states, a.states)
        np.testing.assert_array_equal(c.states[:, order], a.states)
        for k in range(len(a)):  # exactly the JPEG round trip of the lockstep frame (not a blended one)
            bgr = cv2.cvtColor(a.frames[k, 0], cv2.COLOR_RGB2BGR)
            jpg = cv2.imdecode(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(b.frames[k, 0], cv2.cvtColor(jpg, cv2.COLOR_BGR2RGB))
        assert np.abs(b.frames.astype(int) - a.frames).mean() < 4  # JPEG error


def kv_vla(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kv_vla_ros.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_bag_eval_of_the_shipped_arm_model_matches_the_lockstep_bag(bags, tmp_path):
    lockstep, robot = bags
    common = ["--model", ARM_MODEL, "--state-topic", "/joint_states", "--workers", "1", "--flops-every", "0",
              "--no-progress"]
    ref = kv_vla("bag", "eval", lockstep, *common, "--out", tmp_path / "a")
    got = kv_vla("bag", "eval", robot, *common, "--image-topic", CAMERA_TOPIC, "--action-topic",
                 COMMAND_TOPIC, "--instruction", INSTRUCTION, "--out", tmp_path / "b")
    assert ref.returncode == 0 and got.returncode == 0, ref.stderr + got.stderr
    a, b = (json.loads((tmp_path / d / "bag_eval.json").read_text())["results"][0] for d in "ab")
    assert a["steps"] == b["steps"] > 150 and a["episodes"] == b["episodes"] == 2
    assert abs(a["agreement_recorded"]["l1"] - b["agreement_recorded"]["l1"]) <= 0.02


# ---- synthetic recordings: command types, joints by name, gaps, inspect ------------------------
def write_recording(path: Path, commands: dict, steps: int = 12, camera_hz: float = 30.0, gap_after: int | None = None,
                    state_names=("b", "a"), nan_at: int | None = None, backwards: bool = False,
                    publishers: int = 1, receive_offset_ns: int = 0) -> Path:
    """8x8 frames at ``camera_hz`` (pixel value = the frame's index), a 100 Hz JointState
    (``a`` = t, ``b`` = -t in seconds), ``commands``: ``{topic: (msgtype, make(ts, k, t_ns) -> msg)}``
    answered 20 ms after each 10 Hz tick. ``gap_after``: a 2 s pause after that step."""
    t0 = 1_700_000_000 * 10**9
    ticks = [t0 + k * 100_000_000 + (2 * 10**9 if gap_after is not None and k > gap_after else 0)
             for k in range(steps)]
    with AtomicBagWriter(path) as bag:
        ts = bag.typestore
        for topic, (msgtype, _) in commands.items():  # the QoS each publisher offered, as ros2 bag record stores it
            bag.add_connection(topic, msgtype, offered_qos_profiles=[QOS] * publishers)
        msgs = []
        per_tick = max(1, round(camera_hz / 10))  # frames per tick (camera_hz < 10: one every few ticks)
        every = max(1, round(10 / camera_hz))
        frames = [t + j * 100_000_000 // per_tick for k, t in enumerate(ticks) if k % every == 0
                  for j in range(per_tick)]
        for i, t in enumerate(frames):
            stamp = t - 300_000_000 if backwards and i == 5 else t  # older than the frame before
            frame = make_image(ts, np.full((8, 8, 3), i % 250, np.uint8), stamp)
            msgs.append((t, "/cam", frame, "sensor_msgs/msg/Image"))
        for t in range(t0 - 20_000_000, ticks[-1] + 1, 10_000_000):
            sec = (t - t0) / 1e9
            pos = {"a": sec, "b": -sec}
            msg = ts.types["sensor_msgs/msg/JointState"](header=make_header(ts, t, "base"), name=list(state_names),
                                                          position=np.array([pos[n] for n in state_names]),
                                                          velocity=np.zeros(0), effort=np.zeros(0))
            msgs.append((t + 1_000_000, "/joint_states", msg, "sensor_msgs/msg/JointState"))
        for topic, (msgtype, make) in commands.items():
            for k, t in enumerate(ticks):
                msg = make(ts, k if k != nan_at else float("nan"), t)
                if msg is not None:
                    msgs.append((t + 20_000_000, topic, msg, msgtype))
        for bag_ns, topic, msg, msgtype in sorted(msgs, key=lambda m: m[0]):
            bag.write(topic, bag_ns + receive_offset_ns, msg, msgtype)
    return path


def f64(ts, k, t):
    layout = ts.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return ts.types["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.array([k, 2.0 * k]))


def twist_stamped(ts, k, t):
    T = ts.types
    v = T["geometry_msgs/msg/Vector3"]
    return T["geometry_msgs/msg/TwistStamped"](header=make_header(ts, t + 20_000_000, ""), twist=T[
        "geometry_msgs/msg/Twist"](linear=v(x=k, y=0.0, z=0.0), angular=v(x=0.0, y=0.0, z=-k)))


def leader(ts, k, t):
    return ts.types["sensor_msgs/msg/JointState"](header=make_header(ts, t + 20_000_000, ""), name=["j2", "j1"],
                                                  position=np.array([2.0 * k, k]), velocity=np.zeros(0),
                                                  effort=np.zeros(0))


def plan(ts, k, t):
    """kv_vla_node's trajectory output: a plan every 3 ticks, point i at (i + 1) periods."""
    if k % 3:
        return None
    T = ts.types
    dur = T["builtin_interfaces/msg/Duration"]
    points = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.array([k + i, -(k + i)], dtype=np.float64), velocities=np.zeros(0), accelerations=np.zeros(0),
        effort=np.zeros(0), time_from_start=dur(sec=0, nanosec=(i + 1) * 100_000_000)) for i in range(3)]
    return T["trajectory_msgs/msg/JointTrajectory"](header=make_header(ts, 0, ""), joint_names=["j1", "j2"],
                                                    points=points)


def read(path, **topics):
    return read_bags([path], BagTopics(**{"image": "/cam", "state": "/joint_states", "instruction_text": "go",
                                          **topics}), progress=False)


@pytest.mark.parametrize("kind,make,expected", [
    ("std_msgs/msg/Float64MultiArray", f64, lambda k: [k, 2 * k]),
    ("geometry_msgs/msg/TwistStamped", twist_stamped, lambda k: [k, 0, 0, 0, 0, -k]),
    ("sensor_msgs/msg/JointState", leader, lambda k: [2 * k, k]),
    ("trajectory_msgs/msg/JointTrajectory", plan, lambda k: [k, -k]),
])
def test_command_types_answer_each_tick(tmp_path, kind, make, expected):
    data = read(write_recording(tmp_path / "b", {"/cmd": (kind, make)}), action="/cmd")
    ep = data.episodes[0]
    assert len(ep) == 12 and data.counters["ticks_without_command"] == 0
    np.testing.assert_allclose(ep.actions, np.array([expected(k) for k in range(12)], dtype=np.float32))
    np.testing.assert_array_equal(ep.frames[:, 0, 0, 0, 0], np.arange(12) * 3)  # newest frame at each tick
    np.testing.assert_allclose(ep.states[:, 1], -ep.states[:, 0])  # the state at the tick, b = -a
    np.testing.assert_allclose(ep.states[:, 1], np.arange(12) * 0.1, atol=1e-6)


def test_several_command_topics_concatenate_in_order(tmp_path):
    path = write_recording(tmp_path / "b", {"/arm": ("geometry_msgs/msg/TwistStamped", twist_stamped),
                                            "/gripper": ("std_msgs/msg/Float64MultiArray", f64)})
    data = read(path, action="/gripper", extra_actions=("/arm",))
    np.testing.assert_allclose(data.episodes[0].actions[4], [4, 8, 4, 0, 0, 0, 0, -4])
    assert data.info["action_names"] == ["/gripper[0]", "/gripper[1]", "linear.x", "linear.y", "linear.z",
                                         "angular.x", "angular.y", "angular.z"]


def test_joints_by_name_and_a_missing_joint_refused_by_name(tmp_path):
    path = write_recording(tmp_path / "b", {"/cmd": ("std_msgs/msg/Float64MultiArray", f64)})
    ep = read(path, action="/cmd", state_names=("a", "b")).episodes[0]
    np.testing.assert_allclose(ep.states[:, 0], np.arange(12) * 0.1, atol=1e-6)  # "a" first, as asked
    lines = []
    with pytest.raises(ValueError):
        read_bags([path], BagTopics(image="/cam", state="/joint_states", action="/cmd", instruction_text="go",
                                    state_names=("a", "elbow")), progress=False, log=lines.append)
    assert "joint 'elbow' missing" in lines[0] and "/joint_states" in lines[0]


def test_gap_splits_and_stale_inputs_drop_ticks(tmp_path):
    path = write_recording(tmp_path / "b", {"/cmd": ("std_msgs/msg/Float64MultiArray", f64)}, gap_after=5)
    data = read(path, action="/cmd")
    assert [len(e) for e in data.episodes] == [6, 6] and data.counters["episodes_split_at_gaps"] == 1
    with pytest.raises(BagError, match="--instruction"):
        from kv_vla_ros.data.bagio import BagReader
        from kv_vla_ros.data.episodes import check_topics

        with BagReader(path) as bag:
            check_topics(bag, BagTopics(image="/cam", action="/cmd"))


def test_header_stamps_on_another_clock_than_the_receive_times(tmp_path):
    """Stamps in simulated time, the recorder's receive times on the wall clock: the commands (no
    header) move onto the camera's clock."""
    path = write_recording(tmp_path / "b", {"/cmd": ("std_msgs/msg/Float64MultiArray", f64)},
                           receive_offset_ns=3600 * 10**9)
    data = read(path, action="/cmd")
    np.testing.assert_allclose(data.episodes[0].actions, [[k, 2 * k] for k in range(12)])
    assert data.info["clock_offset_s"] == pytest.approx(3600.0)


def test_the_rule_itself():
    stamps = np.array([0, 30, 60, 100], dtype=np.int64)
    assert newest_at_or_before(stamps, 99, 50) == (2, None)
    assert newest_at_or_before(stamps, 100, 50) == (3, None)
    assert newest_at_or_before(stamps, -1, 50) == (None, "missing")
    assert newest_at_or_before(stamps, 200, 50) == (None, "too_old")
    assert answering(np.array([20, 120]), 0, 100) == 0 and answering(np.array([20, 120]), 20, 100) == 1
    assert answering(np.array([20]), 20, 100) is None  # a command at the tick answered the previous one
    assert trajectory_point(20, [100, 200, 300], 100, 100) == 1 and trajectory_point(20, [100], 500, 100) == 0
    assert trajectory_point(20, [], 0, 100) is None


def test_inspect_warns_by_bag_and_topic_and_goes_on(tmp_path):
    good = write_recording(tmp_path / "good", {"/cmd": ("std_msgs/msg/Float64MultiArray", f64)})
    slow = write_recording(tmp_path / "slow", {"/cmd": ("std_msgs/msg/Float64MultiArray", f64)}, camera_hz=5.0,
                           nan_at=3, backwards=True, publishers=2)
    broken = tmp_path / "broken"
    broken.mkdir()
    out = kv_vla("bag", "inspect", good, slow, broken, "--image-topic", "/cam", "--state-topic", "/joint_states",
                 "--action-topic", "/cmd", "--instruction", "go")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"warning: bag {slow}: camera /cam runs at 5.0 Hz, slower than the control rate 10.0 Hz" in text
    assert f"warning: bag {slow}: /cam: header stamps go backwards 1 time(s)" in text
    assert f"warning: bag {slow}: 1 command(s) hold NaN" in text
    assert f"warning: bag {slow}: command topic /cmd has 2 publishers" in text
    assert f"warning: bag {good}" not in text
    assert f"refused: bag {broken}" in text and "2 of 3 bag(s) usable" in text
    assert "| /joint_states | sensor_msgs/msg/JointState |" in text and "| 100.0 |" in text
    assert "--control-rate-hz 10" in text and "kv-vla train --bags" in text
