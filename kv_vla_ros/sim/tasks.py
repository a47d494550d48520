"""Task lists shared by the tools that roll out the simulator (evaluation, gate training,
calibration): one list, so that they measure on the same tasks."""

# `kv-vla eval`'s default tasks, and the tasks the gate is trained and the layers calibrated on.
EVAL_TASKS = ["MiniGrid-MemoryS13Random-v0", "MiniGrid-MemoryS17Random-v0", "BabyAI-GoToLocal-v0"]

__all__ = ["EVAL_TASKS"]
