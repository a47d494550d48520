"""Privileged facts of a MiniGrid Memory episode, read from the grid (never shown to the policy).

* the cue: the object in the start room (key or ball) whose type decides the exit, and the
  steps at which it is visible in the camera frame (MiniGrid's occlusion mask);
* the decision: the step at which the agent leaves the junction at the end of the hallway,
  up or down, and whether that side holds the matching object.

The trainer uses the cue type as an auxiliary target (``aux_labels``); the evaluator reports
decision accuracy and whether the chunk of a cue frame was still held at the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from minigrid.core.world_object import Ball, Key

from .env import SimRobot, is_memory_task

CUE_CLASSES = ("key", "ball")  # auxiliary target "cue": index into this tuple


def cue_position(env) -> tuple[int, int]:
    """The cue cell: MemoryEnv always puts it at (1, height // 2 - 1)."""
    return 1, env.height // 2 - 1


def cue_class(env) -> int:
    """Index of the cue object's type in ``CUE_CLASSES``."""
    obj = env.grid.get(*cue_position(env))
    if isinstance(obj, Key):
        return 0
    if isinstance(obj, Ball):
        return 1
    raise ValueError(f"cue: expected a key or a ball at {cue_position(env)}, found {obj!r}")


def cue_visible(env) -> bool:
    """Whether the cue cell is unoccluded in the agent's current 7x7 view."""
    coords = env.relative_coords(*cue_position(env))
    if coords is None:
        return False
    _, vis_mask = env.gen_obs_grid()
    return bool(vis_mask[coords[0], coords[1]])


@dataclass
class MemoryEpisodeProbe:
    """Follows one Memory episode step by step: call ``observe(t)`` for every frame ``t`` the policy
    is shown (before its action), ``after_step()`` after every action.

    Attributes:
        cue_steps: steps whose frame shows the cue.
        decision_step: the step whose action left the junction row (None: never decided).
        decision_correct: that move went toward the matching object.
    """

    robot: SimRobot
    cue_steps: list[int] = field(default_factory=list)
    decision_step: int | None = None
    decision_correct: bool | None = None

    def __post_init__(self) -> None:
        if not is_memory_task(self.robot.task):
            raise ValueError(f"task: {self.robot.task!r} is not a MiniGrid Memory task")
        env = self.robot.env
        self._row = env.height // 2
        self._junction_x = int(env.success_pos[0])
        self._success_up = int(env.success_pos[1]) < self._row
        self._t = 0

    def observe(self, t: int) -> None:
        self._t = t
        if cue_visible(self.robot.env):
            self.cue_steps.append(t)

    def after_step(self) -> None:
        if self.decision_step is not None:
            return
        x, y = (int(c) for c in self.robot.env.agent_pos)
        if x == self._junction_x and y != self._row:
            self.decision_step = self._t
            self.decision_correct = (y < self._row) == self._success_up


def aux_targets(task: str) -> dict[str, int]:
    """Auxiliary targets a task's demonstrations carry: name -> number of classes.

    ``cue``: the cue's type, on every step from the first frame that showed it (recall);
    ``cue_view``: what the current frame shows of the cue (0 nothing, 1 + its type), on every
    step: the dense, local signal that teaches the encoder to tell a key from a ball (one 8x8
    sprite in a 56x56 frame) before recall can be learned on top of it.
    """
    return {"cue": len(CUE_CLASSES), "cue_view": 1 + len(CUE_CLASSES)} if is_memory_task(task) else {}


def aux_labels(robot: SimRobot, seen_cue: bool, visible: bool) -> dict[str, int]:
    """Per-step labels (-1: no label at this step) for ``aux_targets(robot.task)``, for the
    current state: ``seen_cue`` whether a frame up to this one showed the cue, ``visible``
    whether this one does."""
    if not is_memory_task(robot.task):
        return {}
    cls = cue_class(robot.env)
    return {"cue": cls if seen_cue else -1, "cue_view": 1 + cls if visible else 0}


def relabel(robot: SimRobot, episode) -> dict[str, np.ndarray]:
    """The auxiliary labels of a recorded episode, by replaying its actions (levels are a pure
    function of seed and actions): for demonstrations saved before a target existed."""
    import numpy as np

    robot.reset(episode.seed)
    labels: dict[str, list[int]] = {name: [] for name in aux_targets(robot.task)}
    seen = False
    for action in episode.actions:
        visible = cue_visible(robot.env)
        seen = seen or visible
        for name, value in aux_labels(robot, seen, visible).items():
            labels[name].append(value)
        if robot.done:
            raise ValueError(f"episode: seed {episode.seed} of {robot.task} ended before its recorded actions did")
        robot.step(int(action))
    return {name: np.asarray(v, dtype=np.int64) for name, v in labels.items()}


__all__ = ["CUE_CLASSES", "cue_position", "cue_class", "cue_visible", "MemoryEpisodeProbe", "aux_targets", "aux_labels",
           "relabel"]
