"""Ending the nodes as a ROS user does, each in its own process over real DDS: any number
of SIGINTs at any moment (start-up included) end kv_vla_node and minigrid_sim_node with exit 0 and
no traceback, kv_vla_node's last command a stop; with use_sim_time and no /clock the node says
that it waits for /clock (a log line and a WARN diagnostic) instead of publishing nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from kv_vla_ros.ros.processes import pick_free_domain_id, spawn_node  # noqa: E402
from ros_helpers import Probe, build_tiny_model, wait_until_up  # noqa: E402

# The node scripts, what `ros2 run` and `ros2 launch` start (installed in lib/kv_vla_ros)
NODES = Path(__file__).resolve().parents[2] / "nodes"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("shutdown") / "tiny")


def spawn_entry(entry: str, domain: int, params: dict, log, tmp_path):
    return spawn_node("", domain, params, None, log, script=NODES / entry)


def interrupt(proc, times: int = 2, gap_s: float = 0.3, timeout: float = 30.0) -> int:
    for _ in range(times):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        time.sleep(gap_s)
    return proc.wait(timeout)


def test_two_sigints_while_acting_end_the_node_with_a_stop_and_exit_0(model, tmp_path):
    domain = pick_free_domain_id(salt=83)
    probe = Probe(domain)
    log = tmp_path / "node.log"
    proc = spawn_entry("kv_vla_node", domain, {"model_path": str(model), "instruction": "go to the key",
                                               "stale_timeout_s": 2.0}, log, tmp_path)
    try:
        wait_until_up(probe, proc, log)
        assert probe.wait_for(lambda: (probe.publish_image(40, 40), any(a[1] for a in probe.actions))[1], timeout=20)
        t_signal = time.monotonic()
        rc = interrupt(proc, gap_s=0.3)
        time.sleep(0.3)
        after = probe.actions_since(t_signal)
    finally:
        probe.close()
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, text[-2000:]
    assert after and not after[-1][1], "the node's last command was not a stop"


@pytest.mark.parametrize("delay_s", [0.2, 1.5])
def test_sigints_during_start_up_end_the_node_with_exit_0(model, tmp_path, delay_s):
    log = tmp_path / "node.log"
    proc = spawn_entry("kv_vla_node", pick_free_domain_id(salt=89), {"model_path": str(model)}, log, tmp_path)
    time.sleep(delay_s)
    rc = interrupt(proc, times=3, gap_s=0.2)
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]


def test_two_sigints_end_the_simulator_with_exit_0(tmp_path):
    log = tmp_path / "sim.log"
    proc = spawn_entry("minigrid_sim_node", pick_free_domain_id(salt=97), {"frame_rate_hz": 50.0}, log, tmp_path)
    deadline = time.monotonic() + 60
    while "waiting for a policy node" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    rc = interrupt(proc, times=2, gap_s=0.3)
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, text[-2000:]


def test_every_input_present_but_no_instruction_is_named(model, tmp_path):
    """Frames arrive, no instruction does: the node says it waits for the instruction (it once said
    only 'no fresh action')."""
    domain = pick_free_domain_id(salt=103)
    probe = Probe(domain)
    log = tmp_path / "node.log"
    proc = spawn_entry("kv_vla_node", domain, {"model_path": str(model), "stale_timeout_s": 0.5}, log, tmp_path)
    try:
        wait_until_up(probe, proc, log)
        for k in range(30):
            probe.publish_image(40, 40, seed=k)
            time.sleep(0.05)
        _, diag, level, message = probe.diagnostics[-1]
        assert diag["state"] == "waiting" and "no instruction yet: publish one on /instruction" in message, message
        assert probe.actions and not any(action for _, action, _ in probe.actions)  # stop commands only
    finally:
        probe.close()
        rc = interrupt(proc, times=1)
    assert rc == 0, log.read_text()[-2000:]


def test_sim_time_without_a_clock_is_reported_and_a_clock_starts_the_node(model, tmp_path):
    from rosgraph_msgs.msg import Clock

    domain = pick_free_domain_id(salt=101)
    probe = Probe(domain)
    log = tmp_path / "node.log"
    proc = spawn_entry("kv_vla_node", domain, {"model_path": str(model), "use_sim_time": True,
                                               "instruction": "go to the key"}, log, tmp_path)
    try:
        wait_until_up(probe, proc, log)
        time.sleep(1.5)
        _, diag, level, message = probe.diagnostics[-1]
        assert level == 1 and "no /clock message has arrived" in message and diag["state"] == "waiting"
        assert "waiting for /clock" in log.read_text() and not probe.actions  # the control timer runs on ROS time
        clock_pub = probe.node.create_publisher(Clock, "/clock", 10)
        for k in range(40):  # sim time goes on: the node acts on it
            clock_pub.publish(Clock(clock=probe.stamp()))
            probe.publish_image(40, 40, seed=k)
            time.sleep(0.05)
        assert probe.actions  # ticks on the simulated clock
        assert "no /clock" not in probe.last_diag(after=time.monotonic()).get("reason", "")
    finally:
        probe.close()
        rc = interrupt(proc, times=1)
    assert rc == 0, log.read_text()[-2000:]
