"""Inference delay in the closed loop (`kv_vla_ros.eval.delayed`) and real-time chunking for π0:
the delayed loop executes exactly the actions a hand-worked schedule predicts; delay 0 is the
synchronous loop; rtc with a zero-weight guide is plain sampling, with a hard mask it reproduces the
queued actions on the overlap, and a soft guide pulls the overlap toward them."""

from __future__ import annotations

import numpy as np
import pytest

from kv_vla_ros.eval.delayed import DelayedChunks
from kv_vla_ros.eval.motion import motion_record
from kv_vla_ros.vla.action_queue import ChunkGuide, rtc_guide, rtc_weights


class CountingSession:
    """A policy whose chunk says which inference it is: row r of inference k is [10 k + r]; records
    the guide each inference got (the schedule is what is under test, not a model)."""

    class policy:
        supports_guide = True
        model_type = "counting"

    def __init__(self, length: int = 8):
        self.length, self.calls, self.guides = length, 0, []

    def step_action_chunk(self, images, state=None, guide=None):
        self.guides.append(guide)
        chunk = 10.0 * self.calls + np.arange(self.length, dtype=np.float64)[:, None]
        self.calls += 1
        return chunk


def run_schedule(steps: int, n: int, delay: int, rule: str = "replace", threshold=0.0):
    session = CountingSession()
    chunks = DelayedChunks(session, n, delay, rule, threshold)
    executed, starts = [], []
    for t in range(steps):
        if chunks.maybe_infer(t, None):
            starts.append(t)
        executed.append(float(chunks.action(t)[0][0]))
    return executed, starts, chunks.stale_ticks, session


def test_delay_zero_is_the_synchronous_schedule():
    executed, starts, stale, _ = run_schedule(9, 3, 0)
    assert executed == [0, 1, 2, 10, 11, 12, 20, 21, 22] and starts == [0, 3, 6] and stale == 0


def test_the_delayed_loop_holds_then_runs_each_chunk_from_its_first_row():
    # threshold 0: an inference starts when the queue is empty (steps 3, 8), delivers 2 steps later;
    # the last command is held meanwhile (2 stale ticks each); nothing was popped: from row 0
    executed, starts, stale, _ = run_schedule(13, 3, 2)
    assert starts == [0, 3, 8]
    assert executed == [0, 1, 2, 2, 2, 10, 11, 12, 12, 12, 20, 21, 22] and stale == 4


def test_an_early_start_skips_the_rows_overtaken_and_merges_the_overlap():
    # threshold 2/3 of 3: start with <= 2 queued; a chunk started at step 1 arrives at step 3 after
    # 2 pops: rows 2.. (row 2 only, as kv_vla_node: actions_per_inference rows per chunk at most)
    executed, starts, stale, _ = run_schedule(8, 3, 2, threshold=2 / 3)
    assert starts == [0, 1, 4, 7]
    assert executed == [0, 1, 2, 12, 12, 12, 20, 21] and stale == 2
    # delay 1, start with <= 2 queued: the chunk started at step 1 arrives at step 2 (1 popped):
    # rows 1-2 of it replace / blend the one queued action (2); the next starts at 3 with 1 queued
    executed, starts, _, _ = run_schedule(6, 3, 1, threshold=2 / 3)
    assert starts == [0, 1, 3, 5] and executed == [0, 1, 11, 12, 21, 22]
    blended, _, _, _ = run_schedule(4, 3, 1, "blend", threshold=2 / 3)
    assert blended[:3] == [0, 1, pytest.approx(0.5 * 2 + 0.5 * 11)]


def test_auto_threshold_is_rtcs_schedule_and_rtc_guides_toward_the_old_plan():
    executed, starts, stale, session = run_schedule(10, 5, 2, "rtc", threshold=None)
    # auto: start with <= 2 queued (at 3, 6, 9); each chunk arrives 2 steps later as the queue runs
    # dry, rows 2-4 of it (the 2 overtaken skipped): no stale tick
    assert starts == [0, 3, 6, 9] and stale == 0
    assert executed == [0, 1, 2, 3, 4, 12, 13, 14, 22, 23]
    first, second = session.guides[:2]
    assert first is None  # nothing planned: plain sampling
    # the plan when it started: the 2 queued actions, then the chunk's rows past the executed ones
    np.testing.assert_array_equal(second.target[:, 0], [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(second.weights, rtc_weights(5, 2))
    assert second.weights[:2].tolist() == [1.0, 1.0] and 0 < second.weights[4] < second.weights[2] < 1


def test_rtc_weights_are_the_papers_soft_mask():
    w = rtc_weights(6, 2)
    assert w[:2].tolist() == [1.0, 1.0] and np.all(np.diff(w[2:]) < 0) and 0 < w[-1] < w[2] < 1
    c = 4 / 5  # (q - i) / (q - d + 1) at i = d
    assert w[2] == pytest.approx(c * np.expm1(c) / np.expm1(1.0))
    assert rtc_guide(None, 2) is None and rtc_weights(3, 0)[0] < 1.0


def test_motion_splits_seams_from_inside_chunks():
    commands = np.array([[0.0, 1], [0.1, 1], [0.2, 1], [0.9, -1], [1.0, -1]])
    m = motion_record(commands, [0, 0, 0, 1, 1], ["dx", "gripper"])  # the gripper is not motion
    assert m["seam_step"] == [pytest.approx(0.7)] and m["inner_step"] == pytest.approx([0.1, 0.1, 0.1])
    assert len(m["seam_jerk"]) == 2 and m["inner_jerk"] == []


def test_bad_delay_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="inference_delay_steps"):
        DelayedChunks(CountingSession(), 3, -1)
    with pytest.raises(ValueError, match="action_chunk_merge"):
        DelayedChunks(CountingSession(), 3, 1, "smooth")

    class NoFlow(CountingSession):
        class policy:
            supports_guide = False
            model_type = "kv_vla"

    with pytest.raises(ValueError, match="rtc needs a flow policy"):
        DelayedChunks(NoFlow(), 3, 1, "rtc")


# ---- with a real (tiny, random) π0 -----------------------------------------------------------------
@pytest.fixture(scope="module")
def arm_pi0(tmp_path_factory):
    from pi0_models import arm_pi0_checkpoint

    from kv_vla_ros.vla import load_policy

    return load_policy(str(arm_pi0_checkpoint(tmp_path_factory.mktemp("pi0"), actions_per_inference=3)))


def fresh_session(policy):
    from kv_vla_ros.vla import VLASession

    session = VLASession(policy, policy.default_cache_config())
    session.reset("carry the cube")
    return session


def test_delay_zero_equals_the_synchronous_closed_loop(arm_pi0):
    from kv_vla_ros.eval.closed_loop import make_robot, robot_command, run_episode
    from kv_vla_ros.vla import VLASession
    from kv_vla_ros.vla.action_queue import ActionQueue

    robot = make_robot("Arm-CueCarryShort-v0", 30)
    try:
        record = run_episode(robot, VLASession(arm_pi0, arm_pi0.default_cache_config()), 3)
        session = VLASession(arm_pi0, arm_pi0.default_cache_config())  # the loop as it was: the world waits
        queue, expected = ActionQueue(arm_pi0.default_actions_per_inference), []
        frame, instruction = robot.reset(3)
        session.reset(instruction)
        while not robot.done:
            if queue.needs_inference:
                queue.push(session.step_action_chunk(frame, robot.state()))
            command = robot_command(robot, queue.pop())
            expected.append(command.tolist())
            frame = robot.step(command).frame
        delayed = run_episode(robot, VLASession(arm_pi0, arm_pi0.default_cache_config()), 3, 2, "replace", None)
    finally:
        robot.close()
    assert record["commands"] == expected and record["stale_ticks"] == 0
    assert delayed["commands"] != expected and len(delayed["motion"]["seam_jerk"]) > 0


def test_rtc_with_a_zero_weight_guide_is_plain_sampling(arm_pi0):
    rng = np.random.default_rng(0)
    frame, state = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.normal(size=9)
    plain = fresh_session(arm_pi0).step_action_chunk(frame, state)
    guide = ChunkGuide(rng.normal(size=(4, 4)), np.zeros(4))
    guided = fresh_session(arm_pi0).step_action_chunk(frame, state, guide=guide)
    np.testing.assert_array_equal(guided, plain)


def test_rtc_with_a_hard_mask_reproduces_the_queued_actions_and_a_soft_one_pulls_toward_them(arm_pi0):
    rng = np.random.default_rng(1)
    frame, state = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.normal(size=9)
    plain = fresh_session(arm_pi0).step_action_chunk(frame, state)
    queued = plain[:4] + rng.normal(scale=0.3, size=(4, 4))  # what an earlier chunk left queued
    hard = fresh_session(arm_pi0).step_action_chunk(frame, state, guide=ChunkGuide(queued, np.ones(4), hard=True))
    np.testing.assert_allclose(hard[:4], queued, atol=1e-4)
    soft = fresh_session(arm_pi0).step_action_chunk(frame, state, guide=rtc_guide(queued, 2))
    gap = lambda chunk: np.abs(chunk[:2] - queued[:2]).mean()  # noqa: E731
    assert gap(soft) < 0.5 * gap(plain)  # the rows executed before it arrives follow the queue
    assert np.all(np.isfinite(soft))
