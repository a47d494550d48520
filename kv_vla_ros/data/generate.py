"""Write simulator episodes straight into a bag, with no ROS graph running: the expert's
demonstrations, or (``model=``) a closed-loop run of a checkpoint with the full cache.
(The command, ``kv-vla bag generate``, with ``--workers``: ``kv_vla_ros.data.generate_cli``.)

Per episode: the instruction (``std_msgs/String``) on the instruction topic, then per step one
``sensor_msgs/Image`` rgb8 frame (header stamps one control period apart), for a robot with joints
(the arm) its ``sensor_msgs/JointState`` (positions; the frame's header stamp, 1 µs of bag time
before the frame: read just before the camera), then the action taken (expert's or model's) as
``std_msgs/Float32MultiArray`` labelled ``frame_stamp=`` with the frame's stamp (the policy node's
convention), and at the end a ``std_msgs/String`` JSON record on the episode topic (the simulator
nodes' ``~/episode`` format). Seeds: the simulator's held-out eval seeds by default
(``kv_vla_ros.sim.eval_seeds``, so a bag and ``kv-vla eval`` cover the same levels), or its
training seeds (``split="train"``: demonstrations to learn from). The bag appears at ``output``
only when complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import numpy as np

from kv_vla_ros.data.bagio import AtomicBagWriter, normalize_topic
from kv_vla_ros.data.messages import (
    FLOAT32_ARRAY,
    IMAGE,
    JOINT_STATE,
    STRING,
    make_action,
    make_image,
    make_joint_state,
    make_string,
)

# The action goes out this long after its frame (an inference delay); a frame period at most.
ACTION_DELAY_NS = 20_000_000
STATE_LEAD_NS = 1_000  # a joint state is read this long (bag time) before its camera frame
ROLES = ("image", "instruction", "action", "episode", "state")
DEFAULT_TOPICS = {"image": "/image", "instruction": "/instruction", "action": "/action", "episode": "/episode",
                  "state": "/joint_states"}
def topic_names(topics: dict | None) -> dict[str, str]:
    names = dict(DEFAULT_TOPICS)
    names.update({k: normalize_topic(v, f"{k}_topic") for k, v in (topics or {}).items()})
    return names


def model_rollouts(robot, model, seeds: list[int]) -> Iterable:
    """Closed-loop rollouts of ``model`` (full cache) on ``robot``: discrete ids, or continuous
    actions clamped to the robot's [-1, 1] (as the policy node clamps to its action limits)."""
    from kv_vla_ros.sim.rollout import Rollout, episode_record
    from kv_vla_ros.vla import VLASession

    session = VLASession(model, model.config.cache.replace(eviction="full"))
    continuous = getattr(robot, "discrete", True) is False
    for index, seed in enumerate(seeds):
        frame, instruction = robot.reset(seed)
        session.reset(instruction)
        frames, states, actions = [], [], []
        while not robot.done:
            state = robot.state() if continuous else None
            out = session.step(frame, state)
            action = np.clip(out, -1.0, 1.0).astype(np.float32) if continuous else int(out[0])
            frames.append(frame)
            states.append(state)
            actions.append(action)
            frame = robot.step(action).frame
        stored = np.stack(actions) if continuous else np.asarray(actions, dtype=np.float32)[:, None]
        yield Rollout(robot.task, int(seed), instruction, np.stack(frames), np.stack(states) if continuous else None,
                      stored, episode_record(robot, index, actions))


def expert_rollouts(robot, seeds: list[int]) -> Iterable:
    from kv_vla_ros.sim.rollout import expert_rollout, make_expert_for

    expert = make_expert_for(robot)
    for index, seed in enumerate(seeds):
        yield expert_rollout(robot, expert, seed, index)


def write_rollouts(bag: AtomicBagWriter, rollouts: Iterable, names: dict[str, str], period_ns: int, t: int,
                   summary: dict, joint_names=None, tick=None) -> int:
    """Write ``rollouts`` into ``bag`` from bag time ``t`` (ns); returns the time after the last."""
    ts = bag.typestore
    delay = min(ACTION_DELAY_NS, period_ns // 2)
    with_states = None
    for rollout in rollouts:
        if with_states is None:
            with_states = rollout.states is not None
            for role, msgtype in (("instruction", STRING), ("image", IMAGE), ("action", FLOAT32_ARRAY),
                                  ("episode", STRING)) + ((("state", JOINT_STATE),) if with_states else ()):
                bag.add_connection(names[role], msgtype)
        bag.write(names["instruction"], t, make_string(ts, rollout.instruction), STRING)
        t += period_ns  # the simulator node lets an instruction settle before the first frame
        frame_id = "arm_camera" if with_states else "minigrid_camera"
        for k in range(len(rollout)):
            if with_states:
                msg = make_joint_state(ts, rollout.states[k], t, joint_names)
                bag.write(names["state"], t - STATE_LEAD_NS, msg, JOINT_STATE)
            bag.write(names["image"], t, make_image(ts, rollout.frames[k], t, frame_id), IMAGE)
            bag.write(names["action"], t + delay, make_action(ts, rollout.actions[k], source_stamp_ns=t), FLOAT32_ARRAY)
            t += period_ns
        bag.write(names["episode"], t, make_string(ts, json.dumps(rollout.record)), STRING)
        t += period_ns
        summary["episodes"] += 1
        summary["steps"] += len(rollout)
        summary["successes"] += int(rollout.record["success"])
        if tick is not None:
            tick(1)
    return t


def generate_bag(output, task: str, episodes: int, seed_offset: int = 0, storage: str = "sqlite3",
                 frame_rate_hz: float = 10.0, frame_size: int | None = None, max_steps: int | None = None,
                 start_time_ns: int | None = None, topics: dict | None = None, progress: bool = False,
                 model=None, split: str = "eval", rollouts: Iterable | None = None) -> dict:
    """Roll out ``episodes`` seeds of ``split`` into a new bag at ``output``; returns a summary.

    The expert acts, or ``model`` (a ``VLAModel``) does, through a ``VLASession`` with the full
    cache: a closed-loop run recorded as the policy node would see and answer it. ``rollouts``:
    the episodes already rolled out elsewhere (e.g. on several cores), in seed order.
    ``frame_size`` None: the task's own (56 px MiniGrid, 64 px arm).
    """
    from kv_vla_ros.progress import progress_bar

    from kv_vla_ros.sim import make_sim, split_seeds

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes: must be an int >= 1, got {episodes!r}")
    if not frame_rate_hz > 0:
        raise ValueError(f"frame_rate_hz: must be > 0, got {frame_rate_hz!r}")
    names = topic_names(topics)
    seeds = split_seeds(split, episodes, seed_offset)
    robot = make_sim(task, frame_size, max_steps)
    joint_names = None
    if getattr(robot, "discrete", True) is False:
        from kv_vla_ros.sim.arm.scene import STATE_JOINT_NAMES as joint_names
    summary = {"task": robot.task, "driver": "expert" if model is None else "model", "split": split,
               "seeds": seeds, "episodes": 0, "steps": 0, "successes": 0}
    if rollouts is None:
        rollouts = expert_rollouts(robot, seeds) if model is None else model_rollouts(robot, model, seeds)
    t = int(time.time_ns() if start_time_ns is None else start_time_ns)
    try:
        with AtomicBagWriter(output, storage) as bag, \
                progress_bar(total=episodes, desc=f"bag generate {robot.task}", disable=not progress,
                             unit="episode", mininterval=5.0) as bar:
            write_rollouts(bag, rollouts, names, round(1e9 / frame_rate_hz), t, summary, joint_names,
                           bar.update)
            if summary["episodes"] != episodes:  # raised inside: the writer leaves no bag behind
                raise ValueError(f"rollouts: {summary['episodes']} episodes for {episodes} seeds")
    finally:
        robot.close()
    summary["output"] = str(output)
    return summary


__all__ = ["DEFAULT_TOPICS", "ROLES", "generate_bag", "topic_names", "write_rollouts"]
