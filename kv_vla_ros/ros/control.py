"""The policy node's control logic without ROS: execute action chunks from a queue (hold the last
action between chunks), clamp, turn into a twist, and fall back to stop when disabled, stale
(any input) or invalid. Times are plain floats (seconds,
any monotonic clock) so tests drive it with a fake clock.

A *stop* command is ``action=None``: the node publishes an empty ``action`` array and a zero
``cmd_vel``. It never publishes a non-finite value.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from kv_vla_ros.vla.action_queue import ActionQueue

# Float32MultiArray has no header; the second layout dimension of an `action` message names the
# camera frame the action was inferred from, so a discrete-step consumer (the simulator) can
# apply each action exactly once while the node repeats it at the control rate.
SOURCE_STAMP_PREFIX = "frame_stamp="
# A chunked policy's action messages name their row in the chunk in a third layout dimension.
CHUNK_INDEX_PREFIX = "chunk_index="


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
    """What one control tick publishes. ``action`` None means stop. ``chunk_index``: the action's
    row in the chunk it comes from (None for stop)."""

    action: np.ndarray | None
    source_stamp: tuple[int, int] | None
    state: str  # running, waiting, stale, disabled, error
    reason: str = ""
    chunk_index: int | None = None

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
    """Executes the policy's action chunks one action per control tick and decides what each tick
    publishes.

    A chunk ``(n, dim)`` goes through an ``ActionQueue``: its first ``actions_per_inference`` rows
    are published one per tick; once they are used (``needs_chunk``) the next inference may start,
    and meanwhile the last action is held. Every queued action passes the same checks when it is
    published (clamps, finiteness) and a chunk with any bad row is rejected whole.

    Inputs (the cameras, the robot state) are named; each must have arrived within
    ``stale_timeout_s``, else stop (``stale``, naming the input) and the queue is dropped.

    Thread-safe: the inference worker reports chunks, the subscriptions report inputs and the
    control timer ticks, each from its own thread.

    Args:
        discrete: discrete action ids (validated against ``num_actions``, never clamped) or a
            continuous vector of ``action_dim`` (clamped to ``[action_min, action_max]``).
        inputs: names of the inputs watched for staleness (topic names; the first: the camera
            that drives the steps).
    """

    def __init__(self, discrete: bool, num_actions: int, action_dim: int, stale_timeout_s: float = 1.0,
                 enabled: bool = True, action_min=(-np.inf,), action_max=(np.inf,), inputs=("image",),
                 actions_per_inference: int = 1):
        self.discrete, self.num_actions, self.action_dim = discrete, int(num_actions), int(action_dim)
        self._lock = threading.Lock()
        self.stale_timeout_s = float(stale_timeout_s)
        self.enabled = bool(enabled)
        self.set_limits(action_min, action_max)
        self.queue = ActionQueue(actions_per_inference)
        self.inputs = list(inputs)
        self._received: list[float | None] = [None] * len(self.inputs)
        self._held: np.ndarray | None = None
        self._held_stamp: tuple[int, int] | None = None
        self._held_index: int | None = None
        self._popped = 0  # actions of the current chunk used so far
        self._last_action: float | None = None
        self._error = ""
        self.rejected_actions = 0  # chunks with a non-finite or out-of-range action, never published
        self.stale_chunks = 0  # chunks inferred for an episode that has ended since, never published
        self._episode: int | None = None

    def set_limits(self, action_min, action_max) -> None:
        lo = broadcast_limits("action.min", action_min, self.action_dim)
        hi = broadcast_limits("action.max", action_max, self.action_dim)
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
            raise ValueError("action.min/action.max: NaN is not a limit")
        if np.any(lo > hi):
            raise ValueError(f"action.min: must be <= action.max in every dimension, got {lo.tolist()} > {hi.tolist()}")
        with self._lock:
            self.action_min, self.action_max = lo, hi

    def set_actions_per_inference(self, n: int) -> None:
        """From the next chunk on (a shorter setting also trims the current one)."""
        self.queue.set_actions_per_inference(n)

    # ---- events -----------------------------------------------------------------------------
    def episode_started(self, now: float, episode: int | None = None) -> None:
        """A new episode: drop the queue and the held action; the first inference gets a full timeout.
        ``episode``: its id; chunks reported for another one (`action_ready`) are dropped."""
        with self._lock:
            self._episode = episode
            self._drop_actions()
            self._error = ""
            self._last_action = now

    def input_received(self, index: int, now: float) -> None:
        with self._lock:
            self._received[index] = now

    def frame_received(self, now: float) -> None:
        """The first camera's frame arrived."""
        self.input_received(0, now)

    def input_ages(self, now: float) -> dict[str, float | None]:
        """Seconds since each input last arrived (None: never)."""
        with self._lock:
            return {name: (None if t is None else now - t) for name, t in zip(self.inputs, self._received)}

    def input_problem(self, now: float) -> tuple[str, str] | None:
        """``(state, reason)`` when an input is missing (``waiting``) or stale (``stale``), else None."""
        with self._lock:
            return self._input_problem(now)

    def _input_problem(self, now: float) -> tuple[str, str] | None:
        missing = [name for name, t in zip(self.inputs, self._received) if t is None]
        if missing:
            return "waiting", f"no message received yet on {', '.join(missing)}"
        stale = [(name, now - t) for name, t in zip(self.inputs, self._received) if now - t > self.stale_timeout_s]
        if stale:
            return "stale", "; ".join(f"no fresh message on {name} for {age:.2f} s" for name, age in stale)
        return None

    @property
    def needs_chunk(self) -> bool:
        """True when the current chunk's executed actions are used up (or none came yet)."""
        return self.queue.needs_inference

    def action_ready(self, chunk, source_stamp: tuple[int, int] | None, now: float, episode: int | None = None) -> str:
        """Queue a fresh chunk ``(n, action_dim)`` (or one action ``(action_dim,)``); returns "" when
        accepted, else why it was rejected (then nothing of it is published: stop).

        ``episode``: the id of the episode the chunk was inferred for. An inference that was under
        way when a new episode started ends after it: its chunk (the old instruction's) is dropped
        silently, counted in ``stale_chunks``, and the loop keeps waiting for the new episode's."""
        arr = np.asarray(chunk, dtype=np.float64)
        arr = arr.reshape(1, -1) if arr.ndim <= 1 else arr.reshape(arr.shape[0], -1)
        reason = ""
        if arr.shape[0] == 0 or arr.shape[1] != self.action_dim:
            reason = f"action: expected {self.action_dim} values per action, got {arr.shape[1]}"
        elif not np.all(np.isfinite(arr)):
            bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
            reason = f"action: non-finite value in action {bad} of the chunk: {arr[bad].tolist()}"
        elif self.discrete and (np.any(arr[:, 0] != np.round(arr[:, 0])) or np.any(arr[:, 0] < 0)
                                or np.any(arr[:, 0] >= self.num_actions)):
            reason = f"action: {arr[:, 0].tolist()} are not all action ids in [0, {self.num_actions})"
        with self._lock:
            if episode is not None and self._episode is not None and episode != self._episode:
                self.stale_chunks += 1
                return ""
            self._last_action = now
            if reason:  # never hold (or publish) any action of a bad chunk: stop until the next good one
                self.rejected_actions += 1
                self._drop_actions()
                self._error = reason
            else:
                self.queue.push(arr, source_stamp)
                self._popped, self._error = 0, ""
        return reason

    def inference_failed(self, reason: str) -> None:
        """An exception in inference: stop until the next good chunk."""
        with self._lock:
            self._drop_actions()
            self._error = reason

    def _drop_actions(self) -> None:
        self.queue.clear()
        self._held, self._held_stamp, self._held_index = None, None, None

    # ---- tick -------------------------------------------------------------------------------
    def tick(self, now: float) -> ControlCommand:
        with self._lock:
            if not self.enabled:  # the queue still drains at the control rate: inference keeps running
                self._pop(now)
                return ControlCommand(None, None, "disabled", "enabled is false")
            problem = self._input_problem(now)
            if problem:  # planned for a world no longer observed: dropped
                self._drop_actions()
                return ControlCommand(None, None, *problem)
            if self._error:
                return ControlCommand(None, None, "error", self._error)
            if not self._pop(now) and self._last_action is not None and now - self._last_action > self.stale_timeout_s:
                return ControlCommand(None, None, "stale", f"no fresh action for {now - self._last_action:.2f} s")
            if self._held is None:
                return ControlCommand(None, None, "waiting", "no action inferred yet in this episode")
            action = self._held
            if not self.discrete:
                action = np.clip(action, self.action_min, self.action_max)
            if not np.all(np.isfinite(action)):  # unreachable by construction; the last line of defence
                return ControlCommand(None, None, "error", "non-finite action after clamping")
            return ControlCommand(action.astype(np.float32), self._held_stamp, "running", "", self._held_index)

    def _pop(self, now: float) -> bool:
        """Take the next queued action as the held one (True), or keep holding (False)."""
        source = self.queue.source
        action = self.queue.pop()
        if action is None:
            return False
        self._held, self._held_stamp, self._held_index = action, source, self._popped
        self._popped += 1
        self._last_action = now
        return True


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
           "format_source_stamp", "parse_source_stamp", "SOURCE_STAMP_PREFIX", "CHUNK_INDEX_PREFIX"]
