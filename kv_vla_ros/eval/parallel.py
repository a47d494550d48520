"""Work items -> results on one core, every core, or a Ray cluster, with the same results.

``Runner(setup, setup_args, config).map(fn, items)`` returns ``[fn(state, item, tick) for item in
items]``, where ``state = setup(*setup_args)`` is built once per worker (e.g. the model loaded from
its checkpoint directory) and ``tick(n)`` reports ``n`` units of progress (episodes, frames):

- ``workers == 1`` and no ``ray_address``: in-process, sequential, no Ray (``local_state`` can
  hand in a state the caller already built, e.g. the model it loaded anyway);
- otherwise one Ray actor per worker (one CPU, one torch thread each): the state is built once
  per actor, not once per item. A local runtime is started for the run (``address="local"``,
  never someone else's cluster by accident), or ``ray_address`` attaches to an existing one.

Why actors and not a pool of our own: Ray restarts a worker process that dies (``max_restarts``)
and re-runs the calls it had not finished (``max_task_retries``); a result is only ever taken
from a call that returned, so every item is reported exactly once. An actor that cannot be
restarted any more is replaced, its items handed out again. Until the first worker answers
(starting Ray and importing torch take seconds), the calling process runs items itself on
``local_state`` when it has one. Results come back in item order,
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
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

Tick = Callable[[int], None]
WorkFn = Callable[[Any, Any, Tick], Any]

IN_FLIGHT_PER_WORKER = 2  # one running, one queued: a worker never waits for the driver's next call
POLL_S = 0.5  # how often the bar asks busy workers for their partial progress
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds 127.0.0.1, not the host's address


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


_WORKER_CLASS = None


def _worker_class():
    """The Ray actor class, made on first use so that importing this module never imports Ray."""
    global _WORKER_CLASS
    if _WORKER_CLASS is None:
        import ray

        @ray.remote(concurrency_groups={"control": 1})
        class Worker:
            """Builds the state once; runs items one at a time; answers progress while busy."""

            def __init__(self, setup: Callable, setup_args: tuple) -> None:
                import torch

                torch.set_num_threads(1)  # one core per worker: more threads only contend
                self.state = setup(*setup_args)
                self.ticks = (None, 0)  # (item index, units done) of the running item

            def run(self, fn: WorkFn, index: int, item):
                self.ticks = (index, 0)

                def tick(n: int = 1) -> None:
                    self.ticks = (index, self.ticks[1] + n)

                return os.getpid(), fn(self.state, item, tick)

            @ray.method(concurrency_group="control")
            def progress(self):
                return self.ticks

            @ray.method(concurrency_group="control")
            def where(self) -> tuple[int, str]:
                return os.getpid(), ray.get_runtime_context().get_node_id()

        _WORKER_CLASS = Worker
    return _WORKER_CLASS


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
        self._ray = None
        self._owns_ray = False
        self._actors: list = []
        self.replaced = 0  # actors replaced after Ray gave up restarting them
        self.item_pids: list[int] = []  # per result of the last map: the worker process that made it
        self.workers = 1
        self._helping = True  # until a worker first answers, this process runs items too
        self._t0 = time.monotonic()
        self.startup_s: float | None = None  # from here to the first result of a worker (Ray only)
        if self.config.uses_ray:
            self._start_ray()

    # ---- lifecycle ------------------------------------------------------------------------
    def _start_ray(self) -> None:
        cfg = self.config
        if not cfg.ray_address and "ray" not in sys.modules:
            # A private runtime talks to itself only: keep every Ray process on the loopback
            # address (Ray reads this at import, and its processes inherit it).
            os.environ.setdefault(LOOPBACK_ONLY, "0")
        import ray

        if ray.is_initialized():
            pass  # the caller's runtime (e.g. a test cluster): use it, leave it running
        elif cfg.ray_address:
            ray.init(address=cfg.ray_address, log_to_driver=cfg.log_to_driver)
            self._owns_ray = True
        else:
            ray.init(address="local", num_cpus=cfg.workers or default_workers(), include_dashboard=False,
                     object_store_memory=cfg.object_store_mb * 1024 * 1024, log_to_driver=cfg.log_to_driver)
            self._owns_ray = True
        self._ray = ray
        self.workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._actors = [self._new_actor() for _ in range(self.workers)]

    def _new_actor(self):
        return _worker_class().options(num_cpus=1, max_restarts=self.config.retries,
                                       max_task_retries=self.config.retries).remote(self.setup, self.setup_args)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._ray is not None:
            for actor in self._actors:
                self._ray.kill(actor)
            self._actors = []
            if self._owns_ray:
                self._ray.shutdown()
            self._ray = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def worker_locations(self) -> list[tuple[int, str]]:
        """``[(pid, node id)]`` of the workers, once each has built its state (in-process: this
        process, node ``local``)."""
        if self._ray is None:
            return [(os.getpid(), "local")]
        return self._ray.get([a.where.remote() for a in self._actors])

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
        result arrives. An exception raised by ``fn`` is raised here (no retry: it is a bug or a
        bad input, not a lost worker)."""
        items = list(items)
        units = [1] * len(items) if units is None else [int(u) for u in units]
        if len(units) != len(items):
            raise ValueError(f"units: {len(units)} values for {len(items)} items")
        self._ensure_bar(sum(units))
        self.item_pids = [0] * len(items)
        if self._ray is None:
            return self._map_local(fn, items, units, on_result)
        return self._map_ray(fn, items, units, on_result)

    def _run_here(self, fn, i: int, item, units: list[int], results: list, on_result) -> None:
        """Run item ``i`` in this process on the local state (the in-process path, and the driver
        helping while the Ray workers start)."""
        partial = [0]

        def tick(n: int = 1) -> None:
            partial[0] += n
            self._show(min(partial[0], units[i]))

        results[i] = fn(self._local_state, item, tick)
        self.item_pids[i] = os.getpid()
        self.done_units += units[i]
        self._show()
        if on_result:
            on_result(i, results[i])

    def _map_local(self, fn, items, units, on_result) -> list:
        if self._local_state is None:
            self._local_state = self.setup(*self.setup_args)
        results: list = [None] * len(items)
        for i, item in enumerate(items):
            self._run_here(fn, i, item, units, results, on_result)
        return results

    def _help(self, fn, items, units, results, on_result, queue: deque, inflight: dict) -> bool:
        """While no worker has answered yet (Ray and the workers' imports take seconds), run the
        last queued item here, on the state this process already has, with one torch thread like
        a worker. Returns False once the workers are up (then this process only schedules)."""
        import torch

        if self._local_state is None or not self._helping or not queue:
            return False
        if inflight and self._ray.wait(list(inflight), num_returns=1, timeout=0)[0]:
            self._helping = False
            return False
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            i = queue.pop()  # from the back: the workers take from the front
            self._run_here(fn, i, items[i], units, results, on_result)
        finally:
            torch.set_num_threads(threads)
        return True

    def _map_ray(self, fn, items, units, on_result) -> list:
        ray = self._ray
        results: list = [None] * len(items)
        queue = deque(range(len(items)))
        attempts = [0] * len(items)
        inflight: dict = {}  # ObjectRef -> (actor slot, item index)
        load = [0] * len(self._actors)
        partial: dict[int, int] = {}
        poll_ticks = any(u > 1 for u in units)
        last_poll = 0.0

        def submit() -> None:
            for slot, actor in enumerate(self._actors):
                while queue and load[slot] < IN_FLIGHT_PER_WORKER:
                    i = queue.popleft()
                    attempts[i] += 1
                    inflight[actor.run.remote(fn, i, items[i])] = (slot, i)
                    load[slot] += 1

        submit()
        while inflight or queue:
            if self._help(fn, items, units, results, on_result, queue, inflight):
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                slot, i = inflight.pop(ref)
                load[slot] -= 1
                partial.pop(i, None)
                try:
                    pid, value = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # restarts used up (or its node is gone)
                    if attempts[i] > self.config.retries:
                        raise RuntimeError(f"item {i}: its worker died {attempts[i]} times; giving up ({exc})") \
                            from None
                    self._replace(slot)
                    queue.appendleft(i)
                    continue
                except ray.exceptions.RayTaskError as exc:  # fn raised: raise the same error here
                    cause = getattr(exc, "cause", None)
                    raise (cause if isinstance(cause, Exception) else exc) from exc
                if self.startup_s is None:
                    self.startup_s = time.monotonic() - self._t0
                results[i] = value
                self.item_pids[i] = pid
                self.done_units += units[i]
                if on_result:
                    on_result(i, value)
            submit()
            if poll_ticks and time.monotonic() - last_poll > POLL_S:
                last_poll = time.monotonic()
                partial.update(self._poll(inflight, units))
            self._show(sum(partial.values()))
        return results

    def _replace(self, slot: int) -> None:
        """Swap a dead actor for a new one (a bounded number of times over the run)."""
        if self.replaced >= self.config.retries * max(1, len(self._actors)):
            raise RuntimeError(f"workers died {self.replaced + 1} times beyond Ray's restarts; giving up")
        self.replaced += 1
        try:
            self._ray.kill(self._actors[slot])
        except Exception:  # already gone: nothing to release
            pass
        self._actors[slot] = self._new_actor()

    def _poll(self, inflight: dict, units: list[int]) -> dict[int, int]:
        """Partial units of the items being run now, from the workers' ``progress`` calls."""
        busy = {slot for slot, _ in inflight.values()}
        refs = [self._actors[s].progress.remote() for s in busy]
        out = {}
        try:
            for index, done in self._ray.get(refs, timeout=POLL_S):
                if index is not None and any(i == index for _, i in inflight.values()):
                    out[index] = min(done, units[index])
        except Exception:  # a worker dying or restarting: its partial count is simply not shown
            pass
        return out


__all__ = ["Runner", "RunnerConfig", "add_runner_arguments", "runner_config", "default_workers"]
