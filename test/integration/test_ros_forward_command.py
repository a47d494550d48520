"""kv_vla_node feeding a forward command controller (issue 28), in its own process over real DDS:
``action_output: float64_multi_array`` publishes each action as ``std_msgs/Float64MultiArray`` on
``output_topic``, and its stop (``forward_command_stop: zeros``) once when disabled; a checkpoint that
recorded its state joint names reads a JointState in the driver's order (more joints, another
order) with no ``state_joint_names`` parameter."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from kv_vla_ros.ros.processes import POLICY_MODULE, pick_free_domain_id, spawn_node  # noqa: E402
from ros_helpers import REPO, Probe, serving  # noqa: E402

TOPIC = "/forward_position_controller/commands"
JOINTS = ["shoulder", "elbow", "wrist"]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

    tmp = tmp_path_factory.mktemp("forward")
    ckpt = write_pi0_checkpoint(tmp / "tiny", num_cameras=1, state_dim=3, action_dim=2)
    policy_file = ckpt / "kv_vla_policy.json"
    cfg = json.loads(policy_file.read_text())
    policy_file.write_text(json.dumps({**cfg, "state_names": JOINTS, "control_rate_hz": 20.0}))
    params = {"model_path": str(ckpt), "image_topics": ["image"], "state_topic": "joint_states",
              "action_output": "float64_multi_array",
              "output_topic": TOPIC, "forward_command_stop": "zeros", "control_rate_hz": 20.0,
              "stale_timeout_s": 0.5, "instruction": "pick up the cube"}
    domain = pick_free_domain_id(salt=83)
    proc = spawn_node(POLICY_MODULE, domain, params, REPO / "config" / "pi0.yaml", tmp / "node.log")
    with serving(Probe(domain), proc, tmp / "node.log", timeout=90) as probe:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        probe.commands = []
        probe.node.create_subscription(Float64MultiArray, TOPIC,
                                       lambda m: probe.commands.append((time.monotonic(), list(m.data))), 100)
        probe.state_pub = probe.node.create_publisher(JointState, "joint_states", 10)
        probe.JointState = JointState
        yield probe


def drive(probe, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        probe.publish_image(rgb=np.full((32, 32, 3), 90, np.uint8))
        msg = probe.JointState(name=["wrist", "gripper", "shoulder", "elbow"], position=[0.3, 0.9, 0.1, 0.2])
        msg.header.stamp = probe.stamp()
        probe.state_pub.publish(msg)
        time.sleep(0.05)


def test_forward_commands_follow_the_actions_and_stop_with_zeros(node):
    start = time.monotonic()
    drive(node, 2.5)
    sent = [c for t, c in node.commands if t >= start]
    actions = [a for t, a, _ in node.actions_since(start) if a]
    assert sent and actions, node.log.read_text()[-2000:]  # the 4-joint state was read by the recorded names
    assert all(len(c) == 2 and np.all(np.isfinite(c)) for c in sent)
    assert any(np.allclose(c, a, atol=1e-6) for c in sent[-5:] for a in actions[-8:])  # float32 action, as float64
    thread = threading.Thread(target=drive, args=(node, 3.0), daemon=True)
    thread.start()  # inputs keep coming: the stop is the one disabling sends, not a stale input's
    diag = node.last_diag(after=time.monotonic())
    assert int(diag.get("states_rejected", 0)) == 0
    t_off = time.monotonic()
    node.set_params(enabled=False)
    thread.join()
    after = [c for t, c in node.commands if t >= t_off]
    assert after.count([0.0, 0.0]) == 1 and after[-1] == [0.0, 0.0]  # the stop, sent once
    node.set_params(enabled=True)
