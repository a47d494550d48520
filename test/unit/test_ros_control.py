"""Pure control logic and parameter specs (no DDS): hold, clamp, stop, watchdog, NaN, twist, params."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import yaml

from kv_vla_ros.cache.config import CacheConfig
from kv_vla_ros.ros.node.control import ControlLoop, TwistAdapter, format_source_stamp, parse_source_stamp
from kv_vla_ros.ros.node.param_specs import (NODE_PARAMS, all_param_specs, cache_changes_from_params, cache_param_specs,
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
        assert cmd.state == "running" and cmd.action.tolist() == pytest.approx([1.0, -0.2])
        assert cmd.source_stamp == (1, 2)
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

    from kv_vla_ros.ros.node.session_setup import state_from_msg
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

    def step_action_chunk(self, images, state=None):
        import time

        time.sleep(0.05)
        self.calls.append(("step", int(images[0][0, 0, 0])) + tuple(int(i[0, 0, 0]) for i in images[1:])
                          + ((None,) if state is None else (float(state[0]),)))
        return np.array([[1]])

    def stats(self):
        return {"steps": len(self.calls)}


def test_inference_worker_takes_the_newest_frame_and_counts_drops():
    import time

    from kv_vla_ros.ros.node.inference import InferenceWorker

    session, actions, errors = _SlowSession(), [], []
    worker = InferenceWorker(session, lambda f: np.full((2, 2, 3), f, np.uint8),
                             lambda a, stamp, now, episode, started: actions.append((stamp, episode)),
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

    from kv_vla_ros.ros.node.inference import InferenceWorker

    session, chunks = _SlowSession(), []
    ready = {"value": False}
    worker = InferenceWorker(session, lambda f: np.full((2, 2, 3), f, np.uint8),
                             lambda a, stamp, now, episode, started: chunks.append(stamp), lambda kind, msg: None,
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


def test_the_state_is_paired_with_the_frame_by_stamp_not_by_arrival():
    """A simulator publishes a view's state and image with one stamp; when the image is taken
    first (an executor that found both ready), the step waits for the state of that stamp instead
    of stepping with the previous view's; a state without stamps, or with none close once the slop
    went by, is the newest."""
    import time

    from kv_vla_ros.ros.node.inference import InferenceWorker

    session, chunks = _SlowSession(), []
    worker = InferenceWorker(session, lambda f: np.full((2, 2, 3), f, np.uint8),
                             lambda a, stamp, now, episode, started: chunks.append(stamp), lambda kind, msg: None,
                             sync_slop_s=0.5)
    worker.start()
    try:
        worker.start_episode("go")
        worker.submit_state(np.array([1.0]), (5, 0))
        worker.submit(10, (5, 0))
        assert _wait(lambda: chunks == [(5, 0)]) and session.calls[-1] == ("step", 10, 1.0)
        worker.submit(11, (6, 0))  # view 2's image before its state
        time.sleep(0.2)
        assert chunks == [(5, 0)]  # waits: the state stamped (6, 0) may still come
        worker.submit_state(np.array([2.0]), (6, 0))
        assert _wait(lambda: len(chunks) == 2) and session.calls[-1] == ("step", 11, 2.0)
        worker.submit(12, (7, 0))  # no state of that stamp ever comes: after the slop, the newest
        t0 = time.monotonic()
        assert _wait(lambda: len(chunks) == 3) and session.calls[-1] == ("step", 12, 2.0)
        assert 0.4 < time.monotonic() - t0 < 1.5
        worker.submit_state(np.array([3.0]), None)  # no stamp (Float32MultiArray): the newest, at once
        worker.submit(13, (8, 0))
        assert _wait(lambda: len(chunks) == 4, timeout=0.4) and session.calls[-1] == ("step", 13, 3.0)
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



# ---- seamless chunks, whole-chunk safety, deadman, camera pairing -------------------
def arm_loop(**kw) -> ControlLoop:
    loop = ControlLoop(False, 0, 2, stale_timeout_s=5.0, actions_per_inference=4, period_s=0.1, **kw)
    loop.episode_started(0.0)
    loop.frame_received(0.0)
    return loop


def test_a_chunk_arriving_mid_chunk_skips_the_executed_rows_and_merges_the_overlap():
    from kv_vla_ros.vla.action_queue import merge_chunk

    queued, new = np.array([[1.0], [1.0]]), np.array([[0.0], [2.0], [2.0], [2.0], [9.0]])
    # 1 action executed since the inference started: row 0 is overtaken, rows 1.. line up with the queue
    assert merge_chunk(queued, new, 1, 4, "replace")[:, 0].tolist() == [2.0, 2.0, 2.0]
    assert merge_chunk(queued, new, 1, 4, "blend")[:, 0].tolist() == pytest.approx([1 + 1 / 3, 1 + 2 / 3, 2.0])
    assert merge_chunk(np.zeros((0, 1)), new, 7, 4)[:, 0].tolist() == [9.0]  # late: at least its last row
    with pytest.raises(ValueError, match="action_chunk_merge"):
        merge_chunk(queued, new, 0, 4, "average")
    loop = arm_loop()
    loop.set_chunking(threshold=0.5, merge_rule="blend")
    loop.action_ready(np.full((4, 2), 1.0), None, 0.0)
    assert not loop.needs_chunk
    loop.tick(0.1)
    loop.tick(0.2)
    assert loop.needs_chunk  # 2 of 4 remain: the next inference starts while the chunk still runs
    token = loop.inference_started()
    loop.tick(0.3)  # executed while the model thinks
    assert loop.action_ready(np.full((4, 2), 3.0), None, 0.35, started=token) == ""
    values = [loop.tick(0.4 + 0.1 * k) for k in range(4)]
    # the row executed meanwhile is skipped; one queued action overlaps: blended halfway, then the new rows
    assert [v.action[0] for v in values] == pytest.approx([2.0, 3.0, 3.0, 3.0])
    assert [v.chunk_index for v in values] == [1, 2, 3, 3] and values[-1].state == "running"


@pytest.mark.parametrize("rule, setup, chunk", [
    ("non_finite", {}, [[0.1, 0.1], [np.nan, 0.1]]),
    ("bounds", {"reject_out_of_bounds": True}, [[0.1, 0.1], [0.1, 2.0]]),
    ("max_step", {"max_step": [0.5]}, [[0.1, 0.1], [0.1, 0.9]]),
    ("max_step", {"max_step": [0.5]}, [[0.8, 0.0], [0.8, 0.0]]),  # across the seam with the command last sent
    ("max_jerk", {"max_jerk": [100.0]}, [[0.0, 0.0], [0.0, 0.0], [0.3, 0.0], [0.0, 0.0]]),  # 0.6 / 0.1^3 = 600
])
def test_a_chunk_breaking_a_safety_rule_is_rejected_whole(rule, setup, chunk):
    loop = arm_loop(action_min=[-1.0], action_max=[1.0])
    loop.set_safety(**setup)
    assert loop.action_ready(np.zeros((1, 2)), None, 0.0) == "" and loop.tick(0.1).state == "running"
    reason = loop.action_ready(np.array(chunk), None, 0.15)
    assert reason and loop.rejections[rule] == 1 and loop.rejected_actions == 1, reason
    cmds = [loop.tick(0.2 + 0.1 * k) for k in range(3)]
    assert all(c.is_stop and c.state == "error" for c in cmds)  # none of its rows, stop by default
    assert loop.action_ready(np.zeros((4, 2)), None, 0.6) == "" and loop.tick(0.7).state == "running"


def test_a_rejected_chunk_can_hold_the_command_last_sent():
    loop = arm_loop()
    loop.set_safety(max_step=[0.5], on_reject="hold")
    loop.action_ready(np.array([[0.2, 0.2]]), None, 0.0)
    assert loop.tick(0.1).plan.tolist() == [[0.2, 0.2]]
    assert "max_step" in loop.action_ready(np.array([[0.9, 0.2]]), None, 0.15)
    cmd = loop.tick(0.2)
    assert cmd.state == "holding" and cmd.action.tolist() == pytest.approx([0.2, 0.2]) and cmd.plan is not None
    with pytest.raises(ValueError, match="safety.on_reject"):
        loop.set_safety(on_reject="brake")
    with pytest.raises(ValueError, match="safety.max_step"):
        loop.set_safety(max_step=[0.0])


def test_the_deadman_stops_without_a_recent_true():
    loop = arm_loop()
    loop.enable_required, loop.enable_timeout_s = True, 0.5
    loop.action_ready(np.zeros((4, 2)), None, 0.0)
    cmd = loop.tick(0.1)
    assert cmd.is_stop and cmd.state == "deadman" and loop.input_problem(0.1)[0] == "deadman"
    loop.enable_received(True, 0.2)
    loop.action_ready(np.zeros((4, 2)), None, 0.2)
    assert loop.tick(0.3).state == "running" and loop.input_problem(0.3) is None
    cmd = loop.tick(0.75)
    assert cmd.is_stop and "no true on enable_topic for 0.55 s" in cmd.reason and loop.needs_chunk
    loop.enable_received(True, 0.8)
    loop.enable_received(False, 0.85)  # false stops at once
    assert loop.tick(0.9).state == "deadman"


def test_cameras_are_paired_by_stamp_within_the_slop():
    from collections import deque

    from kv_vla_ros.ros.node.inference import pair_frame

    wrist = deque([("w1", (10, 0)), ("w2", (10, 100_000_000)), ("w3", (10, 200_000_000))])
    assert pair_frame(wrist, (10, 100_000_000), 0.02)[0] == "w2"  # not the newest (arrival order)
    assert pair_frame(wrist, (10, 110_000_000), 0.02)[0] == "w2"
    assert pair_frame(wrist, (10, 150_000_000), 0.02) == "unpaired"  # newer frames exist, none close
    assert pair_frame(wrist, (10, 300_000_000), 0.02) is None  # may still come: wait
    assert pair_frame(wrist, (10, 100_000_000), 0.0)[0] == "w3"  # no slop: the newest


def test_state_joints_are_picked_by_name():
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import JointState

    from kv_vla_ros.ros.node.session_setup import state_from_msg
    from kv_vla_ros.vla.policy import StreamingPolicy

    policy = StreamingPolicy()
    policy.state_dim = 2
    msg = JointState(name=["gripper", "elbow", "shoulder"], position=[0.9, 0.2, 0.1])
    assert state_from_msg(msg, policy, ["shoulder", "elbow"]).tolist() == pytest.approx([0.1, 0.2])
    with pytest.raises(ValueError, match=r"state_joint_names: \['wrist'\] not in the JointState's names"):
        state_from_msg(msg, policy, ["shoulder", "wrist"])


def test_the_control_thread_runs_under_the_real_time_priority_it_was_given_or_says_why_not():
    import os
    import time

    from kv_vla_ros.ros.node.control_thread import ControlThread

    policies = []
    normal = ControlThread(lambda: policies.append(("normal", os.sched_getscheduler(0))), 0.01)
    normal.start()
    assert normal.scheduling == "normal" and normal.scheduling_error is None
    fifo = ControlThread(lambda: policies.append(("fifo", os.sched_getscheduler(0))), 0.01, priority=10)
    fifo.start()
    time.sleep(0.1)
    normal.cancel(), fifo.cancel()
    assert ("normal", os.SCHED_OTHER) in policies
    if fifo.scheduling_error is None:  # permitted (root, CAP_SYS_NICE or an rtprio limit): the tick runs FIFO
        assert fifo.scheduling == "SCHED_FIFO 10" and ("fifo", os.SCHED_FIFO) in policies
        assert ("fifo", os.SCHED_OTHER) not in policies
    else:  # refused: said why, ticks on the normal scheduler all the same
        assert "PermissionError" in fifo.scheduling_error and fifo.scheduling == "normal"
        assert ("fifo", os.SCHED_OTHER) in policies


def test_the_control_thread_skips_missed_periods_instead_of_bursting():
    import time

    from kv_vla_ros.ros.node.control_thread import ControlThread

    ticks = []

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) == 3:
            time.sleep(0.095)  # a stall of almost 5 periods

    thread = ControlThread(tick, 0.02)
    thread.start()
    time.sleep(0.4)
    thread.cancel()
    gaps = np.diff(ticks)
    assert thread.skipped >= 3 and len(ticks) >= 10
    assert gaps.min() > 0.005  # no burst of catch-up ticks after the stall
    assert not thread._thread.is_alive()


def test_twist_stamped_and_trajectory_outputs_and_their_stops():
    """CommandOutputs on a real lifecycle node (in process, a private domain): what each
    action_output publishes while running and to stop."""
    pytest.importorskip("rclpy")
    import time

    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import LifecycleNode
    from trajectory_msgs.msg import JointTrajectory

    from kv_vla_ros.ros.node.control import ControlCommand
    from kv_vla_ros.ros.node.outputs import CommandOutputs, check_output
    from kv_vla_ros.ros.processes import pick_domain_id

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=pick_domain_id(salt=107))
    try:
        node = LifecycleNode("outputs_test", context=context)
        listener = rclpy.create_node("outputs_listener", context=context)
        got = {"twist": [], "traj": []}
        listener.create_subscription(TwistStamped, "cmd_vel", got["twist"].append, 10)
        listener.create_subscription(JointTrajectory, "joint_trajectory", got["traj"].append, 10)
        adapter = TwistAdapter(False, [], [], linear_index=0, angular_index=1, max_linear=1.0, max_angular=1.0)
        stamped = CommandOutputs(node, "twist_stamped", [], adapter, True)
        names = check_output("trajectory", ["j0", "j1"], 2, False)
        trajectory = CommandOutputs(node, "trajectory", names, adapter, True)
        node.trigger_configure()
        node.trigger_activate()
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        plan = np.array([[0.5, -0.2], [0.6, -0.1]])
        for cmd in (ControlCommand(np.float32([0.5, -0.2]), None, "running", plan=plan),
                    ControlCommand(np.float32([0.6, -0.1]), None, "running"),
                    ControlCommand(None, None, "stale"), ControlCommand(None, None, "stale")):
            stamped.publish(cmd, 0.05)
            trajectory.publish(cmd, 0.05)
            time.sleep(0.05)
        end = time.monotonic() + 3.0
        while time.monotonic() < end and (len(got["twist"]) < 4 or len(got["traj"]) < 2):
            executor.spin_once(timeout_sec=0.1)
        twists = [(m.twist.linear.x, m.twist.angular.z, m.header.frame_id) for m in got["twist"]]
        assert twists == [(0.5, pytest.approx(-0.2), "base_link"),
                          (pytest.approx(0.6), pytest.approx(-0.1), "base_link"),
                          (0.0, 0.0, "base_link"), (0.0, 0.0, "base_link")]
        # one trajectory per plan (not per tick) and one empty trajectory per stop
        assert [len(m.points) for m in got["traj"]] == [2, 0] and got["traj"][0].joint_names == ["j0", "j1"]
        with pytest.raises(ValueError, match="joint_names"):
            check_output("trajectory", ["j0"], 2, False)
        with pytest.raises(ValueError, match="action_output"):
            check_output("position", [], 2, False)
        executor.shutdown()
        listener.destroy_node()
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_lockstep_steps_only_on_a_view_after_the_newest_action():
    """``wait_for_action_view``: a frame taken before the newest action ran (``view_ok`` False) is
    not stepped on, however fresh; the view after it is, with a state no older than it."""
    import time

    from kv_vla_ros.ros.node.inference import InferenceWorker

    session, chunks = _SlowSession(), []
    after = {"stamp": (6, 0)}  # the first view after the newest action (None: lockstep off)
    view_ok = lambda stamp: None if after["stamp"] is None else stamp >= after["stamp"]  # noqa: E731
    worker = InferenceWorker(session, lambda f: np.full((2, 2, 3), f, np.uint8),
                             lambda a, stamp, now, episode, started: chunks.append(stamp), lambda kind, msg: None,
                             sync_slop_s=0.5, view_ok=view_ok)
    worker.start()
    try:
        worker.start_episode("go")
        worker.submit_state(np.array([1.0]), (5, 0))
        worker.submit(10, (5, 0))  # the view the action answered: taken before it ran
        time.sleep(0.25)
        assert not chunks
        worker.submit(11, (6, 0))  # the view after the action, its state not yet in: waits for it
        time.sleep(0.25)
        assert not chunks and worker.frames_dropped == 1
        worker.submit_state(np.array([2.0]), (6, 0))
        assert _wait(lambda: chunks == [(6, 0)]) and session.calls[-1] == ("step", 11, 2.0)
        after["stamp"] = None  # off: the newest frame, whenever it was taken
        worker.submit(12, (4, 0))
        assert _wait(lambda: chunks == [(6, 0), (4, 0)])
    finally:
        worker.stop()


def test_warm_up_runs_one_inference_beside_the_nodes_session(tmp_path):
    """configure's warm-up: one inference on blank inputs through a throwaway session on the same
    model (its lazy first-call costs paid before activate), the node's own session untouched."""
    from kv_vla_ros.ros.node.session_setup import warm_up
    from kv_vla_ros.vla import VLASession, load_policy
    from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

    policy = load_policy(str(write_pi0_checkpoint(tmp_path / "pi0", num_cameras=2, state_dim=3, action_dim=2)))
    session = VLASession(policy, policy.default_cache_config())
    before = session.stats()
    assert np.isfinite(warm_up(session)) and session.stats() == before and session.steps == 0
