"""Training tier: behaviour cloning of the VLA on simulator expert demonstrations (vla + sim)."""

from kv_vla_ros.train.bc import DEFAULT_TASKS, TrainConfig, train
from kv_vla_ros.train.data import EpisodeSampler, ScanningMemoryExpert, demonstrations, expert_for, rollout

__all__ = ["TrainConfig", "train", "DEFAULT_TASKS", "EpisodeSampler", "ScanningMemoryExpert", "demonstrations",
           "expert_for", "rollout"]
