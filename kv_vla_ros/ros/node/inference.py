"""Inference apart from the control loop: one worker thread owns the `VLASession` and runs a step
on the newest inputs whenever the control loop wants a new action chunk.

Inputs: the first camera's newest frame (it drives the steps: each inference takes a frame of it
that no inference used yet, and an older untaken one is dropped and counted), the last frames of
every further camera, and the last robot states. Further cameras and the state are paired with the
first camera's frame by header stamp (`pair_frame`: the closest within ``sync_slop_s``, an
approximate-time rule implemented once in ``kv_vla_ros.data.resample.closest_within``, which the
lockstep bag reader uses too, waiting up to ``sync_slop_s`` for a message at or after the frame's stamp),
so that inputs sharing a stamp are never paired one message apart by arrival order: topics arrive
in either order, and an executor that finds two ready runs them in its own order. The state falls
back to the newest when it carries no stamp or none is close (a robot whose clocks disagree still
moves). No rclpy here: frames are opaque objects turned into RGB by the ``to_rgb`` callable.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from kv_vla_ros.data.resample import closest_within
from kv_vla_ros.ros.node.control import RollingStats

POLL_S = 0.05  # re-check of time-dependent conditions (input freshness) while frames wait
FRAMES_KEPT = 16  # frames kept per further camera, for pairing by stamp
STATES_KEPT = 64  # robot states kept for pairing by stamp (joint states come faster than frames)


def stamp_seconds(stamp) -> float | None:
    """``(sec, nanosec)`` -> seconds; None for no stamp or a zero stamp (a camera that stamps nothing)."""
    if stamp is None or tuple(stamp) == (0, 0):
        return None
    return stamp[0] + stamp[1] * 1e-9


def pair_frame(frames, stamp, slop_s: float, waited_s: float = float("inf")):
    """The frame of a further camera to step with the first camera's frame stamped ``stamp``.

    ``frames``: that camera's last ``(frame, stamp)`` pairs, oldest first; ``waited_s``: how long
    the first camera's frame has waited. Returns the pair whose stamp is closest to ``stamp`` within
    ``slop_s``, once one at or after ``stamp`` arrived or ``slop_s`` went by (a message of the same
    stamp may still be on its way); ``None`` when none is yet but a later frame may be (wait);
    ``"unpaired"`` when none can ever be (every newer frame is past the slop). Without a slop (0)
    or without stamps: the newest frame."""
    if not frames:
        return None
    if slop_s <= 0:
        return frames[-1]
    target, newest = stamp_seconds(stamp), stamp_seconds(frames[-1][1])
    if target is None or newest is None:
        return frames[-1]
    if newest < target and waited_s < slop_s:
        return None
    best = closest_within([_stamp_ns(f[1]) for f in frames], _stamp_ns(stamp), int(round(slop_s * 1e9)))
    if best is not None:
        return frames[best]
    return "unpaired" if newest > target + slop_s else None


def _stamp_ns(stamp) -> int | None:
    return int(stamp[0]) * 1_000_000_000 + int(stamp[1]) if stamp is not None and tuple(stamp) != (0, 0) else None


def pair_state(states, stamp, slop_s: float, waited_s: float):
    """The robot state to step with the first camera's frame stamped ``stamp``: as `pair_frame`,
    but never unpaired: without stamps, or with none within ``slop_s`` once the wait is over, the
    newest state. ``states``: the last ``(state, stamp)`` pairs, oldest first. Returns
    ``(state or None,)``, or ``None`` to wait."""
    paired = pair_frame(states, stamp, slop_s, waited_s)
    if paired is None and states and waited_s < slop_s:
        return None
    if isinstance(paired, tuple):
        return (paired[0],)
    return (states[-1][0] if states else None,)


def after_stamp(messages, floor) -> list:
    """The ``(message, stamp)`` pairs stamped at or after ``floor`` (those without a stamp kept)."""
    return [m for m in messages if m[1] is None or tuple(m[1]) == (0, 0) or tuple(m[1]) >= tuple(floor)]


class InferenceWorker:
    """Runs ``session.reset`` / ``session.step_action_chunk`` on a thread of its own.

    Args:
        session: a ``VLASession`` (or anything with ``reset``, ``step_action_chunk``, ``stats``).
        to_rgb: frame object -> uint8 (H, W, 3); its exceptions count as bad frames.
        on_chunk: ``(actions (n, action_dim), source_stamp, now, episode, started)`` after each
            step; ``episode`` is the id `start_episode` returned for the episode the step belongs
            to, ``started`` what ``on_start`` returned when the step began.
        on_error: ``(kind, message)`` with kind ``frame`` (bad image) or ``inference``.
        clock: monotonic seconds (shared with the control loop).
        num_cameras: frames per step (one slot each).
        ready: ``() -> bool``: may a step start now (the control loop wants a chunk and every input
            is fresh)? Default: always.
        on_start: ``() -> token`` called as a step takes its inputs (None: no token).
        sync_slop_s: camera pairing by stamp (see `pair_frame`); live via the attribute.
        view_ok: ``(stamp) -> bool or None``: lockstep (``wait_for_action_view``): False keeps a
            first-camera frame waiting for a newer one (it was taken before the newest action
            ran); True steps on it, with a state no older than it; None: no lockstep.
        guide: ``() -> ChunkGuide or None``, taken as a step takes its inputs (real-time chunking:
            the step's chunk is sampled toward the actions queued then).
    """

    def __init__(self, session, to_rgb: Callable[[Any], np.ndarray],
                 on_chunk: Callable[[np.ndarray, Any, float, int], None], on_error: Callable[[str, str], None],
                 clock: Callable[[], float] = time.monotonic, num_cameras: int = 1,
                 ready: Callable[[], bool] | None = None, on_start: Callable[[], Any] | None = None,
                 sync_slop_s: float = 0.0, view_ok: Callable[[Any], bool | None] | None = None,
                 guide: Callable[[], Any] | None = None):
        self.session = session
        self._to_rgb, self._on_chunk, self._on_error, self._clock = to_rgb, on_chunk, on_error, clock
        self._ready = ready or (lambda: True)
        self._on_start = on_start or (lambda: None)
        self._view_ok = view_ok or (lambda stamp: None)
        self._guide = guide or (lambda: None)
        self.sync_slop_s = float(sync_slop_s)
        self._cond = threading.Condition()
        self.session_lock = threading.Lock()  # held for every session call
        self._frames: list[tuple[Any, Any] | None] = [None]  # the first camera's newest frame
        self._others: list[deque] = [deque(maxlen=FRAMES_KEPT) for _ in range(int(num_cameras) - 1)]
        self._partners: list | None = None  # further cameras' frames paired with the first's (set by _can_step)
        self._fresh = False  # the first camera's frame was not used by an inference yet
        self._frame_arrived = 0.0  # time.monotonic() when the first camera's newest frame came
        self._retry_s = POLL_S  # when to look again while a frame waits for its partners
        self._states: deque = deque(maxlen=STATES_KEPT)
        self._state: np.ndarray | None = None  # the state paired with the step's frame (set by _can_step)
        self._instruction: str | None = None  # pending episode start
        self._episode = 0  # id of the newest episode started (`start_episode`)
        self._stop = False
        self.episode_instruction: str | None = None
        self.episodes = 0
        self.frames_submitted = 0
        self.frames_dropped = 0
        self.frames_without_episode = 0
        self.frames_rejected = 0
        self.frames_unpaired = 0  # first-camera frames no further camera's frame matched within the slop
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
    def submit(self, frame: Any, source_stamp: Any = None, camera: int = 0) -> None:
        """Offer a camera's frame; replaces the camera's previous one (on the first camera, one no
        inference took is dropped and counted)."""
        with self._cond:
            if camera == 0:
                self.frames_submitted += 1
                if self.episode_instruction is None and self._instruction is None:
                    self.frames_without_episode += 1  # no episode to step: never a step's frame
                else:
                    self.frames_dropped += self._fresh
                    self._fresh = True
                self._frames[0] = (frame, source_stamp)
                self._frame_arrived = time.monotonic()
            else:
                self._others[camera - 1].append((frame, source_stamp))
            self._cond.notify()

    def submit_state(self, state: np.ndarray, source_stamp: Any = None) -> None:
        """A robot state (already checked: (state_dim,) finite) with its header stamp, if any."""
        with self._cond:
            self._states.append((state, source_stamp))
            self._cond.notify()

    def wake(self) -> None:
        """Re-check whether a step may start (the control loop used up its chunk)."""
        with self._cond:
            self._cond.notify()

    def start_episode(self, instruction: str) -> int:
        """New episode with ``instruction``; a first-camera frame not yet taken belongs to the old
        one: dropped. Returns the episode's id (passed with its chunks to ``on_chunk``)."""
        with self._cond:
            if self._fresh:
                self.frames_dropped += 1
            self._fresh = False
            self._instruction = instruction
            self._episode += 1
            self._cond.notify()
            return self._episode

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
    def _can_step(self) -> bool:
        """Under the condition's lock: a fresh first-camera frame, an episode, a partner frame of
        every further camera (`pair_frame`; an unpairable first frame is dropped) and ``ready``."""
        if not (self._fresh and self.episode_instruction is not None and self._frames[0] is not None):
            return False
        stamp, waited = self._frames[0][1], time.monotonic() - self._frame_arrived
        lockstep = self._view_ok(stamp)
        if lockstep is False:
            return False  # a view from before the newest action ran: wait for the one after it
        self._retry_s = min(POLL_S, max(self.sync_slop_s - waited, 0.0) + 1e-3)
        others, states = self._others, self._states
        if lockstep and stamp is not None:  # the other inputs must show the newest action's effect too
            others = [after_stamp(frames, stamp) for frames in others]
            states = after_stamp(states, stamp)
            if self._states and not states:
                return False  # the state of the view after the action is still on its way
        partners = [pair_frame(frames, stamp, self.sync_slop_s, waited) for frames in others]
        if any(p == "unpaired" for p in partners):
            self._fresh = False
            self.frames_unpaired += 1
            return False
        state = pair_state(states, stamp, self.sync_slop_s, waited)
        if any(p is None for p in partners) or state is None or not self._ready():
            return False
        if self._view_ok(stamp) is False:  # again after ready(): a tick may have sent an action since
            return False
        self._partners, self._state = partners, state[0]
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._instruction is None and not self._can_step():
                    self._cond.wait(self._retry_s if self._fresh else None)
                if self._stop:
                    return
                instruction, self._instruction = self._instruction, None
                episode, inputs = self._episode, None
                if instruction is None:
                    inputs, state = [self._frames[0]] + list(self._partners), self._state
                    self._fresh = False
                    started, guide = self._on_start(), self._guide()
            if instruction is not None:
                self._reset(instruction)
            else:
                self._step(inputs, state, episode, started, guide)

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

    def _step(self, inputs: list[tuple[Any, Any]], state: np.ndarray | None, episode: int, started=None,
              guide=None) -> None:
        try:
            images = [self._to_rgb(frame) for frame, _ in inputs]
        except Exception as exc:  # ImageConversionError and anything a broken message throws
            self.frames_rejected += 1
            self._on_error("frame", f"{type(exc).__name__}: {exc}")
            return
        t0 = time.perf_counter()
        try:
            with self.session_lock:
                chunk = self.session.step_action_chunk(images, state, **({"guide": guide} if guide else {}))
                self.last_stats = self._snapshot()
        except Exception as exc:
            self.inference_errors += 1
            self._on_error("inference", f"{type(exc).__name__}: {exc}")
            return
        self.latency_ms.add((time.perf_counter() - t0) * 1e3)
        self.inferences += 1
        self._on_chunk(np.asarray(chunk), inputs[0][1], self._clock(), episode, started)


__all__ = ["InferenceWorker"]
