"""The actor side of one `Runner.map` on Ray: a thread of the calling process that keeps every
actor fed from the shared queue and takes their results as they come.

On its own thread, an actor's next item goes out within milliseconds of its last result, also
while the calling thread is in the middle of an episode of its own (Ray's waits release the GIL).
So each actor needs only one item queued behind the running one, and at the end of a run no
worker waits long for another's queued items. The queue is a deque shared with the calling
thread: actors take from the front (``popleft``), the calling thread from the back (``pop``);
both are atomic, so every item goes to exactly one process (again only if its process died).
"""

from __future__ import annotations

import threading
import time
from collections import deque

IN_FLIGHT_PER_ACTOR = 2  # one running, one queued: the actor never waits for this process
POLL_S = 0.5  # how often the bar asks busy actors for their partial progress


class Feeder:
    """Feeds ``runner``'s actors items of ``queue`` (``fn(state, items[i], tick)``) until the queue
    is empty and nothing is in flight, or `stop`. Results go to ``runner._record``; an error that
    ends the run is kept in ``error`` for the calling thread to raise."""

    def __init__(self, runner, fn, items: list, units: list[int], queue: deque, on_result):
        self.runner, self.fn, self.items, self.units, self.queue = runner, fn, items, units, queue
        self.on_result = on_result
        self.attempts = [0] * len(items)
        self.inflight: dict = {}  # ObjectRef -> (actor slot, item index)
        self.load: list[int] = []  # items in flight per actor slot
        self.partial: dict[int, int] = {}  # item index -> units done so far, from the progress polls
        self.polls: dict = {}  # progress ObjectRef -> actor slot
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kv-vla-feeder", daemon=True)

    def start(self) -> "Feeder":
        self._thread.start()
        return self

    def stop(self) -> None:
        """End feeding (the calling thread failed); results still in flight are dropped."""
        self._stop = True
        self._thread.join()

    def _run(self) -> None:
        runner, poll_ticks, last_poll = self.runner, any(u > 1 for u in self.units), 0.0
        try:
            while not self._stop and (self.queue or self.inflight):
                if not runner._ray_up(POLL_S):
                    continue
                self.load.extend([0] * (len(runner._actors) - len(self.load)))
                self._submit()
                if self.inflight:
                    self._collect()
                if poll_ticks and self.inflight:
                    if time.monotonic() - last_poll > POLL_S:
                        last_poll = time.monotonic()
                        busy = {slot for slot, _ in self.inflight.values()} - set(self.polls.values())
                        self.polls.update({runner._actors[slot].progress.remote(): slot for slot in busy})
                    self.partial.update(self._poll())
                    runner._show_partial(sum(self.partial.values()))
        except BaseException as exc:  # raised by the calling thread
            self.error = exc
        finally:
            self.done.set()

    def _submit(self) -> None:
        actors = self.runner._actors
        for slot, actor in enumerate(actors):
            # near the end, none queued: no process then waits on another's queued items
            while self.load[slot] < (IN_FLIGHT_PER_ACTOR if len(self.queue) > 2 * len(actors) else 1):
                try:
                    i = self.queue.popleft()
                except IndexError:
                    return
                self.attempts[i] += 1
                self.inflight[actor.run.remote(self.fn, i, self.items[i])] = (slot, i)
                self.load[slot] += 1

    def _collect(self) -> None:
        """Take the actors' finished items (waiting up to POLL_S for one); requeue the items of an
        actor that is gone for good, on a replacement."""
        runner = self.runner
        ray = runner._launch.ray
        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=POLL_S)
        for ref in ready:
            slot, i = self.inflight.pop(ref)
            self.load[slot] -= 1
            self.partial.pop(i, None)
            try:
                pid, node, took, value = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # restarts used up (or its node is gone)
                if self.attempts[i] > runner.config.retries:
                    raise RuntimeError(f"item {i}: its worker died {self.attempts[i]} times; giving up ({exc})") \
                        from None
                runner._replace(slot)
                self.queue.appendleft(i)
                continue
            except ray.exceptions.RayTaskError as exc:  # fn raised: raise the same error there
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, Exception) else exc) from exc
            runner._record(i, value, self.units[i], pid, node, took, self.on_result)

    def _poll(self) -> dict[int, int]:
        """Partial units of the items being run now, from the answered ``progress`` calls (never
        waiting: an actor still loading its model answers later)."""
        ray = self.runner._launch.ray
        done, _ = ray.wait(list(self.polls), num_returns=len(self.polls), timeout=0) if self.polls else ([], [])
        running = {i for _, i in self.inflight.values()}
        out = {}
        for ref in done:
            self.polls.pop(ref)
            try:
                index, units_done = ray.get(ref)
            except Exception:  # a worker dying or restarting: its partial count is simply not shown
                continue
            if index in running:
                out[index] = min(units_done, self.units[index])
        return out


__all__ = ["Feeder", "IN_FLIGHT_PER_ACTOR", "POLL_S"]
