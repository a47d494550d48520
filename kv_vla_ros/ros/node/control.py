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

from kv_vla_ros.ros.node.safety import RULES, Rejection, SafetyLimits, check_chunk, check_sequence
from kv_vla_ros.vla.action_queue import MERGE_RULES, ActionQueue, rtc_guide

ON_REJECT = ("stop", "hold")

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


def check_merge_rule(rule: str, policy) -> None:
    """ValueError naming ``action_chunk_merge`` when ``rule`` cannot serve ``policy`` (rtc guides the
    sampling of a flow policy: π0)."""
    if rule not in MERGE_RULES:
        raise ValueError(f"action_chunk_merge: expected one of {', '.join(MERGE_RULES)}, got {rule!r}")
    if rule == "rtc" and not getattr(policy, "supports_guide", False):
        raise ValueError(f"action_chunk_merge: rtc needs a flow policy (π0) whose sampling it guides; this "
                         f"{getattr(policy, 'model_type', '?')} checkpoint has none (use replace or blend)")


@dataclass(frozen=True)
class ControlCommand:
    """What one control tick publishes. ``action`` None means stop. ``chunk_index``: the action's
    row in the chunk it comes from (None for stop). ``plan``: set on the tick a new plan starts
    (a chunk was queued, or a hold after a rejected one): what a trajectory output publishes."""

    action: np.ndarray | None
    source_stamp: tuple[int, int] | None
    state: str  # running, holding, waiting, stale, deadman, disabled, error
    reason: str = ""
    chunk_index: int | None = None
    plan: np.ndarray | None = None  # (k, d) on the tick a new plan starts: this action and the queued rest

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

    A chunk ``(n, dim)`` is checked whole (`kv_vla_ros.ros.node.safety`: finiteness, ids, bounds, max
    step and jerk with the commands last sent) and, if it passes, merged into the ``ActionQueue``
    (rows already overtaken by the actions executed while it was inferred are skipped; the overlap
    with the queued actions merged by ``merge_rule``). Its actions are published one per tick;
    the next inference may start once at most ``threshold x actions_per_inference`` of them remain
    (``needs_chunk``); a used-up queue holds its last action. A rejected chunk is never partly
    executed: the queue is dropped and the robot stops (``on_reject="stop"``) or holds the command
    last sent (``"hold"``), counted per rule in ``rejections``.

    Inputs (the cameras, the robot state) are named; each must have arrived within
    ``stale_timeout_s``, else stop (``stale``, naming the input) and the queue is dropped. With a
    deadman (``enable_required``) a ``true`` must have arrived within ``enable_timeout_s``, else stop.

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
                 actions_per_inference: int = 1, period_s: float = 0.05):
        self.discrete, self.num_actions, self.action_dim = discrete, int(num_actions), int(action_dim)
        self._lock = threading.Lock()
        self.stale_timeout_s = float(stale_timeout_s)
        self.enabled = bool(enabled)
        self.period_s = float(period_s)
        self.threshold, self.merge_rule, self.on_reject = 0.0, "replace", "stop"
        self.enable_required, self.enable_timeout_s, self._enable_at = False, 0.5, None
        inf = np.full(self.action_dim, np.inf)
        self.limits = SafetyLimits(-inf, inf.copy(), inf.copy(), inf.copy())
        self.set_limits(action_min, action_max)
        self.queue = ActionQueue(actions_per_inference)
        self.inputs = list(inputs)
        self._received: list[float | None] = [None] * len(self.inputs)
        self._input_notes: list[str] = [""] * len(self.inputs)
        self._held: np.ndarray | None = None
        self._held_stamp: tuple[int, int] | None = None
        self._held_index: int | None = None
        self._chunk_row = 0  # chunk row of the next queued action
        self._sent: deque[np.ndarray] = deque(maxlen=3)  # commands last sent while acting (seam checks)
        self._plan_pending = False  # a new plan (queue) starts at the next tick: trajectory outputs send it
        self._last_action: float | None = None
        self._blocked = False  # the last tick stopped for an input or the deadman
        self._error = ""
        self._hold_reason = ""
        self.rejected_actions = 0  # chunks rejected whole (any rule), never published
        self.rejections = {rule: 0 for rule in RULES}
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
            self.limits.action_min, self.limits.action_max = lo, hi

    def set_safety(self, max_step=None, max_jerk=None, reject_out_of_bounds=None, on_reject=None) -> None:
        """Whole-chunk safety rules (live; from the next chunk on). ValueError naming the parameter."""
        step = None if max_step is None else broadcast_limits("safety.max_step", max_step, self.action_dim)
        jerk = None if max_jerk is None else broadcast_limits("safety.max_jerk", max_jerk, self.action_dim)
        for name, arr in (("safety.max_step", step), ("safety.max_jerk", jerk)):
            if arr is not None and (np.any(np.isnan(arr)) or np.any(arr <= 0)):
                raise ValueError(f"{name}: every value must be > 0 (inf: no limit), got {arr.tolist()}")
        if on_reject is not None and on_reject not in ON_REJECT:
            raise ValueError(f"safety.on_reject: expected one of {', '.join(ON_REJECT)}, got {on_reject!r}")
        with self._lock:
            self.limits.max_step = step if step is not None else self.limits.max_step
            self.limits.max_jerk = jerk if jerk is not None else self.limits.max_jerk
            if reject_out_of_bounds is not None:
                self.limits.reject_out_of_bounds = bool(reject_out_of_bounds)
            self.on_reject = on_reject or self.on_reject

    def set_chunking(self, threshold=None, merge_rule=None) -> None:
        if merge_rule is not None and merge_rule not in MERGE_RULES:
            raise ValueError(f"action_chunk_merge: expected one of {', '.join(MERGE_RULES)}, got {merge_rule!r}")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"action_chunk_threshold: must be in [0, 1], got {threshold}")
        with self._lock:
            self.threshold = self.threshold if threshold is None else float(threshold)
            self.merge_rule = merge_rule or self.merge_rule

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
            self._input_notes[index] = ""

    def input_rejected(self, index: int, reason: str) -> None:
        """A message on input ``index`` was unusable: named in the stale / waiting reason."""
        with self._lock:
            self._input_notes[index] = reason

    def frame_received(self, now: float) -> None:
        """The first camera's frame arrived."""
        self.input_received(0, now)

    def enable_received(self, value: bool, now: float) -> None:
        """Deadman heartbeat: ``true`` allows acting for ``enable_timeout_s``; ``false`` stops at once."""
        with self._lock:
            self._enable_at = now if value else None

    def input_ages(self, now: float) -> dict[str, float | None]:
        """Seconds since each input last arrived (None: never)."""
        with self._lock:
            return {name: (None if t is None else now - t) for name, t in zip(self.inputs, self._received)}

    def input_problem(self, now: float) -> tuple[str, str] | None:
        """``(state, reason)`` when the deadman is off or an input is missing (``waiting``) or stale
        (``stale``), else None."""
        with self._lock:
            return self._deadman_problem(now) or self._input_problem(now)

    def _deadman_problem(self, now: float) -> tuple[str, str] | None:
        if not self.enable_required:
            return None
        if self._enable_at is None:
            return "deadman", "no true received on enable_topic (or the last was false)"
        if now - self._enable_at > self.enable_timeout_s:
            return "deadman", f"no true on enable_topic for {now - self._enable_at:.2f} s"
        return None

    def _input_problem(self, now: float) -> tuple[str, str] | None:
        def named(i: int) -> str:
            note = self._input_notes[i]
            return self.inputs[i] + (f" (last message rejected: {note})" if note else "")

        missing = [named(i) for i, t in enumerate(self._received) if t is None]
        if missing:
            return "waiting", f"no message received yet on {', '.join(missing)}"
        stale = [(named(i), now - t) for i, t in enumerate(self._received) if now - t > self.stale_timeout_s]
        if stale:
            return "stale", "; ".join(f"no fresh message on {name} for {age:.2f} s" for name, age in stale)
        return None

    @property
    def needs_chunk(self) -> bool:
        """True when at most ``threshold`` of the executed actions remain queued (0: used up)."""
        return len(self.queue) <= int(self.threshold * self.queue.actions_per_inference)

    def inference_started(self) -> int:
        """An inference starts on the newest inputs: its token for `action_ready` (``started``)."""
        with self._lock:
            return self.queue.popped

    def inference_guide(self, delay_steps: int):
        """``merge_rule`` rtc: the guide (`rtc_guide`: the plan, queued actions then the chunk's tail,
        clamped as they would be sent, and RTC's soft mask for an inference expected to take
        ``delay_steps`` ticks); else None."""
        with self._lock:
            if self.merge_rule != "rtc" or self.discrete:
                return None
            queued = self.queue.plan()
            if queued is None:
                return None
            return rtc_guide(np.clip(queued, self.action_min, self.action_max), delay_steps)

    def last_sent(self) -> tuple[tuple[int, int] | None, int] | None:
        """The newest action taken from the queue: (the frame stamp its chunk answers, its row in the
        chunk); None when none is held (start, stop, a new episode)."""
        with self._lock:
            return None if self._held is None else (self._held_stamp, self._held_index or 0)

    def action_ready(self, chunk, source_stamp: tuple[int, int] | None, now: float, episode: int | None = None,
                     started: int | None = None) -> str:
        """Queue a fresh chunk ``(n, action_dim)`` (or one action ``(action_dim,)``); returns "" when
        accepted, else why it was rejected (then nothing of it is published).

        ``started``: `inference_started`'s token (the actions executed since then are skipped).
        ``episode``: the id of the episode the chunk was inferred for. An inference that was under
        way when a new episode started ends after it: its chunk (the old instruction's) is dropped
        silently, counted in ``stale_chunks``, and the loop keeps waiting for the new episode's."""
        arr = np.asarray(chunk, dtype=np.float64)
        arr = arr.reshape(1, -1) if arr.ndim <= 1 else arr.reshape(arr.shape[0], -1)
        rejection = check_chunk(arr, self.action_dim, self.discrete, self.num_actions)
        with self._lock:
            if episode is not None and self._episode is not None and episode != self._episode:
                self.stale_chunks += 1
                return ""
            self._last_action = now
            if rejection is None:
                rows, first_row, tail = self.queue.merged(arr, started, self.merge_rule)
                if not self.discrete:
                    sent = np.stack(list(self._sent)) if self._sent else np.zeros((0, self.action_dim))
                    checked = rows if self.limits.reject_out_of_bounds else np.clip(rows, self.action_min,
                                                                                  self.action_max)
                    rejection = check_sequence(checked, sent, self.limits, self.period_s)
            if rejection is not None:
                self._reject(rejection)
                return rejection.reason
            self.queue.replace(rows, source_stamp, tail)
            self._chunk_row = first_row
            self._error, self._hold_reason, self._plan_pending = "", "", True
        return ""

    def _reject(self, rejection: Rejection) -> None:
        """Never hold (or publish) any action of a bad chunk: stop, or hold the command last sent."""
        self.rejected_actions += 1
        self.rejections[rejection.rule] += 1
        self.queue.clear()
        if self.on_reject == "hold" and self._held is not None:
            self._hold_reason = f"holding the command last sent: {rejection.reason}"
            self._plan_pending = True  # a trajectory output sends the hold
        else:
            self._held, self._held_stamp, self._held_index = None, None, None
            self._error = rejection.reason

    def inference_failed(self, reason: str) -> None:
        """An exception in inference: stop until the next good chunk."""
        with self._lock:
            self._drop_actions()
            self._error = reason

    def _drop_actions(self) -> None:
        self.queue.clear()
        self._held, self._held_stamp, self._held_index = None, None, None
        self._hold_reason = ""

    # ---- tick -------------------------------------------------------------------------------
    def tick(self, now: float) -> ControlCommand:
        with self._lock:
            cmd = self._tick(now)
            if cmd.is_stop:  # the robot stops: the next chunk starts a new sequence (no seam check)
                self._sent.clear()
            else:
                self._sent.append(cmd.action.astype(np.float64))
            return cmd

    def _tick(self, now: float) -> ControlCommand:
        if not self.enabled:  # the queue still drains at the control rate: inference keeps running
            self._pop(now)
            return ControlCommand(None, None, "disabled", "enabled is false")
        problem = self._deadman_problem(now) or self._input_problem(now)
        if problem:  # planned for a world no longer observed (or not allowed to act): dropped
            self._drop_actions()
            self._blocked = True
            return ControlCommand(None, None, *problem)
        if self._blocked:  # no inference ran while blocked: the next one gets a full timeout
            self._blocked, self._last_action = False, now
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
        plan = None
        if self._plan_pending:  # this action and the queued rest: what a trajectory output sends
            queued = self.queue.snapshot()
            plan = action[None] if queued is None else np.concatenate([action[None], queued])
            plan = plan if self.discrete else np.clip(plan, self.action_min, self.action_max)
            self._plan_pending = False
        state = "holding" if self._hold_reason else "running"
        return ControlCommand(action.astype(np.float32), self._held_stamp, state, self._hold_reason,
                              self._held_index, plan)

    def _pop(self, now: float) -> bool:
        """Take the next queued action as the held one (True), or keep holding (False)."""
        source = self.queue.source
        action = self.queue.pop()
        if action is None:
            return False
        self._held, self._held_stamp, self._held_index = action, source, self._chunk_row
        self._chunk_row += 1
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


__all__ = ["ControlLoop", "ControlCommand", "TwistAdapter", "RollingStats", "broadcast_limits", "check_merge_rule",
           "format_source_stamp", "parse_source_stamp", "SOURCE_STAMP_PREFIX", "CHUNK_INDEX_PREFIX"]
