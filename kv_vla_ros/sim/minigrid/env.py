"""A MiniGrid / BabyAI level dressed up as a robot for a Vision-Language-Action policy.

The policy sees what a robot would give it: an RGB camera frame (the agent's egocentric
7x7-cell partial view), a natural-language instruction (the mission string) and a small
discrete action space. Nothing here imports torch, transformers or rclpy, so this tier can
run (and be tested) on any machine with numpy + gymnasium + minigrid.

Frames are ``np.ndarray`` of dtype ``uint8`` and shape ``(frame_size, frame_size, 3)``,
RGB, rows top-to-bottom; the agent sits at the bottom centre looking "up" the image.
"""
from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (importing it registers the MiniGrid-*/BabyAI-* env ids)
import numpy as np

from kv_vla_ros.sim.robot import EpisodeFlags, StepResult  # noqa: F401  (StepResult: re-exported)

SUPPORTED_TASKS: tuple[str, ...] = (
    "MiniGrid-MemoryS7-v0",
    "MiniGrid-MemoryS9-v0",
    "MiniGrid-MemoryS11-v0",
    "MiniGrid-MemoryS13-v0",
    "MiniGrid-MemoryS13Random-v0",
    "MiniGrid-MemoryS17Random-v0",
    "MiniGrid-MemoryS21Random-v0",
    "MiniGrid-MemoryS25Random-v0",
    "MiniGrid-MemoryS37-v0",
    "BabyAI-GoToObj-v0",
    "BabyAI-GoToLocal-v0",
)

# Larger Memory mazes that minigrid does not register: same MemoryEnv (random hallway
# length), bigger map. They exist because the registered ones give expert episodes of only
# ~9-11 steps on average, too short to exercise a long-context policy; a bigger map gives
# longer hallways, i.e. a longer gap between seeing the cue and using it.
_UNREGISTERED: dict[str, tuple[str, dict[str, Any]]] = {
    "MiniGrid-MemoryS21Random-v0": ("MiniGrid-MemoryS17Random-v0", {"size": 21}),
    "MiniGrid-MemoryS25Random-v0": ("MiniGrid-MemoryS17Random-v0", {"size": 25}),
    # Fixed hallway length (MemoryS13-v0's layout, 37 wide): the cue is seen at least 34 steps
    # before the decision in every episode (the scanning expert: 63 steps on average, 42-77), long
    # enough that a budget of a quarter of the history must choose what to keep.
    "MiniGrid-MemoryS37-v0": ("MiniGrid-MemoryS13-v0", {"size": 37}),
}



def _register_package_envs() -> None:
    """Register the maps above with gymnasium (``gym.make("MiniGrid-MemoryS37-v0")`` works once
    ``kv_vla_ros.sim`` is imported); each is minigrid's own MemoryEnv with another size."""
    for name, (base, extra) in _UNREGISTERED.items():
        if name not in gym.registry:
            spec = gym.spec(base)
            gym.register(id=name, entry_point=spec.entry_point, kwargs={**spec.kwargs, **extra})


_register_package_envs()

# MiniGrid's discrete action set; the tuple index is the action id the env expects.
ACTION_NAMES: tuple[str, ...] = ("left", "right", "forward", "pickup", "drop", "toggle", "done")
NUM_ACTIONS: int = len(ACTION_NAMES)

# MiniGrid's default agent_view_size; the POV render is always this many tiles square.
_VIEW_TILES = 7


def _quiet_babyai_level_generation() -> None:
    """Send BabyAI's level-generation chatter ("Sampling rejected: ...") to logging.

    minigrid's roomgrid_level calls the builtin print() on every rejected layout sample,
    which would interleave with CLI output and ROS logs. Shadowing ``print`` in that one
    module (not sys.stdout, which other threads share) routes it to a DEBUG logger instead.
    """
    from minigrid.envs.babyai.core import roomgrid_level

    if "print" not in vars(roomgrid_level):
        log = logging.getLogger("kv_vla_ros.sim.babyai")
        roomgrid_level.print = lambda *args, **_: log.debug(" ".join(str(a) for a in args))


def normalize_task(task: str) -> str:
    """Return the canonical id for ``task`` (the "-v0" suffix is optional): a gymnasium id of
    ``SUPPORTED_TASKS`` or an arm task of ``kv_vla_ros.sim.arm.ARM_TASKS``.

    Raises ValueError naming ``task`` (and listing the supported ids) if it is unknown.
    """
    from kv_vla_ros.sim.arm.task import ARM_TASKS

    if not isinstance(task, str):
        raise ValueError(f"task must be a str, got {type(task).__name__}")
    name = task.strip()
    if not name.endswith("-v0"):
        name = name + "-v0"
    if name not in SUPPORTED_TASKS and name not in ARM_TASKS:
        raise ValueError(
            f"task {task!r} is not supported; supported tasks: {', '.join(SUPPORTED_TASKS + ARM_TASKS)}"
        )
    return name


def make_sim(task: str, frame_size: int | None = None, max_steps: int | None = None):
    """The simulated robot of ``task``: a `SimRobot` (MiniGrid / BabyAI, discrete actions, 56 px by
    default) or an ``ArmRobot`` (``Arm-*``: continuous actions and a joint state, 64 px by default).
    Both take ``reset(seed) -> (frame, instruction)`` and ``step(action) -> StepResult``; an arm also
    has ``state()``. ``max_steps`` None: the task's own step cap."""
    from kv_vla_ros.sim.arm.task import is_arm_task

    name = normalize_task(task)
    if is_arm_task(name):
        from kv_vla_ros.sim.arm.env import ArmRobot

        return ArmRobot(name, frame_size=64 if frame_size is None else frame_size, max_steps=max_steps)
    return SimRobot(name, frame_size=56 if frame_size is None else frame_size, max_steps=max_steps)


def is_memory_task(task: str) -> bool:
    """True for the MiniGrid Memory family (needs the scripted expert), False for BabyAI."""
    return normalize_task(task).startswith("MiniGrid-Memory")


class SimRobot(EpisodeFlags):
    """One simulated robot = one MiniGrid env + camera rendering + input validation.

    Usage::

        robot = SimRobot("MiniGrid-MemoryS13Random")
        frame, instruction = robot.reset(seed=0)   # frame: uint8 (56, 56, 3)
        result = robot.step(2)                     # "forward"

    Episodes are a pure function of ``(task, seed, actions)``: ``reset(seed)`` reseeds the
    env's RNG, and the level layout is drawn only from that RNG.
    """

    def __init__(self, task: str, frame_size: int = 56, max_steps: int | None = None):
        self.task: str = normalize_task(task)
        if self.task.startswith("Arm-"):
            raise ValueError(f"task {task!r} is an arm task: use kv_vla_ros.sim.make_sim (an ArmRobot)")
        if isinstance(frame_size, bool) or not isinstance(frame_size, (int, np.integer)):
            raise ValueError(f"frame_size must be an int, got {frame_size!r}")
        if frame_size < _VIEW_TILES:
            raise ValueError(f"frame_size must be >= {_VIEW_TILES} (one pixel per cell), got {frame_size}")
        self.frame_size: int = int(frame_size)
        kwargs: dict[str, Any] = {}
        if max_steps is not None:
            if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
                raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
            kwargs["max_steps"] = int(max_steps)
        # We drive the unwrapped env directly: the gymnasium wrappers (order enforcing,
        # passive checker) add overhead per step and we do our own validation below.
        base_id, extra = _UNREGISTERED.get(self.task, (self.task, {}))
        if self.task.startswith("BabyAI-"):
            _quiet_babyai_level_generation()
        self.env = gym.make(base_id, **extra, **kwargs).unwrapped
        self.num_actions: int = NUM_ACTIONS
        # Render each tile at frame_size // 7 pixels so the 7x7 view is exactly 56 px at the
        # default size; any other size is nearest-resized afterwards.
        self._tile_size = max(1, self.frame_size // _VIEW_TILES)
        rendered = self._tile_size * _VIEW_TILES
        if rendered == self.frame_size:
            self._resize_idx = None
        else:
            self._resize_idx = (np.arange(self.frame_size) * rendered) // self.frame_size
        self.steps: int = 0
        self.episode_id: int = 0  # bumped by every reset; experts use it to notice a new episode
        self.seed: int | None = None
        self.instruction: str = ""
        self.last_action: int | None = None
        self._done = True  # no episode yet: step() before reset() is an error
        self._success = False

    # -- properties -----------------------------------------------------------------------
    @property
    def max_steps(self) -> int:
        """Step budget of the current episode (BabyAI recomputes it per level at reset)."""
        return int(self.env.max_steps)


    # -- API ------------------------------------------------------------------------------
    def reset(self, seed: int) -> tuple[np.ndarray, str]:
        """Start a new episode. Returns ``(frame uint8 (S, S, 3), instruction str)``."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        obs, _ = self.env.reset(seed=int(seed))
        self.seed = int(seed)
        self.steps = 0
        self.episode_id += 1
        self.last_action = None
        self._done = False
        self._success = False
        self.instruction = str(obs["mission"])
        return self.render(), self.instruction

    def step(self, action: int) -> StepResult:
        """Apply one discrete action (see ``ACTION_NAMES``) and return a :class:`StepResult`."""
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)):
            raise ValueError(f"action must be an int in [0, {NUM_ACTIONS}), got {action!r}")
        if not 0 <= int(action) < NUM_ACTIONS:
            raise ValueError(f"action must be an int in [0, {NUM_ACTIONS}), got {int(action)}")
        if self._done:
            raise RuntimeError(
                "SimRobot.step() called with no running episode "
                "(the last episode has ended or reset() was never called); call reset(seed) first"
            )
        action = int(action)
        _, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.last_action = action
        reward = float(reward)
        terminated, truncated = bool(terminated), bool(truncated)
        self._done = terminated or truncated
        self._success = self._done and reward > 0.0
        info = dict(info)
        info["steps"] = self.steps
        return StepResult(self.render(), reward, terminated, truncated, self._success, info)

    def render(self) -> np.ndarray:
        """Current egocentric RGB view, uint8 (frame_size, frame_size, 3)."""
        # Same image RGBImgPartialObsWrapper produces (highlighting is always on for POV).
        img = self.env.get_frame(highlight=False, tile_size=self._tile_size, agent_pov=True)
        if self._resize_idx is not None:
            idx = self._resize_idx
            img = img[idx][:, idx]
        return np.ascontiguousarray(img, dtype=np.uint8)

    def close(self) -> None:
        self.env.close()

    def __repr__(self) -> str:
        return f"SimRobot(task={self.task!r}, frame_size={self.frame_size}, seed={self.seed}, steps={self.steps})"
