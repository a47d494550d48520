"""Inference delay in the closed loop, in simulated time: what kv_vla_node does while its model
thinks, made deterministic so a sweep over delays is reproducible (and runs on Ray like any eval).

Each control step: if no inference is in flight and at most ``start_count`` actions are queued
(the node's ``action_chunk_threshold``), an inference starts from this step's observation; it
delivers ``delay_steps`` steps later, before that step's action is taken. Meanwhile the queue
executes what it holds, or holds the last command when it runs dry (a *stale tick*, counted). The
chunk is merged into the queue exactly as the node's control loop merges it (`ActionQueue.merged`:
the rows overtaken by the actions popped since the start skipped, the overlap merged by the rule).
With ``rtc`` the inference is sampled guided toward the actions queued when it started
(`rtc_guide`, the delay known exactly here). The first chunk of an episode is awaited: the robot
starts when first commanded. Delay 0 with threshold 0 is the synchronous loop (the world waits).
"""

from __future__ import annotations

import numpy as np

from kv_vla_ros.vla.action_queue import MERGE_RULES, ActionQueue, rtc_guide


class DelayedChunks:
    """The action schedule of one episode under an inference delay.

    Args:
        session: a ``VLASession`` (``step_action_chunk``; ``rtc``: a flow policy that takes ``guide``).
        actions_per_inference: the node's ``actions_per_inference``.
        delay_steps: control steps from an inference's observation to its chunk.
        merge_rule: ``replace``, ``blend`` or ``rtc`` (the node's ``action_chunk_merge``).
        threshold: the node's ``action_chunk_threshold``; None (auto): start with at most
            ``delay_steps`` actions queued (at most ``actions_per_inference - 1``), so the chunk
            arrives as the last queued action is used (RTC's schedule: its first ``delay_steps``
            rows are those executed meanwhile, frozen by rtc's guide; the rest of the old plan,
            the chunk's tail, is its soft-masked part).
    """

    def __init__(self, session, actions_per_inference: int, delay_steps: int = 0, merge_rule: str = "replace",
                 threshold: float | None = 0.0):
        if isinstance(delay_steps, bool) or not isinstance(delay_steps, (int, np.integer)) or delay_steps < 0:
            raise ValueError(f"inference_delay_steps: must be an int >= 0, got {delay_steps!r}")
        if merge_rule not in MERGE_RULES:
            raise ValueError(f"action_chunk_merge: expected one of {', '.join(MERGE_RULES)}, got {merge_rule!r}")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"action_chunk_threshold: must be in [0, 1], got {threshold}")
        if merge_rule == "rtc" and not getattr(session.policy, "supports_guide", False):
            raise ValueError(f"action_chunk_merge: rtc needs a flow policy (π0); this "
                             f"{session.policy.model_type} checkpoint samples no chunk to guide")
        self.session, self.delay, self.rule = session, int(delay_steps), merge_rule
        self.queue = ActionQueue(actions_per_inference)
        n = self.queue.actions_per_inference
        self.start_count = min(self.delay, n - 1) if threshold is None else int(float(threshold) * n)
        self._pending: tuple[np.ndarray, int, int] | None = None  # (chunk, queue.popped at start, due step)
        self._held, self._held_source, self._source = None, -1, -1
        self.stale_ticks = 0  # steps that held the last command (the queue ran dry while the model thought)
        self.inferences = 0

    def maybe_infer(self, step: int, images, state=None) -> bool:
        """Start an inference on this step's observation when the schedule wants one (True)."""
        if self._pending is not None or len(self.queue) > self.start_count:
            return False
        kwargs = {}
        if self.rule == "rtc":
            guide = rtc_guide(self.queue.plan(), self.delay)
            kwargs = {"guide": guide} if guide is not None else {}
        chunk = np.asarray(self.session.step_action_chunk(images, state, **kwargs))
        chunk = chunk.reshape(1, -1) if chunk.ndim <= 1 else chunk.reshape(chunk.shape[0], -1)
        first = self._held is None and len(self.queue) == 0  # the episode's first chunk: awaited
        self._pending = (chunk, self.queue.popped, step if first else step + self.delay)
        self.inferences += 1
        return True

    def action(self, step: int) -> tuple[np.ndarray, int]:
        """This step's action and the id of the chunk it comes from (a held one: its own chunk's)."""
        if self._pending is not None and self._pending[2] <= step:
            chunk, started, _ = self._pending
            rows, _, tail = self.queue.merged(chunk, started, self.rule)
            self.queue.replace(rows, tail=tail)
            self._pending, self._source = None, self._source + 1
        action = self.queue.pop()
        if action is None:
            if self._held is None:
                raise RuntimeError("no action to execute: the episode's first chunk was not awaited")
            self.stale_ticks += 1
            return self._held, self._held_source
        self._held, self._held_source = action, self._source
        return action, self._source


__all__ = ["DelayedChunks"]
