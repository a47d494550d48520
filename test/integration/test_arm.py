"""The robot-arm world (kv_vla_ros.sim.arm): a real Franka Panda in PyBullet, its scripted expert, the
memory facts the evaluator reads, determinism by seed, and bags written from it (sqlite3 and mcap)
that read back to the same frames, joint states and actions. Real simulator, real bags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kv_vla_ros.data.bagio import BagReader
from kv_vla_ros.data.episodes import BagTopics, iter_episode_events
from kv_vla_ros.data.generate import generate_bag
from kv_vla_ros.sim import ARM_TASKS, eval_seeds, make_sim, normalize_task, train_seeds
from kv_vla_ros.sim.arm import ArmExpert, ArmRobot
from kv_vla_ros.sim.arm.task import draw_layout
from kv_vla_ros.sim.rollout import expert_rollout

SHORT, LONG = "Arm-CueCarryShort-v0", "Arm-CueCarryLong-v0"


@pytest.fixture(scope="module")
def short_robot():
    robot = ArmRobot(SHORT)
    yield robot
    robot.close()


def test_task_ids_work_where_minigrid_ids_do():
    assert ARM_TASKS[:2] == (SHORT, LONG)
    assert normalize_task("Arm-CueCarryLong") == LONG
    robot = make_sim("Arm-CueCarryShort", max_steps=7)
    assert isinstance(robot, ArmRobot) and robot.max_steps == 7 and robot.frame_size == 64
    robot.close()
    with pytest.raises(ValueError, match="Arm-NoSuchTask.*Arm-CueCarryShort-v0"):
        normalize_task("Arm-NoSuchTask")


@pytest.mark.parametrize("seed", eval_seeds(4, 40))
def test_expert_places_the_cube_on_the_cued_pad(short_robot, seed):
    rollout = expert_rollout(short_robot, ArmExpert(short_robot), seed)
    record = rollout.record
    assert record["success"] and short_robot.placed_side == short_robot.layout.target_side
    assert record["cue_steps"] == list(range(short_robot.variant.cue_steps))  # the lamp lit, then dark
    assert record["decision_correct"] is True and record["decision_step"] > max(record["cue_steps"])
    assert rollout.frames.shape == (len(rollout), 64, 64, 3) and rollout.states.shape == (len(rollout), 9)
    assert np.abs(rollout.actions).max() <= 1.0


def test_long_variant_decides_at_least_150_steps_after_the_cue():
    robot = ArmRobot(LONG)
    try:
        for seed in eval_seeds(2):
            record = expert_rollout(robot, ArmExpert(robot), seed).record
            assert record["success"]
            assert record["decision_step"] - max(record["cue_steps"]) >= 150
    finally:
        robot.close()


def test_a_wrong_turn_is_a_wrong_decision_and_a_failure(short_robot):
    """Follow the expert along the lane, then take the cube to the other pad: decided wrong, failed."""
    from kv_vla_ros.sim.arm.task import CARRY_Z, MAX_DELTA, PAD_Y, PLACE_Z

    robot, expert = short_robot, ArmExpert(short_robot)
    robot.reset(eval_seeds(1, 3)[0])
    end, right = robot.variant.lane_end, robot.layout.target_side
    while robot.target[0] < end - 0.002 or robot.target[2] < CARRY_Z - 0.002:
        robot.step(expert.act())
    wrong = np.array([end, -right * PAD_Y, PLACE_Z])
    while np.abs(wrong - robot.target).max() > 1e-4:
        robot.step([*np.clip((wrong - robot.target) / MAX_DELTA, -1, 1), -1.0])
    for _ in range(5):  # the motors catch up before the hand opens
        robot.step([0.0, 0.0, 0.0, -1.0])
    result = robot.step([0.0, 0.0, 0.0, 1.0])
    assert result.terminated and not result.success and robot.placed_side == -right
    assert robot.decision_correct is False and robot.decision_side == -right


def test_same_seed_same_episode_other_seed_other_cue():
    a, b = ArmRobot(SHORT), ArmRobot(SHORT)
    try:
        seed = train_seeds(1, 11)[0]
        ra, rb = expert_rollout(a, ArmExpert(a), seed), expert_rollout(b, ArmExpert(b), seed)
        rb2 = expert_rollout(b, ArmExpert(b), seed)  # the same robot again, after another episode
        for other in (rb, rb2):
            assert np.array_equal(ra.frames, other.frames) and np.array_equal(ra.states, other.states)
            assert np.array_equal(ra.actions, other.actions)
        cues = [draw_layout(a.variant, s).cue for s in train_seeds(40)]
        assert 0.3 < np.mean(cues) < 0.7  # both colours, about as often
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("bad, what", [([0.1, 0.0, 0.0], "dimension 4"), ([np.nan, 0, 0, -1], "non-finite"),
                                       ([0.0, 1.5, 0.0, -1.0], "out of bounds"), ("up", "expected 4 numbers")])
def test_bad_actions_are_refused_by_name(short_robot, bad, what):
    short_robot.reset(0)
    with pytest.raises(ValueError, match=what):
        short_robot.step(bad)
    assert short_robot.steps == 0 and not short_robot.done  # nothing applied


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_round_trip_holds_frames_states_and_actions(short_robot, tmp_path, storage):
    seeds = train_seeds(2, 5)
    summary = generate_bag(tmp_path / "arm", SHORT, 2, seed_offset=5, storage=storage, split="train",
                           start_time_ns=10**18)
    assert summary["seeds"] == seeds and summary["successes"] == 2
    want = [expert_rollout(short_robot, ArmExpert(short_robot), s, i) for i, s in enumerate(seeds)]
    with BagReader(tmp_path / "arm") as bag:
        assert bag.topics["/joint_states"][0] == "sensor_msgs/msg/JointState"
        records = [json.loads(m.data) for _, _, m in bag.messages(["/episode"])]
        episodes, frames = [], []
        for kind, value in iter_episode_events(bag, BagTopics(state="/joint_states"), None):
            if kind == "frame":
                frames.append(value)
            elif kind == "end":
                episodes.append((frames, value.aligned()))
                frames = []
    assert [r["seed"] for r in records] == seeds and records == [w.record for w in want]
    for (got, actions), ref in zip(episodes, want):
        assert np.array_equal(np.stack([f.rgb for f in got]), ref.frames)
        assert np.array_equal(np.stack([f.state for f in got]), ref.states)
        assert np.array_equal(np.stack(actions), ref.actions)


def test_a_state_received_after_its_frame_is_still_that_frames_state(tmp_path):
    """Over DDS a joint state can arrive just after the image it was read with (same header stamp):
    it is that frame's state, not the next one's; a frame with no state at all is skipped."""
    from kv_vla_ros.data.bagio import AtomicBagWriter
    from kv_vla_ros.data.messages import IMAGE, JOINT_STATE, STRING, make_image, make_joint_state, make_string

    period, t0 = 100_000_000, 10**18
    frames = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    with AtomicBagWriter(tmp_path / "bag", "mcap") as bag:
        ts = bag.typestore
        bag.write("/instruction", t0, make_string(ts, "carry the cube"), STRING)
        for k in range(4):
            t = t0 + (k + 1) * period
            after = k in (0, 2)  # the state of frames 0 and 2 arrives 1 ms after them
            if k != 3:  # frame 3 never gets its own state: the newest before it (frame 2's) is used
                bag.write("/joint_states", t + (1_000_000 if after else -1_000_000),
                          make_joint_state(ts, [float(k)] * 9, t), JOINT_STATE)
            bag.write("/image", t, make_image(ts, frames[k], t), IMAGE)
    counters: dict = {}
    with BagReader(tmp_path / "bag") as bag:
        got = [v for kind, v in iter_episode_events(bag, BagTopics(state="/joint_states", action=None), None,
                                                    counters) if kind == "frame"]
    assert [f.state[0] for f in got] == [0.0, 1.0, 2.0, 2.0]
    assert all(np.array_equal(f.rgb, frames[k]) for k, f in enumerate(got))
    assert counters["frames_missing_inputs"] == 0


def test_bag_generate_on_two_workers_writes_the_one_process_bag(tmp_path, capsys):
    from kv_vla_ros.cli import main

    common = ["bag", "generate", "--task", "Arm-CueCarryShort", "--episodes", "3", "--split", "train",
              "--max-steps", "9", "--start-time", "1000", "--no-progress"]
    assert main([*common, "-o", str(tmp_path / "one"), "--workers", "1"]) == 0
    assert main([*common, "-o", str(tmp_path / "two"), "--workers", "2", "--storage", "mcap"]) == 0
    assert "3 episodes of Arm-CueCarryShort-v0 (train seeds), 27 steps" in capsys.readouterr().out
    with BagReader(tmp_path / "one") as a, BagReader(tmp_path / "two") as b:
        assert a.topics == b.topics
        for topic in ("/image", "/joint_states", "/action", "/episode", "/instruction"):
            assert [(t, bytes(raw)) for _, t, raw in a.raw_messages([topic])] == \
                [(t, bytes(raw)) for _, t, raw in b.raw_messages([topic])], topic
