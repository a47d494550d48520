"""Ray for a `Runner`: start (or attach to) a runtime and create the worker actors on a background
thread, so that the calling process runs episodes meanwhile instead of waiting for it.

Starting a private local runtime takes seconds of wall time (``ray.init`` waits for the GCS, the
raylet and their agents to come up), and each actor then imports torch/transformers and loads
the model (about 4 s of CPU). None of that needs the caller's thread: `RayLaunch` does it on a
thread of its own and records when each part finished (``timings``).

Only Ray's public API: ``ray.init`` with its documented options, ``ray.remote`` actors, the
``ray`` logger. The actor class is made on first use, so that importing this module never imports
Ray.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Callable

_WORKER_CLASS = None


def worker_class():
    """The Ray actor class: builds the state once, runs items one at a time, answers progress and
    its location while busy."""
    global _WORKER_CLASS
    if _WORKER_CLASS is None:
        import ray

        @ray.remote(concurrency_groups={"control": 1})
        class Worker:
            def __init__(self, setup: Callable, setup_args: tuple) -> None:
                import torch

                torch.set_num_threads(1)  # one core per worker: more threads only contend
                self.state = setup(*setup_args)
                self.ticks = (None, 0)  # (item index, units done) of the running item
                self.here = (os.getpid(), ray.get_runtime_context().get_node_id())

            def run(self, fn: Callable, index: int, item):
                """``(pid, node id, seconds fn took, fn's result)``."""
                self.ticks = (index, 0)

                def tick(n: int = 1) -> None:
                    self.ticks = (index, self.ticks[1] + n)

                t0 = time.perf_counter()
                value = fn(self.state, item, tick)
                return (*self.here, time.perf_counter() - t0, value)

            @ray.method(concurrency_group="control")
            def progress(self):
                return self.ticks

            @ray.method(concurrency_group="control")
            def where(self) -> tuple[int, str]:
                return self.here

        _WORKER_CLASS = Worker
    return _WORKER_CLASS


class _NoThreadWarning(logging.Filter):
    """Ray warns that it set no SIGTERM handler when initialised off the main thread; `RayLaunch`
    installs the same handler on the main thread itself, so the warning is noise. Added to the
    handlers of the documented ``ray`` logger (where every Ray record ends up)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _mute_thread_warning() -> None:
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, _NoThreadWarning) for f in handler.filters):
            handler.addFilter(_NoThreadWarning())


def _exit_on_sigterm(signum, frame):  # what ray.init installs when called on the main thread
    sys.exit(signum)


class RayLaunch:
    """``ray.init`` and ``actors`` actors (None: one per CPU of the cluster) on a background thread.

    ``own``: start a private local runtime with ``local_cpus`` CPUs (``address="local"``: never
    someone else's cluster by accident; ``gpus_per_actor``: Ray GPUs each actor holds, 0 for CPU
    work); otherwise attach to ``config.ray_address``, or use the
    runtime this process already initialised. Read ``ray``/``actors``/``owns`` after `ready`.
    """

    def __init__(self, config, setup: Callable, setup_args: tuple, actors: int | None, own: bool,
                 local_cpus: int = 1, gpus_per_actor: float = 0):
        self.config, self.setup, self.setup_args = config, setup, setup_args
        self.ray: Any = None
        self.actors: list = []
        self.owns = False
        self.error: BaseException | None = None
        self.timings: dict[str, Any] = {}
        self._want, self._own, self._cpus, self._gpus = actors, own, local_cpus, gpus_per_actor
        self._t0 = time.monotonic()
        self._up, self._stop = threading.Event(), threading.Event()
        if threading.current_thread() is threading.main_thread():
            import signal

            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self._thread = threading.Thread(target=self._start, name="kv-vla-ray-launch", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            import ray

            _mute_thread_warning()
            cfg = self.config
            if ray.is_initialized():
                pass  # the caller's runtime (e.g. a test cluster): use it, leave it running
            elif cfg.ray_address:
                ray.init(address=cfg.ray_address, log_to_driver=cfg.log_to_driver)
                self.owns = True
            else:  # a private runtime, never someone else's cluster by accident
                ray.init(address="local", num_cpus=self._cpus, num_gpus=None if self._gpus else 0,
                         include_dashboard=False,
                         object_store_memory=cfg.object_store_mb * 1024 * 1024, log_to_driver=cfg.log_to_driver)
                self.owns = True
            self.ray = ray
            self.timings["ray_init_s"] = time.monotonic() - self._t0
            n = self._want or max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.actors = [self.new_actor() for _ in range(n)]
        except BaseException as exc:  # raised in the caller's thread by `ready`
            self.error = exc
            return
        finally:
            self._up.set()
        self._time_actors()
        # The runtime's processes die with the thread that started them (Ray sets PR_SET_PDEATHSIG
        # on them, and Linux sends it when the parent *thread* exits): this thread lives, and tears
        # the runtime down, until `shutdown` asks.
        self._stop.wait()
        t0 = time.monotonic()
        for actor in self.actors:
            self.ray.kill(actor)
        if self.owns:
            self.ray.shutdown()  # the driver lets go (and the private runtime ray.init started goes down)
        self.timings["shutdown_s"] = time.monotonic() - t0

    def new_actor(self):
        return worker_class().options(num_cpus=1, num_gpus=self._gpus, max_restarts=self.config.retries,
                                      max_task_retries=self.config.retries).remote(self.setup, self.setup_args)

    def ready(self, timeout: float | None = 0) -> bool:
        """Whether Ray is up and the actors are created (not necessarily built yet); raises the
        launch's error, if it failed."""
        self._up.wait(timeout)
        if self.error is not None:
            raise RuntimeError(f"starting Ray failed: {self.error}") from self.error
        return self._up.is_set()

    def _time_actors(self) -> None:
        """Record when each actor had built its state (``actors_ready_s``: seconds from the launch;
        None for one not built before the run ended)."""
        pending = {a.where.remote(): k for k, a in enumerate(self.actors)}
        ready_at: list = [None] * len(self.actors)
        self.timings["actors_ready_s"] = ready_at
        while pending and not self._stop.is_set():
            done, _ = self.ray.wait(list(pending), num_returns=1, timeout=0.2)
            for ref in done:
                ready_at[pending.pop(ref)] = round(time.monotonic() - self._t0, 3)

    def shutdown(self) -> None:
        """Kill the actors and, for a runtime this launch started or attached to, let go of it
        (on the launch's thread; waits for it)."""
        self._stop.set()
        self._thread.join()
        self.actors = []
        self.ray = None


__all__ = ["RayLaunch", "worker_class"]
