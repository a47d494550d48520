"""SIGINT / SIGTERM for the nodes: caught from the first line of the process to its last, so any
number of them, at any moment (start-up, running, shutdown), ends a node with exit 0 and no
traceback.

Why each step is needed:
- rclpy's own handler raises KeyboardInterrupt wherever the main thread happens to be (inside
  ``destroy_node()`` in the simulator: a traceback and exit code -2); a handler that only sets an
  event lets the node's main loop shut down in order (stop command first).
- Python resets every handler it set to SIG_DFL while the interpreter finalizes, so a second
  SIGINT during that time (torch's and rclpy's teardown take a while) killed the process with
  -2. A handler set to SIG_IGN is left alone by finalization: `ignore_stop_signals` is the
  node's last call.
- The node scripts (``nodes/``) record a signal from their first line, through the built-in
  ``_signal`` (importing ``signal`` loads enum, functools and collections: a Ctrl-C in that time,
  a few hundredths of a second on a loaded machine, printed a KeyboardInterrupt traceback and
  exited -2); `catch_stop_signals` takes over what they recorded.
- While the node's modules load (torch, transformers, rclpy: seconds, over 10 s on a busy
  machine, past the 5 s `ros2 launch` waits before SIGTERM and the 5 more before SIGKILL), a stop
  signal also raises `StopDuringLoad` (`StopRequest.interrupting`): the loading is abandoned, as
  Python's KeyboardInterrupt would, without its traceback.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopDuringLoad(BaseException):
    """A stop signal arrived inside `StopRequest.interrupting` (a BaseException, as
    KeyboardInterrupt: no ``except Exception`` in the code being run swallows it)."""


class StopRequest:
    """A stop asked for by a signal (or by code: `set`); counts the signals received."""

    def __init__(self):
        self.event = threading.Event()
        self.signals = 0
        self._raise = False

    def _on_signal(self, _signum, _frame) -> None:
        self.signals += 1
        self.event.set()
        if self._raise:  # once: the handler runs in the main thread, between two bytecodes
            self._raise = False
            raise StopDuringLoad

    @contextmanager
    def interrupting(self) -> Iterator[None]:
        """Inside: a stop signal (or one already received) raises `StopDuringLoad`; catch it
        around the ``with`` (it may come as the block ends)."""
        if self.is_set():
            raise StopDuringLoad
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


_REQUEST: StopRequest | None = None


def catch_stop_signals(received: Sequence[int] = ()) -> StopRequest:
    """Install the handlers (once per process; main thread only) and return the stop request.
    ``received``: the signals an earlier handler recorded (the node script's), read after this
    one is in place so that none is lost between the two."""
    global _REQUEST
    if _REQUEST is None:
        _REQUEST = StopRequest()
        for sig in STOP_SIGNALS:
            signal.signal(sig, _REQUEST._on_signal)
    for signum in list(received):
        _REQUEST._on_signal(signum, None)
    return _REQUEST


def ignore_stop_signals() -> None:
    """From now until the process ends, SIGINT / SIGTERM do nothing (see the module docstring)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


__all__ = ["StopDuringLoad", "StopRequest", "catch_stop_signals", "ignore_stop_signals"]
