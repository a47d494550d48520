"""`PI0PolicyConfig`: how this package streams a π0 checkpoint (``kv_vla_policy.json`` beside
transformers' own files; optional: a bare π0 checkpoint gets the defaults below).

The token stream of an episode (one cache chunk per control step, in π0's own order: images
first, then the prompt)::

    [step 1: cameras x image_seq_length, then the prompt][step 2: ...] ...

so ``cache.chunk_size`` is the tokens of one step and ``cache.sink_tokens`` is 0: there is no
prefix to hold, every step carries its own prompt.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kv_vla_ros.cache.config import CacheConfig, check_known_fields

POLICY_FILE = "kv_vla_policy.json"


@dataclass
class PI0PolicyConfig:
    """Attributes:
        num_cameras: camera frames per control step (the node's image topics), <= max_cameras.
        max_cameras: most cameras the checkpoint was trained with (π0: base + two wrists).
        state_dim: robot state size fed to π0 (0: the checkpoint's processor statistics decide,
            or no state, then zeros).
        action_dim: actions dimensions returned (None: the processor's statistics, else max_action_dim).
        actions_per_inference: actions of a chunk executed before the next inference (LeRobot's
            ``n_action_steps``; None: the whole chunk).
        num_inference_steps: denoising steps (None: the checkpoint's config).
        max_prompt_tokens: longest prompt (each step's chunk holds it after the images; the processor pads to 48).
        noise_seed: seed of each episode's noise generator (sessions of one episode draw alike).
        action_names: optional names of the action dimensions.
        state_names: optional names of the state's joints (a JointState is then read by name).
        control_rate_hz: the control rate of the recordings it was trained on (bag tools' default).
        cache: default cache of a session (None: full, sized from the above).
        task: the simulator task id the checkpoint was trained for (e.g. ``Arm-CueCarryDistract-v0``;
            a fact of its model card, None when unknown).
    """

    num_cameras: int = 1
    max_cameras: int = 3
    state_dim: int = 0
    action_dim: int | None = None
    actions_per_inference: int | None = None
    num_inference_steps: int | None = None
    max_prompt_tokens: int = 48
    noise_seed: int = 0
    action_names: list[str] | None = None
    state_names: list[str] | None = None
    control_rate_hz: float | None = None
    cache: CacheConfig | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cache, dict):
            self.cache = CacheConfig.from_dict(self.cache)
        self.validate()

    def validate(self) -> None:
        for name in ("num_cameras", "max_cameras", "max_prompt_tokens"):
            _check_int(name, getattr(self, name), 1)
        _check_int("state_dim", self.state_dim, 0)
        _check_int("noise_seed", self.noise_seed, 0)
        for name in ("action_dim", "actions_per_inference", "num_inference_steps"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name in ("action_names", "state_names"):
            names = getattr(self, name)
            if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                                      or len(set(names)) != len(names)):
                raise ValueError(f"{name}: expected a list of distinct strings, got {names!r}")
        if self.state_names is not None and self.state_dim and len(self.state_names) != self.state_dim:
            raise ValueError(f"state_names: {len(self.state_names)} names for state_dim {self.state_dim}")
        if self.control_rate_hz is not None and not (isinstance(self.control_rate_hz, (int, float))
                                                     and self.control_rate_hz > 0):
            raise ValueError(f"control_rate_hz: must be a number > 0, got {self.control_rate_hz!r}")
        if self.num_cameras > self.max_cameras:
            raise ValueError(f"num_cameras: {self.num_cameras} cameras, the checkpoint allows at most "
                             f"{self.max_cameras} (max_cameras in {POLICY_FILE})")
        if self.task is not None and (not isinstance(self.task, str) or not self.task.strip()):
            raise ValueError(f"task: expected a task id (a non-empty string) or null, got {self.task!r}")
        if self.cache is not None and not isinstance(self.cache, CacheConfig):
            raise ValueError(f"cache: expected a CacheConfig or a dict, got {type(self.cache).__name__}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cache"] = self.cache.to_dict() if self.cache is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PI0PolicyConfig":
        check_known_fields(cls, data, POLICY_FILE)
        return cls(**copy.deepcopy(data))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / POLICY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "PI0PolicyConfig":
        path = Path(directory) / POLICY_FILE
        if not path.is_file():
            return cls()
        from kv_vla_ros.vla.policy import read_json_object

        return cls.from_dict(read_json_object(path))


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")


__all__ = ["PI0PolicyConfig", "POLICY_FILE"]
