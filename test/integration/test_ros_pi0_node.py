"""kv_vla_node serving a π0 checkpoint (tiny, random, written with save_pretrained) in its own
process over real DDS (loopback, private domain): two camera topics and a JointState topic in,
action chunks out one action per control tick, the next inference after ``actions_per_inference``
actions (a live parameter), stop on a stale or missing input, never a non-finite action.

The node runs a real VLASession (see ros_policy_runner.py: an instruction starting with "emit
nan" makes the last action of every chunk NaN)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from kv_vla_ros.ros.node.control import CHUNK_INDEX_PREFIX, SOURCE_STAMP_PREFIX  # noqa: E402
from kv_vla_ros.ros.processes import POLICY_MODULE, pick_domain_id, pick_free_domain_id, spawn_node  # noqa: E402
from ros_helpers import REPO, Probe, rgb_image, serving  # noqa: E402

PI0_PARAMS_FILE = REPO / "config" / "pi0.yaml"
CAMERAS, STATE_TOPIC = ["cam_high", "cam_wrist"], "joint_states"
RATE_HZ, STALE_S, CHUNK = 20.0, 0.5, 4  # the tiny π0 predicts chunks of 4 actions
SETTLE_S = STALE_S + 0.4  # a change of inputs shows in the published actions within this


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

    return write_pi0_checkpoint(tmp_path_factory.mktemp("pi0") / "tiny", num_cameras=2, state_dim=3, action_dim=2)


class Robot:
    """Publishes the two cameras and the joint state from the probe's node, in a thread."""

    def __init__(self, probe: Probe):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState

        self.probe = probe
        self.cams = [probe.node.create_publisher(Image, topic, qos_profile_sensor_data) for topic in CAMERAS]
        self.state_pub = probe.node.create_publisher(JointState, STATE_TOPIC, 10)  # reliable, as robots publish
        self._Image, self._JointState = Image, JointState
        self.cameras_on, self.state_on, self.state = [True, True], True, [0.1, -0.2, 0.3]
        self._k = 0

    def publish_once(self) -> None:
        stamp = self.probe.stamp()
        for i, pub in enumerate(self.cams):
            if self.cameras_on[i]:
                rgb = rgb_image(48, 64, seed=self._k * 2 + i)
                msg = self._Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=rgb.tobytes())
                msg.header.stamp = stamp
                pub.publish(msg)
        if self.state_on:
            msg = self._JointState(name=[f"j{i}" for i in range(len(self.state))], position=list(self.state))
            msg.header.stamp = stamp
            self.state_pub.publish(msg)
        self._k += 1

    def run(self, seconds: float, rate_hz: float = 30.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.publish_once()
            time.sleep(1.0 / rate_hz)

    def run_in_background(self, seconds: float) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(seconds,), daemon=True)
        thread.start()
        return thread


@pytest.fixture(scope="module")
def node(ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ros_pi0_node")
    domain = pick_free_domain_id(salt=61)
    # sink_window: at least 3 steps of 2 cameras x 16 image tokens + the prompt (each step carries it)
    params = {"model_path": str(ckpt), "image_topics": CAMERAS, "state_topic": STATE_TOPIC,
              "control_rate_hz": RATE_HZ, "stale_timeout_s": STALE_S, "cache.eviction": "sink_window",
              "cache.recent_chunks": 2, "cache.budget_tokens": 48 + 3 * 32}
    proc = spawn_node(POLICY_MODULE, domain, params, PI0_PARAMS_FILE, tmp / "node.log",
                      script=REPO / "test" / "ros_policy_runner.py",
                      env_extra={"KV_VLA_TEST_RECORD_GUIDES": str(tmp / "guides.jsonl")})
    with serving(Probe(domain), proc, tmp / "node.log", timeout=90) as probe:
        probe.robot, probe.guides_file = Robot(probe), tmp / "guides.jsonl"
        yield probe


def diag_while_streaming(node, seconds: float = 1.5) -> dict:
    """Diagnostics received while the robot publishes (after it stops, every input goes stale)."""
    thread = node.robot.run_in_background(seconds)
    time.sleep(0.3)
    diag = node.last_diag(after=time.monotonic())
    thread.join()
    return diag


def labels(action) -> tuple[str | None, int | None]:
    """(frame stamp label, chunk index) of a received action message."""
    stamp = next((lab for lab in action[2] if lab.startswith(SOURCE_STAMP_PREFIX)), None)
    index = next((int(lab[len(CHUNK_INDEX_PREFIX):]) for lab in action[2] if lab.startswith(CHUNK_INDEX_PREFIX)), None)
    return stamp, index


def chunk_runs(actions) -> list[list[int]]:
    """Per chunk (consecutive actions answering the same frame), its chunk indices in order."""
    runs: list[list[int]] = []
    last = object()
    for action in actions:
        stamp, index = labels(action)
        if stamp != last:
            runs.append([])
            last = stamp
        runs[-1].append(index)
    return runs


def test_startup_reports_the_pi0_inputs_and_the_checkpoint_default(node):
    diag = node.last_diag(after=time.monotonic())
    assert set(json.loads(diag["input_ages_s"])) == {*CAMERAS, STATE_TOPIC}
    assert int(diag["actions_per_inference"]) == CHUNK  # 0 = the checkpoint's default: the whole chunk
    cache = json.loads(diag["cache_config"])
    assert (cache["eviction"], cache["chunk_size"], cache["budget_tokens"]) == ("sink_window", 32, 144)
    log = node.log.read_text()
    assert "(pi0, continuous actions, action chunks of 4, 4 executed per inference)" in log and "UNBOUNDED" not in log


def test_chunks_are_executed_one_action_per_tick_and_refilled(node):
    node.publish_instruction("pick up the red cube")
    start = time.monotonic()
    node.robot.run(3.0)
    window = [a for a in node.actions_since(start + 1.0) if a[1]]
    runs = chunk_runs(window)[1:-1]  # the first and last may be cut by the window
    print(f"{len(window)} actions, chunk runs {runs[:6]} ...")
    assert len(runs) >= 4, runs
    for run in runs:  # every executed action of a chunk, in order, then (maybe) the last one held
        assert run[:CHUNK] == list(range(CHUNK)) and set(run[CHUNK:]) <= {CHUNK - 1}, run
    assert all(len(a[1]) == 2 and np.all(np.isfinite(a[1])) for a in window)
    diag = diag_while_streaming(node)
    assert diag["state"] == "running" and int(diag["inference_errors"]) == 0 and int(diag["tokens_held"]) <= 144


def test_actions_per_inference_changes_live_within_its_range(node):
    node.publish_instruction("pick up the red cube")  # an episode, whichever test ran before
    (result,) = node.set_params(actions_per_inference=2)
    assert result.successful, result.reason
    start = time.monotonic()
    node.robot.run(2.5)
    runs = chunk_runs([a for a in node.actions_since(start + 0.5) if a[1]])[1:-1]
    assert len(runs) >= 4 and all(run[:2] == [0, 1] and set(run[2:]) <= {1} for run in runs), runs
    assert int(node.last_diag(after=time.monotonic())["actions_per_inference"]) == 2
    for bad in (CHUNK + 1, -1):  # the descriptor's range: 0 (the checkpoint's default) to the chunk length
        (result,) = node.set_params(actions_per_inference=bad)
        assert not result.successful and result.reason, bad
    assert node.set_params(actions_per_inference=0)[0].successful
    assert int(node.last_diag(after=time.monotonic())["actions_per_inference"]) == CHUNK


def test_rtc_guides_each_inference_toward_the_actions_queued_when_it_started(node):
    """action_chunk_merge rtc (live): with half the chunk still queued when the next inference
    starts (threshold 0.5), every such inference is sampled with a guide: the queued actions as
    target, RTC's mask (1 on the rows executed before it arrives, then decaying); replace: none.
    Chunks keep coming, every action finite. (Whether the guide pulls the rows toward the target:
    test_delayed_loop, offline with the same π0 code.)"""
    guides = node.guides_file
    node.publish_instruction("pick up the red cube")
    for merge in ("replace", "rtc"):
        results = node.set_params(action_chunk_threshold=0.5, action_chunk_merge=merge)
        assert all(r.successful for r in results), [r.reason for r in results]
        time.sleep(0.3)
        seen = len(guides.read_text().splitlines()) if guides.exists() else 0
        start = time.monotonic()
        node.robot.run(2.5)
        window = [a for a in node.actions_since(start + 0.5) if a[1]]
        assert all(np.all(np.isfinite(a[1])) for a in window) and len(chunk_runs(window)) >= 5
        got = [json.loads(line) for line in guides.read_text().splitlines()[seen:]]
        assert len(got) >= 5
        if merge == "replace":
            assert all(g is None for g in got)
        else:  # every inference after the first of a run of chunks: 2 queued rows as target
            given = [g for g in got if g is not None]
            assert len(given) >= len(got) - 2 and all(len(g["target"]) == CHUNK // 2 for g in given)
            assert all(g["weights"][0] == 1.0 and len(g["target"][0]) == 2 for g in given)
    diag = diag_while_streaming(node)
    assert diag["state"] == "running" and int(diag["inference_errors"]) == 0
    assert all(r.successful for r in node.set_params(action_chunk_threshold=0.0, action_chunk_merge="replace"))


def test_limits_apply_to_every_queued_action(node):
    node.publish_instruction("pick up the red cube")  # an episode, whichever test ran before
    assert all(r.successful for r in node.set_params(**{"action.min": [-0.05], "action.max": [0.05, 0.02]}))
    start = time.monotonic()
    node.robot.run(1.5)
    window = [a for a in node.actions_since(start + 0.3) if a[1]]
    assert len({labels(a)[1] for a in window}) > 1  # several rows of the chunks were published
    lo, hi = np.float32([-0.05, -0.05]), np.float32([0.05, 0.02])  # the limits as float32, as published
    assert all(np.all(lo <= np.float32(a[1])) and np.all(np.float32(a[1]) <= hi) for a in window), window[:5]
    assert any(np.float32(a[1][1]) == hi[1] for a in window)  # the clamp was active
    assert all(r.successful for r in node.set_params(**{"action.min": [float("-inf")], "action.max": [float("inf")]}))


def test_disabled_publishes_stop_while_chunks_keep_coming(node):
    node.publish_instruction("pick up the red cube")  # an episode, whichever test ran before
    assert node.set_params(enabled=False)[0].successful
    start = time.monotonic()
    first = diag_while_streaming(node, 1.2)
    last = diag_while_streaming(node, 1.5)
    assert all(not a[1] for a in node.actions_since(start + 0.2))  # no queued action reaches the robot
    assert first["state"] == last["state"] == "disabled" and int(last["inferences"]) > int(first["inferences"])
    assert node.set_params(enabled=True)[0].successful
    start = time.monotonic()
    node.robot.run(1.0)
    assert any(a[1] for a in node.actions_since(start))


def test_a_stale_or_missing_input_stops_inference(node):
    node.publish_instruction("pick up the red cube")  # an episode, whichever test ran before
    robot = node.robot
    assert diag_while_streaming(node)["state"] == "running"
    robot.state_on = False  # the cameras go on, the joint state stops
    t_off = time.monotonic()
    robot.run(SETTLE_S)
    first = diag_while_streaming(node, 1.5)  # diagnostics (1 Hz) read after t_off + SETTLE_S
    last = diag_while_streaming(node, 1.5)
    after = node.actions_since(t_off + SETTLE_S)
    assert after and all(not a[1] for a in after)  # stop only
    for diag in (first, last):
        assert diag["state"] == "stale" and STATE_TOPIC in diag["reason"] and diag["stale_inputs"] == STATE_TOPIC
    assert int(last["inferences"]) == int(first["inferences"])  # no inference on stale inputs
    robot.state_on, robot.cameras_on = True, [True, False]  # now the wrist camera is gone
    robot.run(SETTLE_S)
    diag = diag_while_streaming(node)
    assert diag["state"] == "stale" and diag["stale_inputs"] == "cam_wrist", diag["reason"]
    robot.cameras_on = [True, True]
    start = time.monotonic()
    assert diag_while_streaming(node, 2.0)["state"] == "running"
    assert any(a[1] for a in node.actions_since(start))  # acting again on fresh inputs


def test_a_state_of_the_wrong_dimension_is_dropped_and_the_node_stays_up(node):
    node.publish_instruction("pick up the red cube")  # an episode, whichever test ran before
    robot = node.robot
    rejected = int(diag_while_streaming(node, 0.5)["states_rejected"])
    robot.state = [0.1, 0.2, 0.3, 0.4, 0.5]  # the checkpoint takes 3
    robot.run(SETTLE_S)
    diag = diag_while_streaming(node)
    assert int(diag["states_rejected"]) > rejected and node.proc.poll() is None
    assert diag["state"] == "stale" and diag["stale_inputs"] == STATE_TOPIC  # only bad states: none is fresh
    assert "bad robot state dropped (joint_states): state: expected a vector of dimension 3" in node.log.read_text()
    robot.state = [0.1, -0.2, 0.3]
    start = time.monotonic()
    robot.run(1.5)
    assert any(a[1] for a in node.actions_since(start))


def test_a_chunk_with_a_non_finite_action_is_never_published(node):
    node.publish_instruction("emit nan in the last action of every chunk")
    start = time.monotonic()
    diag = diag_while_streaming(node, 2.0)
    window = node.actions_since(start + 0.3)
    assert window and all(not a[1] for a in window)  # its finite rows are not published either
    assert all(np.all(np.isfinite(a[1])) for a in node.actions)
    assert int(diag["rejected_actions"]) > 0 and diag["state"] == "error" and "non-finite" in diag["reason"]
    node.publish_instruction("pick up the red cube")
    start = time.monotonic()
    node.robot.run(1.5)
    assert any(a[1] for a in node.actions_since(start))


def _run_node(args: list[str]) -> tuple[int, str]:
    env = {**__import__("os").environ, "ROS_DOMAIN_ID": str(pick_domain_id(salt=67))}
    proc = subprocess.run([sys.executable, "-m", POLICY_MODULE, "--ros-args", "--params-file", str(PI0_PARAMS_FILE),
                           *args], capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.mark.parametrize("params, expected", [
    (["image_topics:=[a, b, c, d]", "state_topic:=js"], "image_topics: 4 topic(s) given, more than the checkpoint "
                                                         "allows (3); the pi0 checkpoint takes 2 camera frame(s)"),
    (["image_topics:=[a]", "state_topic:=js"], "image_topics: 1 topic(s) given; the pi0 checkpoint takes 2"),
    (["image_topics:=[a, b]", "state_topic:=''"], "state_topic: the pi0 checkpoint takes a robot state of dimension 3"),
    (["image_topics:=[a, b]", "state_topic:=js", "state_type:=pose"], "state_type: expected one of joint_state"),
])
def test_inputs_that_do_not_fit_the_checkpoint_exit_with_one_line(ckpt, params, expected):
    rc, output = _run_node(["-p", f"model_path:={ckpt}"] + [a for p in params for a in ("-p", p)])
    assert rc == 1 and "Traceback" not in output, output
    assert expected in output, output
    assert len([line for line in output.splitlines() if "ERROR" in line]) == 1
