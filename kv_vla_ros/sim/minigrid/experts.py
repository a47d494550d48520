"""Expert demonstrators for :class:`~kv_vla_ros.sim.minigrid.env.SimRobot` (behaviour-cloning teachers).

* BabyAI levels: minigrid's own ``BabyAIBot`` (a planner over the agent's explored map).
* MiniGrid Memory levels: a scripted expert with privileged state (grid, ``success_pos``).
  It first makes sure the cue object in the start room has actually been *visible* in the
  agent's camera frame, and only then walks the shortest path to the matching object.
  Without that first phase, agents that start down the hallway would never see the cue and
  the demonstrations would teach the student to guess; with it, the decision at the split
  can only be made by remembering a frame seen many steps earlier.

Experts are driven step by step: call ``expert.act()`` once for the robot's current state
(after ``reset`` and after every ``step``); it returns an ``int`` action id in ``[0, 7)``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

import numpy as np
from minigrid.core.constants import DIR_TO_VEC
from minigrid.utils.baby_ai_bot import BabyAIBot

from .env import SimRobot, is_memory_task

LEFT, RIGHT, FORWARD = 0, 1, 2

# A navigation state is (x, y, dir) with MiniGrid's dir convention 0=east,1=south,2=west,3=north.
State = tuple[int, int, int]


class Expert(ABC):
    """Base class: one expert bound to one robot; survives ``robot.reset`` (re-plans itself)."""

    def __init__(self, robot: SimRobot):
        if not isinstance(robot, SimRobot):
            raise ValueError(f"robot must be a SimRobot, got {type(robot).__name__}")
        self.robot = robot
        self._episode_id = -1
        self._cached: tuple[int, int] | None = None  # (robot.steps, action) of the last act()

    def act(self) -> int:
        """Expert action id (int in [0, 7)) for the robot's current state."""
        if self.robot.done:
            raise RuntimeError("Expert.act() needs a running episode: call robot.reset(seed) first")
        if self.robot.episode_id != self._episode_id:
            self._episode_id = self.robot.episode_id
            self._cached = None
            self._new_episode()
        # Calling act() twice for the same state must not advance the plan twice
        # (the BabyAI bot treats every replan() as "one action was taken").
        if self._cached is not None and self._cached[0] == self.robot.steps:
            return self._cached[1]
        action = int(self._next_action())
        self._cached = (self.robot.steps, action)
        return action

    @abstractmethod
    def _new_episode(self) -> None:
        """Reset internal plan state for a freshly reset robot."""

    @abstractmethod
    def _next_action(self) -> int:
        """Compute the action for the current state (called once per step)."""


class BabyAIExpert(Expert):
    """Wraps ``minigrid.utils.baby_ai_bot.BabyAIBot``.

    The bot is told which action was *actually* taken (``robot.last_action``), so it stays
    correct when a student policy deviates from its advice (DAgger-style relabelling). The
    bot only learns about one action per ``replan``; if steps were taken without asking the
    expert (or this is the first call of the episode) it is rebuilt from the current state.
    """

    def _new_episode(self) -> None:
        self.bot: BabyAIBot | None = None
        self._bot_step = -1  # robot.steps at the bot's last replan()

    def _next_action(self) -> int:
        steps = self.robot.steps
        if self.bot is None or steps != self._bot_step + 1:
            # A fresh bot must get action_taken=None: it has no "previous state" to compare with.
            self.bot = BabyAIBot(self.robot.env)
            action = self.bot.replan(None)
        else:
            action = self.bot.replan(self.robot.last_action)
        self._bot_step = steps
        return int(action)


class MemoryExpert(Expert):
    """Scripted expert for ``MiniGrid-Memory*``.

    Phases, re-planned from scratch every step (grids are tiny, a BFS is ~100 states):

    1. ``look_around`` only: walk to the nearest start-room cell and turn a full circle
       (4 x left), a "scan the scene" behaviour that also makes episodes longer.
    2. If the cue object (start room, cell ``(1, height // 2 - 1)``) has not yet been
       *visible* (MiniGrid occlusion mask, not merely inside the 7x7 box), take the shortest
       turn/forward path to the nearest pose from which it is visible.
    3. Shortest turn/forward path to ``success_pos``, never stepping on ``failure_pos``.
    """

    def __init__(self, robot: SimRobot, look_around: bool = False):
        if not is_memory_task(robot.task):
            raise ValueError(f"robot.task {robot.task!r} is not a MiniGrid Memory task")
        self.look_around = bool(look_around)
        super().__init__(robot)

    def _new_episode(self) -> None:
        env = self.robot.env
        self.cue_pos = (1, env.height // 2 - 1)
        self.cue_seen = False
        self.turns_left = 4 if self.look_around else 0
        self._cue_visible: dict[State, bool] = {}  # memo: layout is static within an episode

    # -- geometry helpers -------------------------------------------------------------------
    def _walkable(self, x: int, y: int) -> bool:
        env = self.robot.env
        if (x, y) == tuple(env.failure_pos):  # stepping there ends the episode as a failure
            return False
        cell = env.grid.get(x, y)
        return cell is None or cell.can_overlap()

    def _cue_visible_from(self, pos: tuple[int, int], direction: int) -> bool:
        """Whether the cue cell is unoccluded in the 7x7 view from pose (pos, direction)."""
        env = self.robot.env
        old_pos, old_dir = env.agent_pos, env.agent_dir
        # gen_obs_grid() reads the agent pose from the env, so evaluate a hypothetical pose by
        # setting it temporarily; always restored, and the grid itself is never modified.
        try:
            env.agent_pos, env.agent_dir = np.array(pos), direction
            _, vis_mask = env.gen_obs_grid()
            f_vec = np.asarray(DIR_TO_VEC[direction])
            r_vec = np.array((-f_vec[1], f_vec[0]))
            v = env.agent_view_size
            top_left = np.asarray(pos) + f_vec * (v - 1) - r_vec * (v // 2)
            d = np.asarray(self.cue_pos) - top_left
            # invert abs = top_left - f_vec * j + r_vec * i  (f_vec, r_vec orthonormal)
            i, j = int(d @ r_vec), int(-(d @ f_vec))
            return 0 <= i < v and 0 <= j < v and bool(vis_mask[i, j])
        finally:
            env.agent_pos, env.agent_dir = old_pos, old_dir

    def _cue_visible_memo(self, s: State) -> bool:
        if s not in self._cue_visible:
            self._cue_visible[s] = self._cue_visible_from((s[0], s[1]), s[2])
        return self._cue_visible[s]

    def _bfs_first_action(self, start: State, is_goal) -> int:
        """First action of a shortest left/right/forward path from ``start`` to a goal state."""
        if is_goal(start):
            raise RuntimeError("internal: BFS called at a goal state")
        first: dict[State, int | None] = {start: None}
        queue = deque([start])
        while queue:
            x, y, d = queue.popleft()
            dx, dy = DIR_TO_VEC[d]
            # Fixed successor order keeps the expert deterministic.
            for action, nxt in (
                (FORWARD, (x + dx, y + dy, d)),
                (LEFT, (x, y, (d - 1) % 4)),
                (RIGHT, (x, y, (d + 1) % 4)),
            ):
                if nxt in first or (action == FORWARD and not self._walkable(nxt[0], nxt[1])):
                    continue
                first[nxt] = action if first[(x, y, d)] is None else first[(x, y, d)]
                if is_goal(nxt):
                    return int(first[nxt])
                queue.append(nxt)
        raise RuntimeError(f"MemoryExpert: no path found from {start} (seed {self.robot.seed})")

    def _in_start_room(self, x: int, y: int) -> bool:
        h2 = self.robot.env.height // 2
        return 1 <= x <= 3 and h2 - 1 <= y <= h2 + 1

    # -- policy ---------------------------------------------------------------------------
    def _next_action(self) -> int:
        env = self.robot.env
        x, y = (int(c) for c in env.agent_pos)
        d = int(env.agent_dir)
        here: State = (x, y, d)
        if not self.cue_seen and self._cue_visible_memo(here):
            self.cue_seen = True

        if self.turns_left > 0:
            if not self._in_start_room(x, y):
                return self._bfs_first_action(here, lambda s: self._in_start_room(s[0], s[1]))
            self.turns_left -= 1
            return LEFT

        if not self.cue_seen:
            return self._bfs_first_action(here, self._cue_visible_memo)

        goal = tuple(int(c) for c in env.success_pos)
        return self._bfs_first_action(here, lambda s: (s[0], s[1]) == goal)


def make_expert(robot: SimRobot, look_around: bool = False) -> Expert:
    """Expert for ``robot.task``: :class:`MemoryExpert` or :class:`BabyAIExpert`.

    ``look_around`` (Memory tasks only) adds the start-room full-circle scan; passing it
    for a BabyAI task raises ValueError because the bot has no such behaviour.
    """
    if not isinstance(robot, SimRobot):
        raise ValueError(f"robot must be a SimRobot, got {type(robot).__name__}")
    if is_memory_task(robot.task):
        return MemoryExpert(robot, look_around=look_around)
    if look_around:
        raise ValueError(f"look_around is only supported for Memory tasks, not {robot.task!r}")
    return BabyAIExpert(robot)
