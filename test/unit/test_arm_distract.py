"""Arm-CueCarryDistract (issue 30): the long lane with salient events during the carry that never
decide the pad. Real PyBullet, real bags: the expert still succeeds >= 150 steps after the cue, an
episode is a pure function of its seed, the distractors are as visible as the cue and drawn apart
from it, and a bag of the task reads back to the same frames, states and actions."""

from __future__ import annotations

import numpy as np
import pytest

from kv_vla_ros.data.bagio import BagReader
from kv_vla_ros.data.episodes import BagTopics, iter_episode_events
from kv_vla_ros.data.generate import generate_bag
from kv_vla_ros.sim import ARM_TASKS, eval_seeds, normalize_task, train_seeds
from kv_vla_ros.sim.arm import ArmExpert, ArmRobot
from kv_vla_ros.sim.arm.scene import CUE_COLOURS, LAMP_OFF
from kv_vla_ros.sim.arm.task import CUE_NAMES, FLASH_STEPS, VARIANTS, draw_layout
from kv_vla_ros.sim.rollout import expert_rollout

LONG, DISTRACT = "Arm-CueCarryLong-v0", "Arm-CueCarryDistract-v0"


@pytest.fixture(scope="module")
def robot():
    robot = ArmRobot(DISTRACT)
    yield robot
    robot.close()


@pytest.fixture(scope="module")
def rollout(robot):
    return expert_rollout(robot, ArmExpert(robot), eval_seeds(1, 7)[0])


def test_the_task_id_is_listed_with_the_other_arm_tasks():
    assert DISTRACT in ARM_TASKS and normalize_task("Arm-CueCarryDistract") == DISTRACT
    assert VARIANTS[DISTRACT].distractors and not VARIANTS[LONG].distractors


def test_expert_succeeds_at_least_150_steps_after_the_cue(rollout):
    record = rollout.record
    assert record["success"] and record["decision_correct"] is True
    assert record["decision_step"] - max(record["cue_steps"]) >= 150


def test_distractors_show_during_the_carry_and_never_with_the_cue(robot, rollout):
    layout = draw_layout(robot.variant, rollout.record["seed"])
    assert 3 <= len(layout.flashes) <= 6 and layout.slide is not None
    cue_end = robot.variant.cue_steps
    lit = [t for t in range(len(rollout)) if layout.flash_colour(t) is not None]
    sliding = [t for t in range(len(rollout)) if layout.slide_progress(t) is not None]
    assert len(lit) == FLASH_STEPS * len(layout.flashes) and len(sliding) > 10
    assert min(lit + sliding) > cue_end and max(lit) < rollout.record["decision_step"]
    # a flash changes the frame where the distractor lamp stands: frames around a flash's start differ
    start = layout.flashes[0][0]
    before, during = rollout.frames[start - 1].astype(int), rollout.frames[start].astype(int)
    assert (np.abs(during - before).sum(-1) > 60).sum() >= 10


def test_the_distractor_lamp_is_at_least_as_salient_as_the_cue_lamp(robot):
    """At 64 px, lighting the distractor lamp changes at least as many pixels as lighting the cue lamp."""
    robot.reset(eval_seeds(1, 3)[0])
    scene = robot.scene
    scene.set_lamp(LAMP_OFF)
    scene.set_distractors(LAMP_OFF, None, LAMP_OFF)
    dark = scene.render().astype(int)
    for name in CUE_NAMES:
        scene.set_lamp(CUE_COLOURS[name])
        cue = (np.abs(scene.render().astype(int) - dark).sum(-1) > 60).sum()
        scene.set_lamp(LAMP_OFF)
        scene.set_distractors(CUE_COLOURS[name], None, LAMP_OFF)
        distractor = (np.abs(scene.render().astype(int) - dark).sum(-1) > 60).sum()
        scene.set_distractors(LAMP_OFF, 0.5, CUE_COLOURS[name])
        block = (np.abs(scene.render().astype(int) - dark).sum(-1) > 60).sum()
        scene.set_distractors(LAMP_OFF, None, LAMP_OFF)
        assert cue >= 10 and distractor >= cue and block >= 10, (name, cue, distractor, block)


def test_the_distractors_never_decide_the_pad(robot, rollout):
    """Same seed, long variant: the same cue and start, the same expert actions and joint states step
    for step, the same outcome; only the frames differ. And over many seeds the distractors' colours
    are drawn apart from the cue: a red flash is as likely under a blue cue as under a red one."""
    seed = rollout.record["seed"]
    long_robot = ArmRobot(LONG)
    try:
        plain = expert_rollout(long_robot, ArmExpert(long_robot), seed)
    finally:
        long_robot.close()
    assert draw_layout(VARIANTS[LONG], seed).cue == draw_layout(robot.variant, seed).cue
    assert np.array_equal(plain.actions, rollout.actions) and np.array_equal(plain.states, rollout.states)
    assert plain.record["success"] == rollout.record["success"]
    assert plain.record["decision_step"] == rollout.record["decision_step"]
    assert not np.array_equal(plain.frames, rollout.frames)
    red_share = {0: [], 1: []}
    for s in train_seeds(400):
        layout = draw_layout(robot.variant, s)
        red_share[layout.cue].extend([c == 0 for _, c in layout.flashes] + [layout.slide[1] == 0])
    assert abs(np.mean(red_share[0]) - np.mean(red_share[1])) < 0.06
    assert all(0.4 < np.mean(v) < 0.6 for v in red_share.values())


def test_same_seed_same_episode_other_seed_other_distractors(robot, rollout):
    seed = rollout.record["seed"]
    again = expert_rollout(robot, ArmExpert(robot), seed)
    assert np.array_equal(again.frames, rollout.frames) and np.array_equal(again.actions, rollout.actions)
    layouts = {(lay.flashes, lay.slide) for lay in (draw_layout(robot.variant, s) for s in train_seeds(20))}
    assert len(layouts) == 20


def test_bag_round_trip_holds_the_distractor_frames(robot, tmp_path):
    seed = train_seeds(1, 5)[0]
    summary = generate_bag(tmp_path / "arm", DISTRACT, 1, seed_offset=5, storage="mcap", split="train",
                           start_time_ns=10**18)
    assert summary["seeds"] == [seed] and summary["successes"] == 1
    want = expert_rollout(robot, ArmExpert(robot), seed)
    frames, actions = [], None
    with BagReader(tmp_path / "arm") as bag:
        for kind, value in iter_episode_events(bag, BagTopics(state="/joint_states"), None):
            if kind == "frame":
                frames.append(value)
            elif kind == "end":
                actions = value.aligned()
    assert np.array_equal(np.stack([f.rgb for f in frames]), want.frames)
    assert np.array_equal(np.stack([f.state for f in frames]), want.states)
    assert np.array_equal(np.stack(actions), want.actions)


def test_late_cue_variant_lights_the_cue_after_ten_plain_frames():
    """Arm-CueCarryLateCue: the cue is not the episode's first step (what an eviction that keeps the
    oldest steps, h2o, holds anyway); the expert and physics are still the long variant's."""
    late = ArmRobot("Arm-CueCarryLateCue")
    try:
        seed = eval_seeds(1, 9)[0]
        record = expert_rollout(late, ArmExpert(late), seed).record
        assert record["cue_steps"] == list(range(10, 15)) and record["success"]
        assert record["decision_step"] - max(record["cue_steps"]) >= 150
        assert draw_layout(late.variant, seed) == draw_layout(VARIANTS[DISTRACT], seed)  # same draws
    finally:
        late.close()
