"""The robot-arm world: a Franka Panda in PyBullet that must remember a cue (docs/arm.md).

    ArmRobot(task, frame_size=64, max_steps=None)  -- reset(seed) -> (frame, instruction); step(action);
                                                      state() -> float32 (9,)
    ArmExpert(robot).act() -> float32 (4,)
    ARM_TASKS, VARIANTS, is_arm_task(task)

The task definitions (``task``) import numpy only; the robot, its scene and the expert import
PyBullet on first use (``kv_vla_ros.sim`` imports this package to know the arm task ids).
"""

from kv_vla_ros.sim.arm.task import ARM_TASKS, CUE_NAMES, VARIANTS, ArmVariant, is_arm_task

_LAZY = {"ArmRobot": "env", "normalize_arm_task": "env", "ArmExpert": "expert"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"kv_vla_ros.sim.arm.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'kv_vla_ros.sim.arm' has no attribute {name!r}")


__all__ = [
    "ARM_TASKS",
    "CUE_NAMES",
    "VARIANTS",
    "ArmExpert",
    "ArmRobot",
    "ArmVariant",
    "is_arm_task",
    "normalize_arm_task",
]
