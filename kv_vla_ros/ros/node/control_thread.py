"""The control tick on a thread of its own, on the monotonic clock (no executor in the path).

Measured (`kv-vla bench soak`, docs/ros.md): with the tick as an rcl timer on the node's
MultiThreadedExecutor, each tick took several GIL handoffs and a rebuild of the executor's wait
set in Python (timer ready -> executor thread -> its thread pool -> the callback), all competing
with the inference thread and the subscriptions for the GIL and, on a busy machine, for a core:
the node fell to 26-44 ticks/s for 15 s at 50 Hz. Here a tick is one wake-up from a sleep and one
GIL acquisition. Missed periods are skipped, never caught up in a burst (a burst would execute
queued actions faster than real time): the next tick stays on the period grid, as rcl timers do.

Real-time priority (``priority`` > 0: SCHED_FIFO, as ros2_control's controller_manager): measured
with ``kv-vla bench soak --steps 6000 --control-rate-hz 50`` on a 2-core VM with the machine 80%
idle, the thread on the normal scheduler spent 10-18 ms runnable but not running (its
``schedstat`` run delay) before many late ticks, in some runs for minutes (up to 161 ms late, 61
one-second windows under 95% of the rate), while a sleeper in another process was never over 4 ms
late; under SCHED_FIFO the latest tick started 5.5 ms after its period. The thread holds the GIL
for a tick only (a few ms) and sleeps otherwise, so a real-time priority takes the CPU from nothing
that needs it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable


class ControlThread:
    def __init__(self, tick: Callable[[], None], period_s: float, on_error: Callable[[Exception], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, priority: int = 0):
        self._tick, self._on_error, self._clock = tick, on_error, clock
        self.priority = int(priority)
        self.scheduling = "normal"  # what the thread runs under: "normal", "SCHED_FIFO <priority>"
        self.scheduling_error: str | None = None  # why the real-time priority was refused
        self._started = threading.Event()
        self.period_s = float(period_s)  # live: read at every tick
        self.skipped = 0  # periods skipped because a tick came more than a period late
        # since the last `take_timing()`: the latest a tick started after its grid point (the OS or
        # the GIL kept the thread waiting) and the longest a tick ran (what it waited for inside)
        self.late_max_s = self.duration_max_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv_vla_control", daemon=True)

    def start(self) -> None:
        """Start ticking; returns once the thread has set its scheduling (see ``scheduling``)."""
        self._thread.start()
        self._started.wait(2.0)

    def _set_priority(self) -> None:
        if self.priority <= 0:
            return
        try:  # pid 0: the calling thread (Linux schedules threads, not processes)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.priority))
            self.scheduling = f"SCHED_FIFO {self.priority}"
        except (AttributeError, OSError) as exc:  # no permission (rtprio limit), or not Linux
            self.scheduling_error = f"{type(exc).__name__}: {exc}"

    def cancel(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        self._set_priority()
        self._started.set()
        deadline = self._clock() + self.period_s
        while not self._stop.is_set():
            delay = deadline - self._clock()
            if delay > 0 and self._stop.wait(delay):
                return
            started = self._clock()
            try:
                self._tick()
            except Exception as exc:  # a failing tick must not end the control loop
                if self._on_error is not None:
                    self._on_error(exc)
            ended = self._clock()
            self.late_max_s = max(self.late_max_s, started - deadline)
            self.duration_max_s = max(self.duration_max_s, ended - started)
            deadline += self.period_s
            late = self._clock() - deadline
            if late > 0:  # a whole period (or more) was missed: skip to the next grid point
                missed = math.ceil(late / self.period_s)
                self.skipped += missed
                deadline += missed * self.period_s

    def take_timing(self) -> dict:
        """Diagnostics keys (ms): the worst tick start lateness and tick duration since the last call."""
        values = {"tick_late_max_ms": self.late_max_s * 1e3, "tick_duration_max_ms": self.duration_max_s * 1e3}
        self.late_max_s = self.duration_max_s = 0.0
        return values


__all__ = ["ControlThread"]
