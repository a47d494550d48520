"""kv_vla_node as an arm user runs it, in its own process over real DDS: a tiny random π0
(two cameras, a 3-joint state picked by name, 2-dimensional actions) as a lifecycle node started
unconfigured (``autostart: false``) and driven through its transitions with the lifecycle
services, publishing a JointTrajectory per plan, behind a deadman; whole-chunk safety rules, camera
pairing by stamp and seamless chunks, each checked on what reaches the topics."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from kv_vla_ros.ros.processes import POLICY_MODULE, pick_free_domain_id, spawn_node  # noqa: E402
from ros_helpers import REPO, Probe, serving  # noqa: E402

CAMERAS, STATE_TOPIC, JOINTS = ["cam_high", "cam_wrist"], "joint_states", ["shoulder", "elbow", "wrist"]
RATE_HZ, STALE_S, ENABLE_S, CHUNK = 20.0, 0.5, 0.5, 4


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

    tmp = tmp_path_factory.mktemp("arm")
    ckpt = write_pi0_checkpoint(tmp / "tiny", num_cameras=2, state_dim=3, action_dim=2)
    domain = pick_free_domain_id(salt=71)
    params = {"model_path": str(ckpt), "autostart": False, "image_topics": CAMERAS, "state_topic": STATE_TOPIC,
              "state_joint_names": JOINTS, "action_output": "trajectory", "joint_names": ["j0", "j1"],
              "enable_topic": "enable", "enable_timeout_s": ENABLE_S, "control_rate_hz": RATE_HZ,
              "stale_timeout_s": STALE_S, "camera_sync_slop_s": 0.02, "cache.eviction": "sink_window",
              "cache.recent_chunks": 2, "cache.budget_tokens": 48 + 3 * 32, "instruction": "pick up the cube"}
    record = tmp / "pairs.jsonl"
    proc = spawn_node(POLICY_MODULE, domain, params, REPO / "config" / "pi0.yaml", tmp / "node.log",
                      script=REPO / "test" / "ros_policy_runner.py", env_extra={"KV_VLA_TEST_RECORD": str(record)})
    with serving(Probe(domain), proc, tmp / "node.log", timeout=90, lifecycle="unconfigured") as probe:
        probe.arm = Arm(probe)
        probe.record = record
        yield probe


class Arm:
    """The robot side: two cameras (value-coded frames, one stamp per pair), a JointState with more
    joints than the checkpoint takes and in another order, the deadman heartbeat; records the
    trajectories the node sends."""

    def __init__(self, probe: Probe):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool
        from trajectory_msgs.msg import JointTrajectory

        self.probe = probe
        node = probe.node
        self.cams = [node.create_publisher(Image, t, qos_profile_sensor_data) for t in CAMERAS]
        self.state_pub = node.create_publisher(JointState, STATE_TOPIC, 10)
        self.enable_pub = node.create_publisher(Bool, "enable", 10)
        self.trajectories: list[tuple[float, object]] = []
        node.create_subscription(JointTrajectory, "joint_trajectory",
                                 lambda m: self.trajectories.append((time.monotonic(), m)), 100)
        self._Image, self._JointState, self._Bool = Image, JointState, Bool
        self.enable_on, self.joint_names, self.wrist_first = True, ["wrist", "gripper", "shoulder", "elbow"], False
        self._k = 0

    def _image(self, value: int, stamp):
        msg = self._Image(height=32, width=32, encoding="rgb8", step=96, data=bytes([value]) * (32 * 32 * 3))
        msg.header.stamp = stamp
        return msg

    def publish_once(self) -> None:
        from builtin_interfaces.msg import Time

        self._k += 1
        stamp = Time(sec=1000 + self._k, nanosec=0)  # one stamp per pair, 1 s apart
        value = 10 + (self._k * 10) % 230
        high, wrist = self._image(value, stamp), self._image(value, stamp)
        if self.wrist_first:  # the next pair's wrist frame arrives before this pair's first camera
            nxt = self._image(10 + ((self._k + 1) * 10) % 230, Time(sec=1000 + self._k + 1))
            self.cams[1].publish(wrist)
            self.cams[1].publish(nxt)
            self.cams[0].publish(high)
        else:
            self.cams[0].publish(high)
            self.cams[1].publish(wrist)
        self.state_pub.publish(self._JointState(name=self.joint_names, position=[0.3, 0.9, 0.1, 0.2]))
        if self.enable_on:
            self.enable_pub.publish(self._Bool(data=True))

    def run(self, seconds: float, rate_hz: float = 20.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.publish_once()
            time.sleep(1.0 / rate_hz)

    def background(self, seconds: float) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(seconds,), daemon=True)
        thread.start()
        return thread


def lifecycle(probe: Probe, transition: str | None = None) -> str:
    """Trigger ``transition`` (by label) if given; return the node's state label."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    if transition:
        result = probe._call(ChangeState, "/kv_vla_node/change_state",
                             ChangeState.Request(transition=Transition(label=transition)), timeout=60)
        assert result.success, transition
    return probe._call(GetState, "/kv_vla_node/get_state", GetState.Request()).current_state.label


def diag_while(arm_probe: Probe, seconds: float = 1.5) -> dict:
    thread = arm_probe.arm.background(seconds)
    time.sleep(min(0.5, seconds / 2))
    diag = arm_probe.last_diag(after=time.monotonic())
    thread.join()
    return diag


def running_again(arm_probe: Probe, timeout: float = 8.0) -> dict:
    """The precondition of a test that changes an input: the arm streams until the node reports
    running (after the previous test's inputs stopped, the next inference can take a few seconds
    on a loaded machine: a single 1 s window once read 'stale' there)."""
    end = time.monotonic() + timeout
    diag = diag_while(arm_probe, 1.0)
    while diag["state"] != "running" and time.monotonic() < end:
        diag = diag_while(arm_probe, 1.0)
    return diag


def test_lifecycle_configure_activate_deactivate(arm):
    assert lifecycle(arm) == "unconfigured"
    assert arm.last_diag(after=time.monotonic())["lifecycle"] == "unconfigured"
    assert "autostart is false: unconfigured; `ros2 lifecycle set /kv_vla_node configure`" in arm.log.read_text()
    assert lifecycle(arm, "configure") == "inactive"
    start = time.monotonic()
    diag = diag_while(arm, 1.5)
    assert diag["lifecycle"] == "inactive" and int(diag["inferences"]) == 0
    assert not arm.actions_since(start) and not arm.arm.trajectories  # nothing published while inactive
    assert lifecycle(arm, "activate") == "active"
    start = time.monotonic()
    arm.arm.run(2.0)
    assert any(a[1] for a in arm.actions_since(start)) and arm.arm.trajectories
    t_off = time.monotonic()
    assert lifecycle(arm, "deactivate") == "inactive"
    stops = [a for a in arm.actions_since(t_off) if not a[1]]
    assert stops, "deactivate published no stop"
    assert any(not m.points for t, m in arm.arm.trajectories if t >= t_off)  # the trajectory stop
    arm.arm.run(1.0)
    # (ticks of the node before the transition reached it may arrive after t_off; none after its stop)
    assert all(not a[1] for a in arm.actions_since(stops[0][0]))
    assert lifecycle(arm, "activate") == "active"


def test_trajectory_output_sends_each_plan_and_an_empty_trajectory_to_stop(arm):
    start = time.monotonic()
    arm.arm.run(2.0)
    plans = [m for t, m in arm.arm.trajectories if t >= start and m.points]
    assert len(plans) >= 3
    for msg in plans:
        assert msg.joint_names == ["j0", "j1"] and 1 <= len(msg.points) <= CHUNK
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        assert times == pytest.approx([(i + 1) / RATE_HZ for i in range(len(msg.points))])
        assert all(len(p.positions) == 2 and np.all(np.isfinite(p.positions)) for p in msg.points)
        assert not msg.points[0].velocities  # positions only
    # the first point of each plan is the action published on the same tick
    published = {tuple(np.float32(a[1])) for a in arm.actions_since(start) if a[1]}
    assert sum(tuple(np.float32(m.points[0].positions)) in published for m in plans) >= len(plans) - 1


def test_the_deadman_stops_and_pauses_inference_until_true_returns(arm):
    diag = running_again(arm)
    assert diag["state"] == "running", diag
    arm.arm.enable_on = False
    t_off = time.monotonic()
    arm.arm.run(ENABLE_S + 0.5)
    first = diag_while(arm, 1.2)
    last = diag_while(arm, 1.2)
    after = arm.actions_since(t_off + ENABLE_S + 0.3)
    assert after and all(not a[1] for a in after)
    assert first["state"] == last["state"] == "deadman" and "enable_topic" in last["reason"]
    assert int(last["inferences"]) == int(first["inferences"])  # no inference meanwhile
    assert any(not m.points for t, m in arm.arm.trajectories if t > t_off)
    arm.arm.enable_on = True
    start = time.monotonic()
    arm.arm.run(1.5)
    assert any(a[1] for a in arm.actions_since(start))


def test_state_joints_are_selected_by_name_and_a_missing_one_is_named(arm):
    diag = running_again(arm)
    assert diag["state"] == "running" and int(diag["states_rejected"]) == 0
    arm.arm.joint_names = ["wrist", "gripper", "shoulder", "knee"]  # no elbow
    arm.arm.run(STALE_S + 0.4)
    diag = diag_while(arm, 1.2)
    assert diag["state"] == "stale" and diag["stale_inputs"] == STATE_TOPIC
    assert "state_joint_names: ['elbow'] not in the JointState's names" in diag["reason"]
    arm.arm.joint_names = ["wrist", "gripper", "shoulder", "elbow"]
    assert diag_while(arm, 1.5)["state"] == "running"


def test_cameras_are_paired_by_stamp_not_by_arrival(arm):
    arm.arm.wrist_first = True  # by arrival order the first camera would meet the next pair's wrist frame
    arm.record.write_text("")
    arm.arm.run(2.0)
    arm.arm.wrist_first = False
    pairs = [json.loads(line) for line in arm.record.read_text().splitlines()]
    assert len(pairs) >= 3 and all(a == b for a, b in pairs), pairs
    assert arm.set_params(camera_sync_slop_s=0.0)[0].successful  # the newest frame, as before: one pair apart
    arm.record.write_text("")
    arm.arm.wrist_first = True
    arm.arm.run(1.5)
    arm.arm.wrist_first = False
    assert arm.set_params(camera_sync_slop_s=0.02)[0].successful
    pairs = [json.loads(line) for line in arm.record.read_text().splitlines()]
    assert pairs and any(a != b for a, b in pairs), pairs  # the check above can fail


@pytest.mark.parametrize("rule, params", [
    ("max_step", {"safety.max_step": [1e-6]}),
    ("max_jerk", {"safety.max_jerk": [1e-6]}),
    ("bounds", {"safety.reject_out_of_bounds": True, "action.min": [50.0], "action.max": [60.0]}),
])
def test_a_chunk_breaking_a_rule_is_rejected_whole_over_dds(arm, rule, params):
    before = json.loads(diag_while(arm, 0.8)["rejected_chunks"])[rule]
    assert all(r.successful for r in arm.set_params(**{k.replace(".", "__"): v for k, v in params.items()}))
    start = time.monotonic()
    diag = diag_while(arm, 2.0)
    after = [a for a in arm.actions_since(start + 0.4)]
    assert after and all(not a[1] for a in after), after[:3]  # none of their actions reached the robot
    assert json.loads(diag["rejected_chunks"])[rule] > before and diag["state"] == "error" and rule in diag["reason"]
    reset = {"safety.max_step": [float("inf")], "safety.max_jerk": [float("inf")],
             "safety.reject_out_of_bounds": False, "action.min": [float("-inf")], "action.max": [float("inf")]}
    assert all(r.successful for r in arm.set_params(**{k.replace(".", "__"): v for k, v in reset.items()}))
    start = time.monotonic()
    arm.arm.run(1.5)
    assert any(a[1] for a in arm.actions_since(start))


def test_the_next_chunk_is_inferred_while_the_current_one_runs(arm):
    assert arm.set_params(action_chunk_threshold=0.75, action_chunk_merge="blend")[0].successful
    start = time.monotonic()
    arm.arm.run(2.5)
    window = [a for a in arm.actions_since(start + 0.5) if a[1]]
    labels = [(a[2][1], int(a[2][2].split("=")[1])) for a in window]  # (frame stamp, chunk row)
    runs: list[list[int]] = []
    for k, (stamp, row) in enumerate(labels):
        if k == 0 or stamp != labels[k - 1][0]:
            runs.append([])
        runs[-1].append(row)
    repeats = sum(x == y for x, y in zip(labels, labels[1:]))
    print(f"{len(window)} actions, runs {runs[:8]}, {repeats} held repeats")
    assert len(runs) >= 4
    # a chunk replaced before its last row: the next one was inferred and merged while it ran
    assert any(max(run) < CHUNK - 1 for run in runs[1:-1]), runs
    assert arm.set_params(action_chunk_threshold=0.0, action_chunk_merge="replace")[0].successful


def test_cleanup_frees_the_model_and_configure_rebuilds_it(arm):
    assert lifecycle(arm, "deactivate") == "inactive"
    assert lifecycle(arm, "cleanup") == "unconfigured"
    assert "unconfigured: model freed" in arm.log.read_text()
    assert lifecycle(arm, "configure") == "inactive" and lifecycle(arm, "activate") == "active"
    start = time.monotonic()
    arm.arm.run(1.5)
    assert any(a[1] for a in arm.actions_since(start))
    assert lifecycle(arm, "shutdown") == "finalized"
    assert arm.proc.wait(10) == 0  # the shutdown transition ends the process cleanly
