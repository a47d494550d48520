"""Bag tools on a live ROS graph: ``kv-vla bag play`` (a real rclpy publisher process of frames,
instructions and actions) -> ``kv-vla bag record`` (another process, stopped with SIGINT) -> offline
eval gives what the original bag gives. Real DDS on loopback, on a private domain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from kv_vla_ros.data.bagio import BagReader  # noqa: E402
from kv_vla_ros.data.generate import generate_bag  # noqa: E402
from kv_vla_ros.eval.bag_eval import evaluate_bag  # noqa: E402

from test_bags import TASK, tiny_model  # noqa: E402,F401  (fixture reused)

# A stand-in for the simulator + policy node pair, publishing the way they do: a latched
# instruction per episode, each frame sent twice with one stamp (a simulator waiting for an
# action), each action labelled with its frame's stamp and repeated (a control loop holding it),
# then a stop command (an empty array).
FAKE_ROBOT = r"""
import sys, time
import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, MultiArrayDimension, String

EPISODES, STEPS = int(sys.argv[1]), int(sys.argv[2])
frames = np.random.default_rng(0).integers(0, 256, (EPISODES, STEPS, 24, 24, 3), dtype=np.uint8)
rclpy.init()
node = rclpy.create_node("fake_robot")
latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
image = node.create_publisher(Image, "image", 10)
instruction = node.create_publisher(String, "instruction", latched)
action = node.create_publisher(Float32MultiArray, "action", 10)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not all(p.get_subscription_count() for p in (image, instruction, action)):
    time.sleep(0.05)
time.sleep(0.3)
for ep in range(EPISODES):
    instruction.publish(String(data=f"go to the ball number {ep}"))
    time.sleep(0.05)
    for k in range(STEPS):
        msg = Image(height=24, width=24, encoding="rgb8", step=72, data=frames[ep, k].tobytes())
        msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + ep, k * 1000
        for _ in range(2):
            image.publish(msg)
            time.sleep(0.01)
        act = Float32MultiArray(data=[float((ep + k) % 3)])
        act.layout.dim = [MultiArrayDimension(label="action", size=1, stride=1),
                          MultiArrayDimension(label=f"frame_stamp={100 + ep}.{k * 1000:09d}", size=1, stride=1)]
        for _ in range(2):
            action.publish(act)
            time.sleep(0.01)
        action.publish(Float32MultiArray())
        time.sleep(0.01)
time.sleep(0.5)
rclpy.shutdown()
"""


def ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(101 + os.getpid() % 100)  # 101..200: apart from the node tests' 1..100
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def kv_vla_process(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kv_vla_ros.cli", *map(str, args)], env=ros_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_play_record_eval_round_trip(tmp_path):
    source = tmp_path / "source"
    generate_bag(source, TASK, episodes=2, seed_offset=5, storage="mcap", start_time_ns=10**18)
    recorded = tmp_path / "recorded"
    recorder = kv_vla_process("bag", "record", "-o", recorded, "--topics", "/image", "/instruction", "/action")
    try:
        player = kv_vla_process("bag", "play", source, "--rate", "2", "--wait-for-subscribers", "60",
                                "--delay", "0.5", "--topics", "/image", "/instruction", "/action")
        out, err = player.communicate(timeout=90)
        assert player.returncode == 0, err
        time.sleep(1.0)  # the last reliable messages reach the recorder
        assert not recorded.exists()  # nothing at the output path until the bag is finished
        recorder.send_signal(signal.SIGINT)
        rec_out, rec_err = recorder.communicate(timeout=30)
    finally:
        if recorder.poll() is None:
            recorder.kill()
    assert recorder.returncode == 0, rec_err
    assert "Traceback" not in rec_err and f"wrote {recorded}" in rec_out
    with BagReader(source) as a, BagReader(recorded) as b:
        want = {t: v for t, v in a.topics.items() if t != "/episode"}
        assert b.topics == want  # every message arrived once, type discovered from the graph
        # CDR stored as received: the frames are byte-identical to the source bag's.
        frames_a = [bytes(raw) for _, _, raw in a.raw_messages(["/image"])]
        frames_b = [bytes(raw) for _, _, raw in b.raw_messages(["/image"])]
        assert frames_a == frames_b
    model = tiny_model()
    got = evaluate_bag(recorded, model, ["full", "window:budget_tokens=30"], progress=False, flops_every=0)
    ref = evaluate_bag(source, model, ["full", "window:budget_tokens=30"], progress=False, flops_every=0)
    assert got["meta"]["episodes"] == ref["meta"]["episodes"] == 2
    for label in ("full", "window:budget_tokens=30"):
        for ga, ra in zip(got["actions"][label], ref["actions"][label]):
            assert np.array_equal(np.stack(ga), np.stack(ra))
    assert [r["agreement_recorded"] for r in got["results"]] == [r["agreement_recorded"] for r in ref["results"]]
    assert got["results"][0]["agreement_recorded"]["n"] == got["meta"]["steps"]  # every action aligned


def test_record_live_robot_stream_then_eval(tmp_path):
    from kv_vla_ros.vla import VLASession

    episodes, steps = 2, 4
    script = tmp_path / "fake_robot.py"
    script.write_text(FAKE_ROBOT)
    recorded = tmp_path / "live"
    recorder = kv_vla_process("bag", "record", "-o", recorded, "--storage", "sqlite3")
    try:
        robot = subprocess.Popen([sys.executable, str(script), str(episodes), str(steps)], env=ros_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = robot.communicate(timeout=90)
        assert robot.returncode == 0, err
        time.sleep(0.5)
        recorder.send_signal(signal.SIGINT)
        rec_out, rec_err = recorder.communicate(timeout=30)
    finally:
        for proc in (recorder, robot):
            if proc.poll() is None:
                proc.kill()
    assert recorder.returncode == 0, rec_err
    with BagReader(recorded) as bag:
        counts = {t: n for t, (_, n) in bag.topics.items()}
    assert counts == {"/image": 2 * episodes * steps, "/instruction": episodes, "/action": 3 * episodes * steps}
    model = tiny_model()
    result = evaluate_bag(recorded, model, ["full"], progress=False, flops_every=0)
    meta, row = result["meta"], result["results"][0]
    assert (meta["episodes"], meta["steps"], meta["repeated_frames"]) == (episodes, steps * episodes, steps * episodes)
    assert result["instructions"] == [f"go to the ball number {ep}" for ep in range(episodes)]
    recorded_actions = [[int(a[0]) for a in ep] for ep in result["recorded"]]
    assert recorded_actions == [[(ep + k) % 3 for k in range(steps)] for ep in range(episodes)]
    frames = np.random.default_rng(0).integers(0, 256, (episodes, steps, 24, 24, 3), dtype=np.uint8)
    session = VLASession(model, model.config.cache.replace(eviction="full"))
    for ep in range(episodes):
        session.reset(result["instructions"][ep])
        want = np.stack([session.step(f) for f in frames[ep]])
        assert np.array_equal(np.stack(result["actions"]["full"][ep]), want)
    assert row["agreement_recorded"]["n"] == steps * episodes
