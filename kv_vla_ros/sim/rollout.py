"""One expert episode of any task (MiniGrid / BabyAI or arm) as plain arrays, ready to be written
into a bag or shipped between processes (numpy only, no pickle-unsafe objects).

The record is the simulator node's ``~/episode`` JSON (``kv_vla_ros.ros.worlds.minigrid_sim_node`` and
``arm_sim_node`` publish the same fields), so a bag written directly and one recorded over DDS
carry the same results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class Rollout:
    """frames: uint8 (T, H, W, 3), the view before each action; states: float32 (T, S) joint
    positions of those views (None: the robot has no state, MiniGrid); actions: (T, A) float32
    (arm) or (T, 1) float32 action ids (MiniGrid); record: the episode's results (JSON-able)."""

    task: str
    seed: int
    instruction: str
    frames: np.ndarray
    states: np.ndarray | None
    actions: np.ndarray
    record: dict

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def episode_record(robot, index: int, actions: list) -> dict:
    """The ``~/episode`` record of ``robot``'s finished episode (``index``: its place in the run);
    an arm also reports its memory facts (the frames that showed the cue, the decision)."""
    record = {"episode": int(index), "success": bool(robot.success), "steps": int(robot.steps),
              "seed": int(robot.seed), "task": robot.task, "instruction": robot.instruction,
              "actions": [a if isinstance(a, int) else [round(float(v), 6) for v in a] for a in actions]}
    if getattr(robot, "discrete", True) is False:
        record.update(cue_steps=list(robot.cue_steps), decision_step=robot.decision_step,
                      decision_correct=robot.decision_correct)
    return record


def expert_rollout(robot, expert, seed: int, index: int = 0) -> Rollout:
    """Roll ``expert`` out on ``robot`` (from ``kv_vla_ros.sim.make_sim``) for the episode ``seed``."""
    frame, instruction = robot.reset(seed)
    continuous = getattr(robot, "discrete", True) is False
    frames, states, actions = [], [], []
    while not robot.done:
        action = expert.act()
        frames.append(frame)
        if continuous:
            states.append(robot.state())
            actions.append(np.asarray(action, dtype=np.float32))
        else:
            actions.append(int(action))
        frame = robot.step(action).frame
    stored = (np.stack(actions) if continuous else np.asarray(actions, dtype=np.float32)[:, None])
    return Rollout(robot.task, int(seed), instruction, np.stack(frames).astype(np.uint8, copy=False),
                   np.stack(states) if continuous else None, stored, episode_record(robot, index, actions))


def make_expert_for(robot):
    """The scripted expert of ``robot``'s task."""
    if getattr(robot, "discrete", True) is False:
        from kv_vla_ros.sim.arm.expert import ArmExpert

        return ArmExpert(robot)
    from kv_vla_ros.sim.minigrid.experts import make_expert

    return make_expert(robot)


__all__ = ["Rollout", "episode_record", "expert_rollout", "make_expert_for"]
