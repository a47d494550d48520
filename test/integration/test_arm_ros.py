"""`arm_sim_node` over real DDS on loopback (separate processes, a private domain): expert mode
recorded by `kv-vla bag record` holds the frames, joint states and actions `kv-vla bag generate`
writes directly; policy mode (a node in this process answering views) applies an action once per
view and refuses bad ones (NaN, out of bounds, wrong dimension) with a clear log line, no crash."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from kv_vla_ros.data.bagio import BagReader  # noqa: E402
from kv_vla_ros.data.episodes import BagTopics, iter_episode_events  # noqa: E402
from kv_vla_ros.data.generate import generate_bag  # noqa: E402
from kv_vla_ros.ros.processes import ARM_SIM_MODULE, pick_free_domain_id, ros_env, spawn_node, stop_node  # noqa: E402

TASK = "Arm-CueCarryShort-v0"


def read_bag(path, episode_topic: str):
    """[(frames, states, actions)] per episode and the episode records."""
    out, frames = [], []
    with BagReader(path) as bag:
        records = [json.loads(m.data) for _, _, m in bag.messages([episode_topic])]
        for kind, value in iter_episode_events(bag, BagTopics(state="/joint_states"), None):
            if kind == "frame":
                frames.append(value)
            elif kind == "end":
                out.append((np.stack([f.rgb for f in frames]), np.stack([f.state for f in frames]),
                            np.stack(value.aligned())))
                frames = []
    return out, records


def test_expert_sim_node_recorded_over_dds_equals_the_generated_bag(tmp_path):
    domain = pick_free_domain_id(salt=61)
    recorded, rec_log = tmp_path / "recorded", tmp_path / "record.log"
    with open(rec_log, "w") as out:  # `kv-vla bag record`, stopped with SIGINT like a user's Ctrl-C
        recorder = subprocess.Popen(
            [sys.executable, "-m", "kv_vla_ros.cli", "bag", "record", "-o", str(recorded), "--storage", "mcap",
             "--topics", "/image", "/joint_states", "/instruction", "/action", "/arm_sim_node/episode"],
            env=ros_env(domain), stdout=out, stderr=subprocess.STDOUT)
    sim = spawn_node(ARM_SIM_MODULE, domain, {"task": TASK, "mode": "expert", "episodes": 2, "max_steps": 14,
                                              "seed_offset": 7, "control_rate_hz": 25.0}, None, tmp_path / "sim.log")
    try:
        sim.wait(90)
        time.sleep(1.0)  # the last reliable messages reach the recorder
    finally:
        stop_node(sim)
        stop_node(recorder, timeout=30)
    log = (tmp_path / "sim.log").read_text()
    assert sim.returncode == 0 and "Traceback" not in log, log
    assert recorder.returncode == 0, rec_log.read_text()
    direct = tmp_path / "direct"
    generate_bag(direct, TASK, 2, seed_offset=7, max_steps=14, storage="sqlite3", start_time_ns=10**18)
    got, got_records = read_bag(recorded, "/arm_sim_node/episode")
    want, want_records = read_bag(direct, "/episode")
    assert got_records == want_records and len(got) == len(want) == 2
    for (f1, s1, a1), (f2, s2, a2) in zip(got, want):
        assert f1.shape == f2.shape == (14, 64, 64, 3)
        assert np.array_equal(f1, f2) and np.array_equal(s1, s2) and np.array_equal(a1, a2)


class ArmPolicyProbe:
    """A policy stand-in in this process: keeps the newest view (stamp, frame, joint state) and sends
    actions labelled with a view's stamp, as kv_vla_node does."""

    def __init__(self, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float32MultiArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("arm_policy_probe", context=self.context)
        self.lock = threading.Lock()
        self.views: dict[tuple[int, int], np.ndarray] = {}
        self.states: dict[tuple[int, int], np.ndarray] = {}
        self.order: list[tuple[int, int]] = []
        self.node.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data)
        self.node.create_subscription(JointState, "joint_states", self._on_state, qos_profile_sensor_data)
        self.pub = self.node.create_publisher(Float32MultiArray, "action", 10)
        self._Float32MultiArray = Float32MultiArray
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_image(self, msg) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self.lock:
            if stamp not in self.views:
                self.order.append(stamp)
            self.views[stamp] = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)

    def _on_state(self, msg) -> None:
        with self.lock:
            self.states[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = np.asarray(msg.position)

    def wait_views(self, n: int, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.order) >= n:
                    return True
            time.sleep(0.02)
        return False

    def send(self, values, stamp) -> None:
        from std_msgs.msg import MultiArrayDimension

        msg = self._Float32MultiArray(data=[float(v) for v in values])
        msg.layout.dim = [MultiArrayDimension(label="action", size=len(values), stride=len(values))]
        if stamp is not None:
            msg.layout.dim.append(MultiArrayDimension(label=f"frame_stamp={stamp[0]}.{stamp[1]:09d}", size=1,
                                                      stride=1))
        self.pub.publish(msg)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def test_policy_mode_applies_each_action_once_and_refuses_bad_ones(tmp_path):
    domain = pick_free_domain_id(salt=62)
    probe = ArmPolicyProbe(domain)
    log_path = tmp_path / "sim.log"
    sim = spawn_node(ARM_SIM_MODULE, domain, {"task": TASK, "mode": "policy", "frame_rate_hz": 20.0}, None, log_path)
    try:
        assert probe.wait_views(1, 60), log_path.read_text()
        first = probe.order[0]
        for bad in ([float("nan"), 0.0, 0.0, -1.0], [0.0, 3.0, 0.0, -1.0], [0.5, 0.0, -1.0]):
            probe.send(bad, first)
        probe.send([0.0, 0.0, 1.0, -1.0], None)  # names no view: ignored, with a warning
        time.sleep(1.0)  # the camera re-sends the same view: nothing was applied
        assert len(probe.order) == 1 and sim.poll() is None
        up = [0.0, 0.0, 1.0, -1.0]
        probe.send(up, first)
        probe.send(up, first)  # a held repeat: ignored
        assert probe.wait_views(2, 10), log_path.read_text()
        time.sleep(0.5)
        assert len(probe.order) == 2  # one step for two messages naming the same view
        second = probe.order[1]
        assert not np.array_equal(probe.states[first], probe.states[second])  # the arm moved
        assert sim.poll() is None
    finally:
        probe.close()
        stop_node(sim)
    log = log_path.read_text()
    assert "Traceback" not in log
    assert "action: non-finite value in [nan, 0.0, 0.0, -1.0]: refused, the arm holds still" in log
    assert "action: out of bounds [-1, 1]: [0.0, 3.0, 0.0, -1.0]: refused" in log
    assert "action: expected dimension 4 (dx, dy, dz, gripper), got shape (3,): refused" in log
    assert "action ignored: it names no view" in log


def test_arm_demo_launch_file_builds_with_described_arguments():
    pytest.importorskip("launch_ros")
    import importlib.util
    from pathlib import Path

    from launch.actions import DeclareLaunchArgument

    path = Path(__file__).resolve().parents[2] / "launch" / "arm_demo.launch.py"
    spec = importlib.util.spec_from_file_location("arm_demo_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    declared = [e for e in module.generate_launch_description().entities if isinstance(e, DeclareLaunchArgument)]
    assert {a.name for a in declared} == {"model_path", "expert", "wait_for_subscribers", "params_file", "namespace",
                                          "episodes", "task", "seed_offset", "control_rate_hz"}
    assert all(a.description for a in declared)


def test_arm_demo_runs_the_expert_when_asked(tmp_path, capsys):
    from kv_vla_ros.ros.worlds import arm_demo

    assert arm_demo.main(["--episodes", "1", "--task", "Arm-CueCarryShort", "--expert", "--control-rate-hz", "40",
                          "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "driven by the scripted expert (--expert)" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["success_rate"] == 1.0 and summary["decision_accuracy"] == 1.0 and summary["driver"] == "expert"
    assert arm_demo.main(["--model", str(tmp_path / "nothing")]) == 1
    assert "--model: no checkpoint at" in capsys.readouterr().out


def test_kv_vla_node_drives_the_arm_over_dds_as_the_offline_closed_loop(tmp_path, capsys):
    """kv_vla_node (a tiny random π0 that fits the arm, one action per inference) and arm_sim_node
    in policy mode, two processes over DDS: the episode's actions are the in-process closed loop's."""
    from pi0_models import arm_pi0_checkpoint

    from kv_vla_ros.ros.worlds import arm_demo

    ckpt = arm_pi0_checkpoint(tmp_path / "pi0", actions_per_inference=1)
    assert arm_demo.main(["--episodes", "1", "--task", "Arm-CueCarryShort", "--model", str(ckpt),
                          "--control-rate-hz", "40", "--timeout", "120", "--out", str(tmp_path / "out")]) == 0
    assert f"driven by kv_vla_node with {ckpt}" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["per_episode"][0]["steps"] == 150  # the drifting policy never opens the hand
    assert summary["episodes_identical_offline"] == 1
