"""What every simulated robot of this tier returns and reports (MiniGrid `SimRobot`, the arm's
`ArmRobot`): the outcome of a step and the flags of the current episode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StepResult:
    """Outcome of one :meth:`SimRobot.step`.

    frame: uint8 (frame_size, frame_size, 3) RGB view *after* the action.
    reward: the env's scalar reward (MiniGrid: ``1 - 0.9 * steps / max_steps`` on success, else 0).
    terminated: the episode ended by reaching a goal / failure state.
    truncated: the episode ended by running out of ``max_steps``.
    success: the episode ended with positive reward (task solved).
    info: the env's info dict (plus ``"steps"``).
    """

    frame: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class EpisodeFlags:
    """``done`` / ``success`` of a simulated robot's current episode (every robot of this tier)."""

    _done = True  # no episode yet: step() before reset() is an error
    _success = False

    @property
    def done(self) -> bool:
        """True before the first reset and after the episode terminated or truncated."""
        return self._done

    @property
    def success(self) -> bool:
        """True once the current episode has ended with positive reward."""
        return self._success


__all__ = ["EpisodeFlags", "StepResult"]
