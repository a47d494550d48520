"""Training room: behaviour cloning of the package's own VLA on simulator demonstrations or
recordings (``bc``, ``own_bags``), π0 from recordings (``pi0_train``, ``pi0_stream``), training
under eviction masks (``eviction``), the gate and its targets (``gate_*``, ``pi0_gate``) and
per-layer calibration (``calibrate``). May import cache, vla, sim, parallel and data; never rclpy or Ray.
"""

from kv_vla_ros.train.bc import DEFAULT_TASKS, TrainConfig, train
from kv_vla_ros.train.data import EpisodeSampler, ScanningMemoryExpert, demonstrations, expert_for, rollout

__all__ = ["TrainConfig", "train", "DEFAULT_TASKS", "EpisodeSampler", "ScanningMemoryExpert", "demonstrations",
           "expert_for", "rollout"]
