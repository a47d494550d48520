"""Work items -> results on one core, every core, or a Ray cluster, with the same results.

``Runner(setup, setup_args, config).map(fn, items)`` returns ``[fn(state, item, tick) for item in
items]``, where ``state = setup(*setup_args)`` is built once per worker (e.g. the model loaded from
its checkpoint directory) and ``tick(n)`` reports ``n`` units of progress (episodes, frames):

- ``workers == 1`` and no ``ray_address``: in-process, sequential, no Ray (``local_state`` can
  hand in a state the caller already built, e.g. the model it loaded anyway);
- otherwise Ray actors (one CPU, one torch thread each): the state is built once per actor, not
  once per item. A private local runtime is started for the run (``address="local"``, never
  someone else's cluster by accident), or ``ray_address`` attaches to an existing one.

On a private local runtime with ``local_state``, the calling process is one of the ``workers``:
it runs items itself (one torch thread) the whole run and starts ``workers - 1`` actors, so the
N cores hold N working processes, not N workers plus a scheduler, and nobody imports torch or
loads the model a second time for the core the caller sits on. Ray starts on a background thread
(`ray_launch`) while the caller already runs items. Otherwise (a cluster, a runtime the caller
initialised, or no ``local_state``) there is one actor per worker, and the caller runs items only
until a worker first answers.

Why actors and not a pool of our own: Ray restarts a worker process that dies (``max_restarts``)
and re-runs the calls it had not finished (``max_task_retries``); a result is only ever taken
from a call that returned, so every item is reported exactly once. An actor that cannot be
restarted any more is replaced, its items handed out again. Items are handed out one at a time
from a queue, each to exactly one process: a feeder thread (`feeder`) gives the actors items from
the front, the calling process takes its own from the back. Results come back in item order,
whatever order the workers finish in, so a parallel run's output equals the sequential one's
element by element. One tqdm bar counts units over all items and workers.

``setup`` and ``fn`` must be importable module-level functions (Ray ships them by reference),
and the paths in ``setup_args`` must exist on every node of a cluster (a shared file system or the
same copy everywhere).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

Tick = Callable[[int], None]
WorkFn = Callable[[Any, Any, Tick], Any]


def default_workers() -> int:
    """The cores this process may run on (the machine's cores unless pinned by affinity/cgroups)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class RunnerConfig:
    """Where the work runs.

    Attributes:
        workers: worker processes (None: the machine's cores, or the cluster's CPUs with
            ``ray_address``); 1 without ``ray_address`` runs in-process without Ray.
        ray_address: an existing Ray cluster (``ray start --head`` prints it; ``auto`` finds the
            local one); None starts a private local runtime for the run.
        retries: restarts of a dead worker, and attempts of one item, before the run fails.
        object_store_mb: object store of a local runtime (results are small: keep it small).
        log_to_driver: forward worker stdout/stderr (off: tracebacks still come back as errors).
        progress: show the tqdm bar.
    """

    workers: int | None = None
    ray_address: str | None = None
    retries: int = 3
    object_store_mb: int = 128
    log_to_driver: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool) or int(self.workers) != self.workers
                                         or self.workers < 1):
            raise ValueError(f"workers: must be an int >= 1, got {self.workers!r}")
        if self.ray_address is not None and not str(self.ray_address).strip():
            raise ValueError("ray_address: empty; give HOST:PORT, 'auto', or leave it out")
        if self.retries < 0:
            raise ValueError(f"retries: must be >= 0, got {self.retries}")
        if self.object_store_mb < 80:
            raise ValueError(f"object_store_mb: Ray needs at least 80, got {self.object_store_mb}")

    @property
    def uses_ray(self) -> bool:
        return self.ray_address is not None or (self.workers or default_workers()) > 1


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--ray-address`` (the same two flags on every command that fans out)."""
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel workers (default: the machine's cores; 1: in-process, no Ray); each "
                             "loads the model once and uses one torch thread")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="attach to a running Ray cluster (e.g. HEAD_IP:6379 from `ray start --head`) "
                             "instead of starting a local one")


def runner_config(args: argparse.Namespace, progress: bool = True) -> RunnerConfig:
    """A `RunnerConfig` from the two flags; a bad value raises ValueError naming the flag."""
    workers, address = getattr(args, "workers", None), getattr(args, "ray_address", None)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    if address is not None and not address.strip():
        raise ValueError("--ray-address: empty")
    return RunnerConfig(workers=workers, ray_address=address, progress=progress)


class Runner:
    """Maps items through ``fn(state, item, tick)`` on the configured workers; see the module doc.

    Usage::

        with Runner(load_model, (path,), RunnerConfig(workers=4), total=n, desc="eval") as runner:
            results = runner.map(run_one, items)  # ordered like items
    """

    def __init__(self, setup: Callable, setup_args: Sequence = (), config: RunnerConfig | None = None, *,
                 total: int | None = None, desc: str = "", unit: str = "episode", local_state: Any = None):
        self.config = config or RunnerConfig()
        self.setup, self.setup_args = setup, tuple(setup_args)
        self.total, self.desc, self.unit = total, desc, unit
        self._local_state = local_state
        self._bar = None
        self.done_units = 0
        self._launch = None
        self._actors: list = []
        self.replaced = 0  # actors replaced after Ray gave up restarting them
        self.item_pids: list[int] = []  # per result of the last map: the worker process that made it
        self.nodes_used: set[str] = set()  # the nodes whose processes ran items (this one: "local")
        self.busy_s: dict[int, float] = {}  # per worker process: seconds spent in fn
        self._results: list = []
        self._lock = threading.RLock()  # results and the bar: this thread and the feeder's
        self.workers = 1
        self.driver_works = False  # this process is one of the workers for the whole run (else it runs
        # items only until a worker first answers)
        self._t0 = time.monotonic()
        self.startup_s: float | None = None  # from here to the first result of an actor (Ray only)
        if self.config.uses_ray:
            self._start_ray()

    # ---- lifecycle ------------------------------------------------------------------------
    def _start_ray(self) -> None:
        from kv_vla_ros.parallel.ray_launch import RayLaunch

        cfg = self.config
        ray = sys.modules.get("ray")
        own = not cfg.ray_address and not (ray is not None and ray.is_initialized())
        actors = cfg.workers or (default_workers() if not cfg.ray_address else None)
        if own and self._local_state is not None and actors > 1:
            self.driver_works, actors = True, actors - 1
        self.workers = (actors or 1) + self.driver_works  # with a cluster's CPUs: known once Ray is up
        self._launch = RayLaunch(cfg, self.setup, self.setup_args, actors, own, local_cpus=actors or 1)

    @property
    def timings(self) -> dict:
        """Seconds from the runner's start: ``ray_init_s``, ``actors_ready_s`` (per actor: model
        loaded), ``startup_s`` (first actor result); ``shutdown_s`` (after `close`); ``busy_s``:
        per worker process (pid), the seconds it spent running items."""
        out = dict(self._launch.timings) if self._launch else {}
        return {**out, "startup_s": self.startup_s, "busy_s": {str(k): round(v, 3) for k, v in self.busy_s.items()}}

    def _ray_up(self, timeout: float | None = 0) -> bool:
        """Whether the actors exist (taking them over from the launch the first time)."""
        if self._launch is None or not self._launch.ready(timeout):
            return False
        if not self._actors and self._launch.actors:
            self._actors = self._launch.actors
            self.workers = len(self._actors) + self.driver_works
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._launch is not None:
            self._launch.shutdown()
            self._actors = []

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def worker_locations(self) -> list[tuple[int, str]]:
        """``[(pid, node id)]`` of the workers, once each has built its state (in-process: this
        process, node ``local``); this process first when it is one of the workers."""
        if self._launch is None:
            return [(os.getpid(), "local")]
        self._ray_up(None)
        ray = self._launch.ray
        here = [(os.getpid(), ray.get_runtime_context().get_node_id())] if self.driver_works else []
        return here + ray.get([a.where.remote() for a in self._actors])

    # ---- progress -------------------------------------------------------------------------
    def _ensure_bar(self, units: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total if self.total is not None else 0, desc=self.desc, unit=self.unit,
                             disable=not self.config.progress, dynamic_ncols=True)
        if self.total is None or self._bar.total < self.done_units + units:
            self._bar.total = self.done_units + units if self.total is None else max(self._bar.total,
                                                                                       self.done_units + units)
            self._bar.refresh()

    def skip(self, units: int) -> None:
        """Count ``units`` that need no work (e.g. a grid cell that failed to configure) as done."""
        self._ensure_bar(units)
        self.done_units += units
        self._show()

    def _show(self, partial: int = 0) -> None:
        value = self.done_units + partial
        if value != self._bar.n:
            self._bar.update(value - self._bar.n)

    # ---- map ------------------------------------------------------------------------------
    def map(self, fn: WorkFn, items: Sequence, units: Sequence[int] | None = None,
            on_result: Callable[[int, Any], None] | None = None) -> list:
        """``[fn(state, item, tick) for item in items]``, in item order. ``units[i]``: progress
        units of item ``i`` (default 1); ``on_result(i, result)`` runs in this process as each
        result arrives (on the feeder's thread for an actor's result; never two at once). An exception raised by ``fn`` is raised here (no retry: it is a bug or a
        bad input, not a lost worker)."""
        items = list(items)
        units = [1] * len(items) if units is None else [int(u) for u in units]
        if len(units) != len(items):
            raise ValueError(f"units: {len(units)} values for {len(items)} items")
        self._ensure_bar(sum(units))
        self.item_pids = [0] * len(items)
        if self._launch is None:
            return self._map_local(fn, items, units, on_result)
        return self._map_ray(fn, items, units, on_result)

    def _record(self, i: int, value, units: int, pid: int, node: str, took: float, on_result) -> None:
        """Item ``i``'s result, from this thread or the feeder's (one at a time)."""
        with self._lock:
            self._results[i] = value
            self.item_pids[i] = pid
            self.busy_s[pid] = self.busy_s.get(pid, 0.0) + took
            self.nodes_used.add(node)
            self.done_units += units
            if pid != os.getpid() and self.startup_s is None:
                self.startup_s = time.monotonic() - self._t0
            self._show()
            if on_result:
                on_result(i, value)

    def _show_partial(self, partial: int) -> None:
        with self._lock:
            self._show(partial)

    def _run_here(self, fn, i: int, item, units: list[int], on_result) -> None:
        """Run item ``i`` in this process on the local state (the in-process path, and this process
        as a worker on Ray)."""
        partial = [0]

        def tick(n: int = 1) -> None:
            partial[0] += n
            self._show_partial(min(partial[0], units[i]))

        t0 = time.perf_counter()
        value = fn(self._local_state, item, tick)
        self._record(i, value, units[i], os.getpid(), "local", time.perf_counter() - t0, on_result)

    def _map_local(self, fn, items, units, on_result) -> list:
        if self._local_state is None:
            self._local_state = self.setup(*self.setup_args)
        self._results = [None] * len(items)
        for i, item in enumerate(items):
            self._run_here(fn, i, item, units, on_result)
        return self._results

    def _map_ray(self, fn, items, units, on_result) -> list:
        """A `Feeder` thread keeps the actors busy; this thread runs items from the back of the
        same queue (the whole run when it is one of the workers, else until an actor answers)."""
        import torch

        from kv_vla_ros.parallel.feeder import POLL_S, Feeder

        self._results = [None] * len(items)
        queue = deque(range(len(items)))
        feeder = Feeder(self, fn, items, units, queue, on_result).start()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # like a worker
        try:
            while feeder.error is None:
                if self._local_state is not None and (self.driver_works or self.startup_s is None):
                    try:
                        i = queue.pop()  # from the back: the actors take from the front
                    except IndexError:
                        i = None
                    if i is not None:
                        self._run_here(fn, i, items[i], units, on_result)
                        continue
                if feeder.done.wait(POLL_S):
                    break
        except BaseException:
            feeder.stop()
            raise
        finally:
            torch.set_num_threads(threads)
        if feeder.error is not None:
            raise feeder.error
        if "local" in self.nodes_used and self._ray_up():  # this process's node, by its Ray id
            self.nodes_used.discard("local")
            self.nodes_used.add(self._launch.ray.get_runtime_context().get_node_id())
        return self._results

    def _replace(self, slot: int) -> None:
        """Swap a dead actor for a new one (a bounded number of times over the run)."""
        if self.replaced >= self.config.retries * max(1, len(self._actors)):
            raise RuntimeError(f"workers died {self.replaced + 1} times beyond Ray's restarts; giving up")
        self.replaced += 1
        try:
            self._launch.ray.kill(self._actors[slot])
        except Exception:  # already gone: nothing to release
            pass
        self._actors[slot] = self._launch.new_actor()


__all__ = ["Runner", "RunnerConfig", "add_runner_arguments", "runner_config", "default_workers"]
