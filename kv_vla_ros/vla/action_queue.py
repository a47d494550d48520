"""`ActionQueue`: execute a policy's action chunk one action per control tick, and ask for the next
inference once ``actions_per_inference`` of them were used (LeRobot's ``n_action_steps``), or
earlier: while the chunk still runs (``threshold``, LeRobot's ``chunk_size_threshold``).

Seamless chunks: an inference that starts while actions are still queued returns a chunk whose
row 0 answers the observation it started from; by the time it arrives ``skip`` more actions were
executed. Its rows ``skip ..`` then line up with the actions still queued, and the overlap is merged
by a documented rule (`merge_chunk`): ``replace`` (the new rows) or ``blend`` (a linear crossfade,
weight of the new chunk ``(i + 1) / (m + 1)`` at overlap row ``i`` of ``m``), or ``rtc`` (real-time
chunking, Black et al. 2025: a flow policy samples the new chunk guided toward the actions queued
when its inference started (`rtc_guide`), so its rows already agree with them; merged as ``replace``).

π0 predicts ``chunk_size`` actions per inference; the package's own VLA one. The node, the
closed-loop evaluator and the benchmarks all consume chunks through this queue, so the executed
actions and the inference schedule are the same everywhere. Thread-safe (the node's inference
worker pushes while its control timer pops). Numpy only.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

MERGE_RULES = ("replace", "blend", "rtc")


def merge_chunk(queued: np.ndarray, chunk: np.ndarray, skip: int, executed: int, rule: str = "replace") -> np.ndarray:
    """The actions to queue when ``chunk (L, d)`` arrives with ``queued (q, d)`` still waiting and
    ``skip`` actions executed since its inference started. Its executed rows are ``skip ..
    max(executed, skip + 1)`` (at least one row, at most the chunk); the first ``min(q, rows)`` of
    them overlap the queued actions and are merged by ``rule``. Returns (rows, d)."""
    if rule not in MERGE_RULES:
        raise ValueError(f"action_chunk_merge: expected one of {', '.join(MERGE_RULES)}, got {rule!r}")
    length = chunk.shape[0]
    start = min(max(0, int(skip)), length - 1)
    rows = np.array(chunk[start: min(length, max(int(executed), start + 1))], dtype=np.float64)
    overlap = min(len(queued), len(rows))
    if rule == "blend" and overlap:  # rtc: the chunk was sampled to agree with the queue (replace)
        weight = (np.arange(overlap, dtype=np.float64)[:, None] + 1.0) / (overlap + 1.0)  # of the new chunk
        rows[:overlap] = (1.0 - weight) * np.asarray(queued[:overlap], dtype=np.float64) + weight * rows[:overlap]
    return rows


def rtc_weights(queued: int, delay: int) -> np.ndarray:
    """RTC's soft mask (Black et al. 2025, eq. 5) over a new chunk's first ``queued`` rows, for an
    inference expected to deliver ``delay`` control steps after it starts: 1 on the rows executed
    before it arrives (``i < delay``), then exponentially decaying to 0 at the queue's end (rows
    past the queue: 0, free). Returns (queued,) float64."""
    d = min(max(int(delay), 0), int(queued))
    i = np.arange(int(queued), dtype=np.float64)
    c = (queued - i) / (queued - d + 1.0)
    weights = c * np.expm1(c) / np.expm1(1.0)
    weights[:d] = 1.0
    return weights


@dataclass(frozen=True)
class ChunkGuide:
    """What a flow policy's sampling is guided toward (RTC's inpainting): row ``i < len(target)`` of
    the new chunk toward ``target[i]`` (robot units, (m, action_dim)) with weight ``weights[i]``
    ((m,), in [0, 1]); ``max_guidance``: RTC's clip of the guidance weight (beta); ``hard``: rows of
    weight 1 are inpainted exactly instead (set to the target, noised to the flow time, after every
    denoising step: the chunk then reproduces them)."""

    target: np.ndarray
    weights: np.ndarray
    max_guidance: float = 5.0
    hard: bool = False

    def __post_init__(self):
        target, weights = np.asarray(self.target, dtype=np.float64), np.asarray(self.weights, dtype=np.float64)
        if target.ndim != 2 or weights.shape != (target.shape[0],):
            raise ValueError(f"guide: expected target (m, action_dim) and weights (m,), got {target.shape} and "
                             f"{weights.shape}")
        if not (np.isfinite(target).all() and np.isfinite(weights).all()) or weights.min(initial=0) < 0:
            raise ValueError("guide: target and weights must be finite, weights >= 0")
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "weights", weights)


def rtc_guide(queued: np.ndarray | None, delay: int, max_guidance: float = 5.0) -> ChunkGuide | None:
    """The guide of an RTC inference started with the plan ``queued (q, d)`` (the queued actions,
    then the current chunk's tail: `ActionQueue.plan`) and expected to deliver ``delay`` ticks
    later: row ``i`` of the new chunk toward ``queued[i]``, RTC's soft mask (`rtc_weights`: 1 on
    the rows executed before it arrives, then decaying to the plan's end). None when there is no
    plan (plain sampling)."""
    if queued is None or len(queued) == 0:
        return None
    return ChunkGuide(np.asarray(queued, dtype=np.float64), rtc_weights(len(queued), delay), max_guidance)


class ActionQueue:
    """Actions waiting for execution, oldest first.

    Args:
        actions_per_inference: actions of each chunk that are executed (the rest is dropped when
            the next chunk arrives); changeable live with ``set_actions_per_inference``.
    """

    def __init__(self, actions_per_inference: int = 1):
        self._lock = threading.Lock()
        self._queue: deque[np.ndarray] = deque()
        self.actions_per_inference = self._check(actions_per_inference)
        self.chunks = 0  # chunks pushed since the last clear
        self.popped = 0  # actions popped since creation (aligns a late chunk with the queue)
        self.tail: np.ndarray | None = None  # the current chunk's rows after the queued ones (its plan beyond)
        self.source: object = None  # what the current chunk answers (e.g. a frame stamp)

    @staticmethod
    def _check(n) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"actions_per_inference: must be an int >= 1, got {n!r}")
        return int(n)

    def set_actions_per_inference(self, n: int) -> None:
        """Applies from the next chunk on (a shorter setting also trims the current one)."""
        n = self._check(n)
        with self._lock:
            self.actions_per_inference = n
            while len(self._queue) > n:
                self._queue.pop()

    def push(self, chunk: np.ndarray, source: object = None) -> None:
        """Replace the queue with the first ``actions_per_inference`` rows of ``chunk (n, dim)``."""
        chunk = np.asarray(chunk)
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            raise ValueError(f"chunk: expected an (n, action_dim) array with n >= 1, got shape {chunk.shape}")
        with self._lock:
            self._queue = deque(np.array(a, copy=True) for a in chunk[: self.actions_per_inference])
            self.chunks += 1
            self.source = source

    def snapshot(self) -> np.ndarray | None:
        """The queued actions as (q, d) (None when empty)."""
        with self._lock:
            return np.stack(list(self._queue)) if self._queue else None

    def replace(self, actions: np.ndarray, source: object = None, tail: np.ndarray | None = None) -> None:
        """Queue exactly ``actions (n, d)`` (already merged: see `merge_chunk`); ``tail (m, d)``: the
        chunk's rows after them, never executed but the plan RTC guides the next chunk toward."""
        with self._lock:
            self._queue = deque(np.array(a, copy=True) for a in actions)
            self.tail = None if tail is None or len(tail) == 0 else np.array(tail, dtype=np.float64)
            self.chunks += 1
            self.source = source

    def plan(self) -> np.ndarray | None:
        """The queued actions then the current chunk's tail, (q + m, d) (None when both are empty):
        what the robot would do without a new chunk, RTC's target (`rtc_guide`)."""
        with self._lock:
            parts = [np.stack(list(self._queue))] if self._queue else []
            parts += [self.tail] if self.tail is not None else []
            return np.concatenate(parts).astype(np.float64) if parts else None

    def pop(self) -> np.ndarray | None:
        """The next action, or None when the chunk is used up."""
        with self._lock:
            if not self._queue:
                return None
            self.popped += 1
            return self._queue.popleft()

    def merged(self, chunk: np.ndarray, started: int | None, rule: str = "replace"
               ) -> tuple[np.ndarray, int, np.ndarray]:
        """What `merge_chunk` queues when ``chunk (L, d)`` arrives from an inference that started
        when ``popped`` read ``started`` (None: nothing executed meanwhile); also returns the chunk
        row of its first queued action (the actions popped since the start are skipped) and the
        chunk's tail (its rows after those, for `replace`'s ``tail``). The node's control loop and
        the delayed closed loop both merge through here."""
        chunk = np.asarray(chunk, dtype=np.float64)
        with self._lock:
            skip = 0 if started is None else self.popped - int(started)
            queued = np.stack(list(self._queue)) if self._queue else np.zeros((0, chunk.shape[1]))
            per_inference = self.actions_per_inference
        rows = merge_chunk(queued, chunk, skip, per_inference, rule)
        first = min(max(0, skip), chunk.shape[0] - 1)
        return rows, first, chunk[first + len(rows):]

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def needs_inference(self) -> bool:
        """True when every executed action of the current chunk was used."""
        return len(self) == 0

    def clear(self) -> None:
        """Drop the queued actions (new episode, stop, disabled, stale inputs)."""
        with self._lock:
            self._queue.clear()
            self.tail = None
            self.chunks = 0
            self.source = None


__all__ = ["ActionQueue", "ChunkGuide", "merge_chunk", "rtc_guide", "rtc_weights", "MERGE_RULES"]
