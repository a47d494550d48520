"""Inference apart from the control loop: one worker thread owns the `VLASession` and always works
on the newest frame (an older frame still waiting when a new one arrives is dropped and counted).
No rclpy here: frames are opaque objects turned into RGB by the ``to_rgb`` callable.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from kv_vla_ros.ros.control import RollingStats


class InferenceWorker:
    """Runs ``session.reset`` / ``session.step`` on a thread of its own.

    Args:
        session: a ``VLASession`` (or anything with ``reset``, ``step``, ``stats``).
        to_rgb: frame object -> uint8 (H, W, 3); its exceptions count as bad frames.
        on_action: ``(action, source_stamp, now)`` after each step.
        on_error: ``(kind, message)`` with kind ``frame`` (bad image) or ``inference``.
        clock: monotonic seconds (shared with the control loop).
    """

    def __init__(self, session, to_rgb: Callable[[Any], np.ndarray],
                 on_action: Callable[[np.ndarray, Any, float], None], on_error: Callable[[str, str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.session = session
        self._to_rgb, self._on_action, self._on_error, self._clock = to_rgb, on_action, on_error, clock
        self._cond = threading.Condition()
        self.session_lock = threading.Lock()  # held for every session call
        self._frame: tuple[Any, Any] | None = None
        self._instruction: str | None = None  # pending episode start
        self._stop = False
        self.episode_instruction: str | None = None
        self.episodes = 0
        self.frames_submitted = 0
        self.frames_dropped = 0
        self.frames_without_episode = 0
        self.frames_rejected = 0
        self.inferences = 0
        self.inference_errors = 0
        self.latency_ms = RollingStats()
        self.last_stats: dict = {}
        self._thread = threading.Thread(target=self._run, name="kv_vla_inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- producers (any thread) ---------------------------------------------------------------
    def submit(self, frame: Any, source_stamp: Any = None) -> None:
        """Offer a frame; replaces (drops) a frame not yet taken by the worker."""
        with self._cond:
            self.frames_submitted += 1
            if self._frame is not None:
                self.frames_dropped += 1
            self._frame = (frame, source_stamp)
            self._cond.notify()

    def start_episode(self, instruction: str) -> None:
        """New episode with ``instruction``; frames not yet taken belong to the old one: dropped."""
        with self._cond:
            if self._frame is not None:
                self.frames_dropped += 1
            self._frame = None
            self._instruction = instruction
            self._cond.notify()

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(session)`` between two steps (live reconfiguration). The stats snapshot is taken
        again afterwards: a tighter budget evicts at once, and diagnostics must not go on showing
        the tokens held before it (with the new budget) until the next frame."""
        with self.session_lock:
            result = fn(self.session)
            self.last_stats = self._snapshot()
            return result

    def _snapshot(self) -> dict:
        """``session.stats()`` with the cache config those figures were taken under (one consistent
        pair for diagnostics: tokens held and the budget they are held to). Call with the lock held."""
        stats = dict(self.session.stats())
        config = getattr(self.session, "cache_config", None)
        if config is not None:
            stats["cache_config"] = config
        return stats

    # ---- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._frame is None and self._instruction is None:
                    self._cond.wait()
                if self._stop:
                    return
                instruction, self._instruction = self._instruction, None
                frame = None if instruction is not None else self._frame
                if frame is not None:
                    self._frame = None
            if instruction is not None:
                self._reset(instruction)
            elif frame is not None:
                self._step(*frame)

    def _reset(self, instruction: str) -> None:
        try:
            with self.session_lock:
                self.session.reset(instruction)
                self.last_stats = self._snapshot()
            self.episode_instruction = instruction
            self.episodes += 1
        except Exception as exc:  # a bad instruction must not kill the worker
            self.episode_instruction = None
            self.inference_errors += 1
            self._on_error("inference", f"reset({instruction!r}) failed: {type(exc).__name__}: {exc}")

    def _step(self, frame: Any, source_stamp: Any) -> None:
        if self.episode_instruction is None:
            self.frames_without_episode += 1
            return
        try:
            rgb = self._to_rgb(frame)
        except Exception as exc:  # ImageConversionError and anything a broken message throws
            self.frames_rejected += 1
            self._on_error("frame", f"{type(exc).__name__}: {exc}")
            return
        t0 = time.perf_counter()
        try:
            with self.session_lock:
                action = self.session.step(rgb)
                self.last_stats = self._snapshot()
        except Exception as exc:
            self.inference_errors += 1
            self._on_error("inference", f"{type(exc).__name__}: {exc}")
            return
        self.latency_ms.add((time.perf_counter() - t0) * 1e3)
        self.inferences += 1
        self._on_action(np.asarray(action), source_stamp, self._clock())


__all__ = ["InferenceWorker"]
