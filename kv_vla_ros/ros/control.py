"""The policy node's control logic without ROS: hold the last action, clamp it, turn it into a
twist, and fall back to stop when disabled, stale or invalid. Times are plain floats (seconds,
any monotonic clock) so tests drive it with a fake clock.

A *stop* command is ``action=None``: the node publishes an empty ``action`` array and a zero
``cmd_vel``. It never publishes a non-finite value.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

# Float32MultiArray has no header; the second layout dimension of an `action` message names the
# camera frame the action was inferred from, so a discrete-step consumer (the simulator) can
# apply each action exactly once while the node repeats it at the control rate.
SOURCE_STAMP_PREFIX = "frame_stamp="


def format_source_stamp(sec: int, nanosec: int) -> str:
    return f"{SOURCE_STAMP_PREFIX}{int(sec)}.{int(nanosec):09d}"


def parse_source_stamp(label: str) -> tuple[int, int] | None:
    """``"frame_stamp=12.000000345"`` -> ``(12, 345)``; None for any other label."""
    if not label.startswith(SOURCE_STAMP_PREFIX):
        return None
    sec, _, nsec = label[len(SOURCE_STAMP_PREFIX):].partition(".")
    try:
        return int(sec), int(nsec)
    except ValueError:
        return None


def broadcast_limits(name: str, values, dim: int) -> np.ndarray:
    """A limit list of one value (for every dimension) or ``dim`` values -> float64 (dim,)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 1:
        return np.full(dim, arr[0])
    if arr.size != dim:
        raise ValueError(f"{name}: expected 1 or {dim} values (the action dimension), got {arr.size}")
    return arr


@dataclass(frozen=True)
class ControlCommand:
    """What one control tick publishes. ``action`` None means stop."""

    action: np.ndarray | None
    source_stamp: tuple[int, int] | None
    state: str  # running, waiting, stale, disabled, error
    reason: str = ""

    @property
    def is_stop(self) -> bool:
        return self.action is None


class TwistAdapter:
    """Action vector -> (linear.x, angular.z), clamped to ``max_linear`` / ``max_angular``.

    Discrete: ``discrete_linear[i]`` / ``discrete_angular[i]`` for action index ``i`` (0 past the
    end of a table). Continuous: dimensions ``linear_index`` / ``angular_index`` (-1: zero).
    """

    def __init__(self, discrete: bool, discrete_linear, discrete_angular, linear_index: int = -1,
                 angular_index: int = -1, max_linear: float = 0.5, max_angular: float = 1.5):
        self.discrete = discrete
        self.discrete_linear = [float(v) for v in discrete_linear]
        self.discrete_angular = [float(v) for v in discrete_angular]
        self.linear_index, self.angular_index = int(linear_index), int(angular_index)
        self.max_linear, self.max_angular = float(max_linear), float(max_angular)

    def __call__(self, action: np.ndarray | None) -> tuple[float, float]:
        if action is None:
            return 0.0, 0.0
        if self.discrete:
            i = int(action[0])
            lin = self.discrete_linear[i] if 0 <= i < len(self.discrete_linear) else 0.0
            ang = self.discrete_angular[i] if 0 <= i < len(self.discrete_angular) else 0.0
        else:
            lin = float(action[self.linear_index]) if 0 <= self.linear_index < action.size else 0.0
            ang = float(action[self.angular_index]) if 0 <= self.angular_index < action.size else 0.0
        if not (np.isfinite(lin) and np.isfinite(ang)):
            return 0.0, 0.0
        return (float(np.clip(lin, -self.max_linear, self.max_linear)),
                float(np.clip(ang, -self.max_angular, self.max_angular)))


class ControlLoop:
    """Holds the newest valid action and decides what each control tick publishes.

    Thread-safe: the inference worker reports actions, the subscriptions report frames and the
    control timer ticks, each from its own thread.

    Args:
        discrete: discrete action ids (validated against ``num_actions``, never clamped) or a
            continuous vector of ``action_dim`` (clamped to ``[action_min, action_max]``).
    """

    def __init__(self, discrete: bool, num_actions: int, action_dim: int, stale_timeout_s: float = 1.0,
                 enabled: bool = True, action_min=(-np.inf,), action_max=(np.inf,)):
        self.discrete, self.num_actions, self.action_dim = discrete, int(num_actions), int(action_dim)
        self._lock = threading.Lock()
        self.stale_timeout_s = float(stale_timeout_s)
        self.enabled = bool(enabled)
        self.set_limits(action_min, action_max)
        self._held: np.ndarray | None = None
        self._held_stamp: tuple[int, int] | None = None
        self._last_frame: float | None = None
        self._last_action: float | None = None
        self._error = ""
        self.rejected_actions = 0  # non-finite or out-of-range actions never published

    def set_limits(self, action_min, action_max) -> None:
        lo = broadcast_limits("action.min", action_min, self.action_dim)
        hi = broadcast_limits("action.max", action_max, self.action_dim)
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
            raise ValueError("action.min/action.max: NaN is not a limit")
        if np.any(lo > hi):
            raise ValueError(f"action.min: must be <= action.max in every dimension, got {lo.tolist()} > {hi.tolist()}")
        with self._lock:
            self.action_min, self.action_max = lo, hi

    # ---- events -----------------------------------------------------------------------------
    def episode_started(self, now: float) -> None:
        """A new episode: forget the held action; the first inference gets a full timeout."""
        with self._lock:
            self._held, self._held_stamp, self._error = None, None, ""
            self._last_action = now

    def frame_received(self, now: float) -> None:
        with self._lock:
            self._last_frame = now

    def action_ready(self, action, source_stamp: tuple[int, int] | None, now: float) -> str:
        """Hold a fresh action; returns "" when accepted, else why it was rejected (held: stop)."""
        arr = np.asarray(action, dtype=np.float64).reshape(-1)
        reason = ""
        if arr.size != self.action_dim:
            reason = f"action: expected {self.action_dim} values, got {arr.size}"
        elif not np.all(np.isfinite(arr)):
            reason = f"action: non-finite value {arr.tolist()}"
        elif self.discrete and (arr[0] != round(arr[0]) or not 0 <= arr[0] < self.num_actions):
            reason = f"action: {arr[0]} is not an action id in [0, {self.num_actions})"
        with self._lock:
            self._last_action = now
            if reason:  # never hold (or publish) a bad action: stop until the next good one
                self.rejected_actions += 1
                self._held, self._held_stamp, self._error = None, None, reason
            else:
                self._held, self._held_stamp, self._error = arr, source_stamp, ""
        return reason

    def inference_failed(self, reason: str) -> None:
        """An exception in inference: stop until the next good action."""
        with self._lock:
            self._held, self._held_stamp, self._error = None, None, reason

    # ---- tick -------------------------------------------------------------------------------
    def tick(self, now: float) -> ControlCommand:
        with self._lock:
            timeout = self.stale_timeout_s
            if not self.enabled:
                return ControlCommand(None, None, "disabled", "enabled is false")
            if self._last_frame is None:
                return ControlCommand(None, None, "waiting", "no frame received yet")
            if now - self._last_frame > timeout:
                return ControlCommand(None, None, "stale", f"no fresh frame for {now - self._last_frame:.2f} s")
            if self._last_action is not None and now - self._last_action > timeout:
                return ControlCommand(None, None, "stale", f"no fresh action for {now - self._last_action:.2f} s")
            if self._error:
                return ControlCommand(None, None, "error", self._error)
            if self._held is None:
                return ControlCommand(None, None, "waiting", "no action inferred yet in this episode")
            action = self._held
            if not self.discrete:
                action = np.clip(action, self.action_min, self.action_max)
            if not np.all(np.isfinite(action)):  # unreachable by construction; the last line of defence
                return ControlCommand(None, None, "error", "non-finite action after clamping")
            return ControlCommand(action.astype(np.float32), self._held_stamp, "running")


class RollingStats:
    """Percentiles and rate over the last ``size`` samples (latencies, publish intervals)."""

    def __init__(self, size: int = 500):
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(float(value))

    def percentile(self, q: float) -> float:
        with self._lock:
            values = list(self._values)
        return float(np.percentile(values, q)) if values else float("nan")

    def mean(self) -> float:
        with self._lock:
            values = list(self._values)
        return float(np.mean(values)) if values else float("nan")

    def __len__(self) -> int:
        return len(self._values)


__all__ = ["ControlLoop", "ControlCommand", "TwistAdapter", "RollingStats", "broadcast_limits",
           "format_source_stamp", "parse_source_stamp", "SOURCE_STAMP_PREFIX"]
