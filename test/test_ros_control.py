"""Pure control logic and parameter specs (no DDS): hold, clamp, stop, watchdog, NaN, twist, params."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import yaml

from kv_vla_ros.cache.config import CacheConfig
from kv_vla_ros.ros.control import ControlLoop, TwistAdapter, format_source_stamp, parse_source_stamp
from kv_vla_ros.ros.param_specs import (NODE_PARAMS, all_param_specs, cache_changes_from_params, cache_param_specs,
                                   cache_value_to_param, coerce_param)
from ros_helpers import PARAMS_FILE


def running_loop(**kw) -> ControlLoop:
    loop = ControlLoop(discrete=False, num_actions=0, action_dim=2, stale_timeout_s=0.5, **kw)
    loop.episode_started(0.0)
    loop.frame_received(0.0)
    return loop


def test_holds_last_action_and_clamps_live():
    loop = running_loop(action_min=[-1.0], action_max=[1.0, 0.5])
    assert loop.tick(0.01).is_stop and loop.tick(0.01).state == "waiting"
    assert loop.action_ready([3.0, -0.2], (1, 2), 0.1) == ""
    for t in (0.11, 0.2, 0.3):  # held between inferences
        cmd = loop.tick(t)
        assert cmd.state == "running" and cmd.action.tolist() == pytest.approx([1.0, -0.2]) and cmd.source_stamp == (1, 2)
    loop.set_limits([-0.1], [0.1])
    assert loop.tick(0.3).action.tolist() == pytest.approx([0.1, -0.1])
    with pytest.raises(ValueError, match="action.min"):
        loop.set_limits([1.0], [0.0])
    with pytest.raises(ValueError, match="action.max"):
        loop.set_limits([0.0], [1.0, 2.0, 3.0])


def test_watchdog_stops_after_timeout_without_frames_or_actions():
    loop = running_loop()
    loop.action_ready([0.1, 0.1], None, 0.0)
    assert loop.tick(0.5).state == "running"
    cmd = loop.tick(0.51)
    assert cmd.is_stop and cmd.state == "stale" and "no fresh message on image" in cmd.reason
    loop.frame_received(0.6)  # frames again: the action planned before the gap was dropped
    cmd = loop.tick(0.61)
    assert cmd.is_stop and cmd.state == "waiting" and "action" in cmd.reason
    loop.action_ready([0.2, 0.2], None, 0.62)
    assert loop.tick(0.63).state == "running"
    loop.frame_received(1.0)
    assert loop.tick(1.0).state == "running"  # held: 0.37 s since the last fresh action
    loop.frame_received(1.2)
    cmd = loop.tick(1.2)
    assert cmd.is_stop and cmd.state == "stale" and "no fresh action" in cmd.reason


def test_a_chunk_inferred_for_an_ended_episode_is_never_published():
    loop = running_loop()
    loop.episode_started(0.0, episode=1)
    assert loop.action_ready(np.full((4, 2), 0.3), None, 0.05, episode=1) == ""
    assert loop.tick(0.06).action.tolist() == pytest.approx([0.3, 0.3])
    loop.episode_started(0.1, episode=2)  # a new instruction: the queued rest of the chunk goes
    assert loop.tick(0.11).is_stop
    # the inference under way when it arrived ends now, with the old instruction's chunk
    assert loop.action_ready(np.full((4, 2), 0.7), None, 0.12, episode=1) == ""
    cmd = loop.tick(0.13)
    assert cmd.is_stop and cmd.state == "waiting" and loop.stale_chunks == 1 and loop.rejected_actions == 0
    assert loop.action_ready(np.full((4, 2), -0.2), None, 0.2, episode=2) == ""  # the new episode's
    assert loop.tick(0.21).action.tolist() == pytest.approx([-0.2, -0.2]) and loop.stale_chunks == 1


def test_chunks_execute_one_action_per_tick_and_refill_after_actions_per_inference():
    loop = ControlLoop(False, 0, 2, stale_timeout_s=0.5, action_min=[-1.0], action_max=[1.0],
                       inputs=["cam_high", "cam_wrist", "joint_states"], actions_per_inference=3)
    assert loop.tick(0.0).state == "waiting" and "cam_high, cam_wrist, joint_states" in loop.tick(0.0).reason
    for i in range(3):
        loop.input_received(i, 0.0)
    chunk = np.array([[0.1, 0.1], [0.2, 5.0], [0.3, -0.3], [0.4, 0.4]])  # 4 predicted, 3 executed
    assert loop.needs_chunk and loop.action_ready(chunk, (7, 0), 0.0) == "" and not loop.needs_chunk
    cmds = [loop.tick(0.01 * k) for k in range(1, 6)]
    assert [c.chunk_index for c in cmds] == [0, 1, 2, 2, 2]  # then the last action is held
    assert cmds[1].action.tolist() == pytest.approx([0.2, 1.0])  # every queued action is clamped
    assert all(c.source_stamp == (7, 0) and c.state == "running" for c in cmds)
    assert loop.needs_chunk  # the third action was used: the next inference may start
    loop.set_actions_per_inference(1)  # live: from the next chunk on
    loop.action_ready(chunk, (8, 0), 0.06)
    assert [loop.tick(0.07).chunk_index, loop.tick(0.08).chunk_index] == [0, 0] and loop.needs_chunk
    loop.set_actions_per_inference(4)
    loop.action_ready(chunk, (9, 0), 0.09)
    assert [loop.tick(0.1 + 0.01 * k).action[0] for k in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    loop.action_ready(chunk, (10, 0), 0.2)
    loop.input_received(0, 0.6)
    loop.input_received(1, 0.6)  # the state stops arriving
    cmd = loop.tick(0.61)
    assert cmd.is_stop and cmd.state == "stale" and "joint_states" in cmd.reason and "cam_" not in cmd.reason
    assert loop.needs_chunk and loop.input_problem(0.61)[0] == "stale"  # the queue was dropped


def test_a_chunk_with_one_bad_action_is_rejected_whole():
    loop = ControlLoop(False, 0, 2, stale_timeout_s=0.5, actions_per_inference=4)
    loop.frame_received(0.0)
    loop.action_ready(np.full((4, 2), 0.5), None, 0.0)
    assert loop.tick(0.01).chunk_index == 0
    bad = np.full((4, 2), 0.1)
    bad[3, 1] = np.inf
    assert "non-finite value in action 3" in loop.action_ready(bad, None, 0.02)
    cmds = [loop.tick(0.03 + 0.01 * k) for k in range(5)]  # nothing of it, and the old queue is gone too
    assert all(c.is_stop and c.state == "error" for c in cmds) and loop.rejected_actions == 1
    assert loop.needs_chunk and loop.action_ready(np.full((4, 2), 0.2), None, 0.1) == ""
    assert loop.tick(0.11).action.tolist() == pytest.approx([0.2, 0.2])


def test_nonfinite_and_bad_actions_never_held():
    loop = running_loop()
    loop.action_ready([0.1, 0.1], None, 0.0)
    assert "non-finite" in loop.action_ready([np.nan, 0.0], None, 0.1)
    cmd = loop.tick(0.1)
    assert cmd.is_stop and cmd.state == "error" and loop.rejected_actions == 1
    assert "expected 2" in loop.action_ready([1.0], None, 0.2)
    discrete = ControlLoop(discrete=True, num_actions=3, action_dim=1)
    discrete.frame_received(0.0)
    for bad in ([3.0], [-1.0], [1.5], [np.inf]):
        assert discrete.action_ready(bad, None, 0.0)
        assert discrete.tick(0.0).is_stop
    assert discrete.action_ready([2.0], None, 0.0) == "" and discrete.tick(0.0).action.tolist() == [2.0]


def test_disabled_and_inference_failure_stop():
    loop = running_loop()
    loop.action_ready([0.1, 0.1], None, 0.0)
    loop.enabled = False
    assert loop.tick(0.1).state == "disabled" and loop.tick(0.1).is_stop
    loop.enabled = True
    loop.inference_failed("boom")
    assert loop.tick(0.1).is_stop and loop.tick(0.1).state == "error"
    loop.action_ready([0.1, 0.1], None, 0.2)
    assert not loop.tick(0.2).is_stop
    loop.episode_started(0.3)  # a new episode forgets the held action
    assert loop.tick(0.31).is_stop


def test_twist_adapter():
    disc = TwistAdapter(True, [0.0, 0.0, 0.2], [0.5, -0.5, 0.0], max_linear=0.1, max_angular=0.4)
    assert disc(np.array([2.0])) == (0.1, 0.0) and disc(np.array([0.0])) == (0.0, 0.4)
    assert disc(np.array([6.0])) == (0.0, 0.0) and disc(None) == (0.0, 0.0)
    cont = TwistAdapter(False, [], [], linear_index=1, angular_index=0, max_linear=1.0, max_angular=1.0)
    assert cont(np.array([-3.0, 0.5])) == (0.5, -1.0)
    assert cont(np.array([np.nan, 0.5])) == (0.0, 0.0)


def test_source_stamp_label_round_trip():
    assert parse_source_stamp(format_source_stamp(12, 345)) == (12, 345)
    assert parse_source_stamp("action") is None and parse_source_stamp("frame_stamp=x.y") is None


def test_cache_params_mirror_every_cache_field():
    names = [s.name for s in cache_param_specs()]
    assert names == [f"cache.{f.name}" for f in dataclasses.fields(CacheConfig)]
    specs = {s.name: s for s in cache_param_specs()}
    assert specs["cache.budget_tokens"].bounds[0] == -1 and specs["cache.gate_threshold"].bounds == (0.0, 1.0)
    assert all(s.description for s in specs.values())
    cfg = CacheConfig(eviction="gated", chunk_size=50, sink_tokens=32, budget_tokens=None, layer_budgets=[300, 400])
    params = {f"cache.{f}": cache_value_to_param(f, getattr(cfg, f)) for f in cfg.to_dict()}
    assert params["cache.budget_tokens"] == -1
    assert CacheConfig().replace(**cache_changes_from_params(params)) == cfg  # round trip through ROS values
    assert cache_changes_from_params({"cache.layer_budgets": [-1], "enabled": True}) == {"layer_budgets": None}


def test_params_file_lists_exactly_the_declared_parameters():
    data = yaml.safe_load(PARAMS_FILE.read_text())
    params = data["/**/kv_vla_node"]["ros__parameters"]
    assert set(params) == {s.name for s in all_param_specs()}
    for spec in NODE_PARAMS:  # types agree with the declarations (rclpy rejects a mismatch at start-up)
        value = params[spec.name]
        kinds = {"bool": bool, "int": int, "double": float, "string": str}
        if spec.kind in kinds:
            assert type(value) is kinds[spec.kind], spec.name
        else:
            assert isinstance(value, list) and value, spec.name
    assert math.isinf(params["action.max"][0])
    CacheConfig.from_dict(cache_changes_from_params({k: v for k, v in params.items()}))  # a valid cache config


def test_pi0_params_file_sets_declared_parameters_and_leaves_the_cache_to_the_checkpoint():
    data = yaml.safe_load((PARAMS_FILE.parent / "pi0.yaml").read_text())
    params = data["/**/kv_vla_node"]["ros__parameters"]
    specs = {s.name: s for s in all_param_specs()}
    assert set(params) <= set(specs) and {"image_topics", "state_topic", "actions_per_inference"} <= set(params)
    assert not any(name.startswith("cache.") for name in params)  # chunk_size, sink_tokens: the checkpoint's
    for name, value in params.items():
        assert coerce_param(specs[name], value) == value, name


def test_robot_state_from_joint_state_or_float32_array_is_checked_against_the_checkpoint():
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float32MultiArray

    from kv_vla_ros.ros.session_setup import state_from_msg
    from kv_vla_ros.vla.policy import StreamingPolicy

    policy = StreamingPolicy()
    policy.state_dim = 3
    joints = JointState(name=["a", "b", "c"], position=[0.1, 0.2, 0.3], velocity=[9.0, 9.0, 9.0])
    assert state_from_msg(joints, policy).tolist() == pytest.approx([0.1, 0.2, 0.3])  # positions only
    assert state_from_msg(Float32MultiArray(data=[1.0, 2.0, 3.0]), policy).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="state: expected a vector of dimension 3"):
        state_from_msg(Float32MultiArray(data=[1.0, 2.0]), policy)
    with pytest.raises(ValueError, match="state: contains NaN"):
        state_from_msg(JointState(position=[0.0, float("nan"), 0.0]), policy)


class _SlowSession:
    """A stand-in session for the worker's own logic (the DDS tests use a real VLASession)."""

    def __init__(self):
        self.calls = []

    def reset(self, instruction):
        self.calls.append(("reset", instruction))

    def step_chunk(self, images, state=None):
        import time

        time.sleep(0.05)
        self.calls.append(("step", int(images[0][0, 0, 0])) + tuple(int(i[0, 0, 0]) for i in images[1:])
                          + ((None,) if state is None else (float(state[0]),)))
        return np.array([[1]])

    def stats(self):
        return {"steps": len(self.calls)}


def test_inference_worker_takes_the_newest_frame_and_counts_drops():
    import time

    from kv_vla_ros.ros.inference import InferenceWorker

    session, actions, errors = _SlowSession(), [], []
    worker = InferenceWorker(session, lambda f: np.full((2, 2, 3), f, np.uint8),
                             lambda a, stamp, now, episode: actions.append((stamp, episode)),
                             lambda kind, msg: errors.append(kind))
    worker.start()
    try:
        worker.submit(1, "before any episode")
        time.sleep(0.05)
        assert worker.frames_without_episode == 1 and not actions
        first = worker.start_episode("go")
        for k in range(2, 8):  # 6 frames in a burst while the first one is being inferred
            worker.submit(k, k)
            time.sleep(0.005)
        time.sleep(0.3)
        steps = [c[1] for c in session.calls if c[0] == "step"]
        assert steps[0] == 2 and steps[-1] == 7 and len(steps) == 2  # the first, then only the newest
        assert worker.frames_dropped == 4 and actions == [(2, first), (7, first)]
        worker.submit("not a number", 8)  # to_rgb raises: a bad frame, counted, worker alive
        time.sleep(0.05)
        assert errors == ["frame"] and worker.frames_rejected == 1
        worker.submit(9, 9)
        second = worker.start_episode("again")  # frames of the old episode not yet taken are dropped
        time.sleep(0.2)
        assert session.calls[-1] == ("reset", "again") and worker.episodes == 2 and second != first
        worker.submit(10, 10)
        time.sleep(0.02)  # its step is under way (50 ms) when the next episode starts
        third = worker.start_episode("once more")
        assert _wait(lambda: session.calls[-1] == ("reset", "once more"))
        assert actions[-1] == (10, second) and third != second  # reported as the episode it belongs to
    finally:
        worker.stop()


def test_inference_worker_steps_on_every_camera_and_the_state_only_when_ready():
    """Two cameras and a state: a step takes each camera's newest frame and the newest state, only
    once the first camera has a frame no step used and ``ready`` (chunk used up, inputs fresh)."""
    import time

    from kv_vla_ros.ros.inference import InferenceWorker

    session, chunks = _SlowSession(), []
    ready = {"value": False}
    worker = InferenceWorker(session, lambda f: np.full((2, 2, 3), f, np.uint8),
                             lambda a, stamp, now, episode: chunks.append(stamp), lambda kind, msg: None,
                             num_cameras=2, ready=lambda: ready["value"])
    worker.start()
    try:
        worker.start_episode("go")
        worker.submit(10, "a", camera=0)
        worker.submit(20, "b", camera=1)
        worker.submit_state(np.array([0.5]))
        time.sleep(0.2)
        assert not chunks  # not ready: no step
        ready["value"] = True
        worker.wake()
        assert _wait(lambda: chunks == ["a"])
        assert session.calls[-1] == ("step", 10, 20, 0.5)
        worker.submit(21, "c", camera=1)  # a new second-camera frame alone does not start a step
        worker.submit_state(np.array([0.7]))
        time.sleep(0.2)
        assert chunks == ["a"]
        worker.submit(11, "d", camera=0)
        assert _wait(lambda: chunks == ["a", "d"]) and session.calls[-1] == ("step", 11, 21, 0.7)
    finally:
        worker.stop()


def _wait(predicate, timeout=3.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False

