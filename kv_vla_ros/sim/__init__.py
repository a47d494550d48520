"""Worlds room: the simulated robots side by side, ``minigrid/`` (MiniGrid Memory / BabyAI levels
as a camera + language + discrete-action robot) and ``arm/`` (a Franka Panda in PyBullet that must
remember a cue; ids in ``ARM_TASKS``), with what every world returns (``robot``), the task lists
(``tasks``) and expert rollouts as arrays (``rollout``). Both share the seed ranges and ``make_sim``.

Depends only on numpy, gymnasium, minigrid, pybullet (and tqdm); never imports torch, transformers or rclpy,
so it is usable on machines without a GPU stack or ROS.

Public API:
    make_sim(task, frame_size=None, max_steps=None) -- SimRobot, or ArmRobot for an arm task (Arm-*)
    SimRobot(task, frame_size=56, max_steps=None)  -- reset(seed) -> (frame uint8 (S,S,3), instruction)
                                                      step(action) -> StepResult
    make_expert(robot, look_around=False) -> Expert -- Expert.act() -> int action id
    generate_episodes(task, seeds, frame_size=56, progress=False, look_around=False) -> list[Episode]
    train_seeds(n, offset=0) / eval_seeds(n, offset=0) / check_disjoint(a, b)
    save_episodes(path, episodes) / load_episodes(path)
"""
from .arm import ARM_TASKS, is_arm_task
from .minigrid.dataset import (
    EVAL_SEED_RANGE,
    SPLITS,
    TRAIN_SEED_RANGE,
    Episode,
    check_disjoint,
    eval_seeds,
    generate_episodes,
    load_episodes,
    save_episodes,
    split_seeds,
    train_seeds,
)
from .minigrid.env import (
    ACTION_NAMES,
    NUM_ACTIONS,
    SUPPORTED_TASKS,
    SimRobot,
    StepResult,
    is_memory_task,
    make_sim,
    normalize_task,
)
from .minigrid.experts import BabyAIExpert, Expert, MemoryExpert, make_expert
from .tasks import EVAL_TASKS

__all__ = [
    "ACTION_NAMES",
    "ARM_TASKS",
    "BabyAIExpert",
    "EVAL_SEED_RANGE",
    "EVAL_TASKS",
    "Episode",
    "Expert",
    "MemoryExpert",
    "NUM_ACTIONS",
    "SUPPORTED_TASKS",
    "SPLITS",
    "SimRobot",
    "StepResult",
    "TRAIN_SEED_RANGE",
    "check_disjoint",
    "eval_seeds",
    "generate_episodes",
    "is_arm_task",
    "is_memory_task",
    "make_sim",
    "load_episodes",
    "make_expert",
    "normalize_task",
    "save_episodes",
    "split_seeds",
    "train_seeds",
]
