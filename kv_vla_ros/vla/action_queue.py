"""`ActionQueue`: execute a policy's action chunk one action per control tick, and ask for the next
inference once ``actions_per_inference`` of them were used (LeRobot's ``n_action_steps``), or
earlier: while the chunk still runs (``threshold``, LeRobot's ``chunk_size_threshold``).

Seamless chunks: an inference that starts while actions are still queued returns a chunk whose
row 0 answers the observation it started from; by the time it arrives ``skip`` more actions were
executed. Its rows ``skip ..`` then line up with the actions still queued, and the overlap is merged
by a documented rule (`merge_chunk`): ``replace`` (the new rows) or ``blend`` (a linear crossfade,
weight of the new chunk ``(i + 1) / (m + 1)`` at overlap row ``i`` of ``m``).

π0 predicts ``chunk_size`` actions per inference; the package's own VLA one. The node, the
closed-loop evaluator and the benchmarks all consume chunks through this queue, so the executed
actions and the inference schedule are the same everywhere. Thread-safe (the node's inference
worker pushes while its control timer pops). Numpy only.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

MERGE_RULES = ("replace", "blend")


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
    if rule == "blend" and overlap:
        weight = (np.arange(overlap, dtype=np.float64)[:, None] + 1.0) / (overlap + 1.0)  # of the new chunk
        rows[:overlap] = (1.0 - weight) * np.asarray(queued[:overlap], dtype=np.float64) + weight * rows[:overlap]
    return rows


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

    def replace(self, actions: np.ndarray, source: object = None) -> None:
        """Queue exactly ``actions (n, d)`` (already merged: see `merge_chunk`)."""
        with self._lock:
            self._queue = deque(np.array(a, copy=True) for a in actions)
            self.chunks += 1
            self.source = source

    def pop(self) -> np.ndarray | None:
        """The next action, or None when the chunk is used up."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

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
            self.chunks = 0
            self.source = None


__all__ = ["ActionQueue", "merge_chunk", "MERGE_RULES"]
