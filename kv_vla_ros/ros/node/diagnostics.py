"""What the policy node reports on /diagnostics, as plain key/value strings (no rclpy)."""

from __future__ import annotations

import json
import math

# diagnostic_msgs/DiagnosticStatus levels (bytes in the message; ints here)
OK, WARN, ERROR = 0, 1, 2

_LEVELS = {"running": OK, "disabled": OK, "waiting": WARN, "stale": WARN, "error": ERROR}


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def policy_status(state: str, reason: str, worker, control_rate_hz: float, tick_interval_ms, ticks: int,
                  cache_config, extra: dict | None = None) -> tuple[int, str, list[tuple[str, str]]]:
    """-> (level, message, [(key, value)]) for the node's DiagnosticStatus.

    ``worker``: the InferenceWorker (counters, latency, last session stats);
    ``tick_interval_ms``: RollingStats of the intervals between published commands.
    ``cache_config``: the running cache's config, used until the worker's stats snapshot carries
    the config its figures were taken under (so that tokens held and budget always match).
    """
    stats = dict(worker.last_stats or {})
    cache_config = stats.pop("cache_config", None) or cache_config
    seen, held = int(stats.get("tokens_seen", 0)), int(stats.get("tokens_held", 0))
    achieved = 1e3 / tick_interval_ms.mean() if len(tick_interval_ms) else float("nan")
    values = {
        "state": state,
        "reason": reason,
        "instruction": worker.episode_instruction or "",
        "episodes": worker.episodes,
        "steps": stats.get("steps", 0),
        "latency_p50_ms": worker.latency_ms.percentile(50),
        "latency_p99_ms": worker.latency_ms.percentile(99),
        "tokens_seen": seen,
        "tokens_held": held,
        "kv_bytes": int(stats.get("bytes_held", 0)),
        "keep_ratio": held / seen if seen else 1.0,
        "frames_received": worker.frames_submitted,
        "frames_dropped": worker.frames_dropped,
        "frames_rejected": worker.frames_rejected,
        "frames_without_episode": worker.frames_without_episode,
        "inferences": worker.inferences,
        "inference_errors": worker.inference_errors,
        "control_rate_hz": float(control_rate_hz),
        "control_rate_achieved_hz": achieved,
        "publish_interval_p50_ms": tick_interval_ms.percentile(50),
        "publish_interval_p99_ms": tick_interval_ms.percentile(99),
        "control_ticks": ticks,
        "cache_config": json.dumps(cache_config.to_dict(), sort_keys=True),
        # what the eviction decided last: the scores of the chunks that last left the recent
        # window ({chunk id: score}; the trained gate's, under `gated`) and the old chunks held
        "gate_scores": json.dumps({str(k): round(float(v), 4) for k, v in (stats.get("gate_scores") or {}).items()}),
        "kept_chunks": json.dumps([int(c) for c in stats.get("kept_chunks") or []]),
    }
    values.update(extra or {})
    level = _LEVELS.get(state, WARN)
    message = state if not reason else f"{state}: {reason}"
    return level, message, [(k, _fmt(v)) for k, v in values.items()]


class GcWatch:
    """Python's garbage collector pauses (``gc.callbacks``): every thread, the control timer's included,
    waits while a collection runs. Reports the collections and the longest pause since the last report."""

    def __init__(self):
        import gc
        import time

        self._gc, self._clock = gc, time.perf_counter
        self._start = 0.0
        self.collections = [0, 0, 0]
        self.max_pause_ms = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = self._clock()
        else:
            self.collections[info["generation"]] += 1
            self.max_pause_ms = max(self.max_pause_ms, (self._clock() - self._start) * 1e3)

    def values(self) -> dict:
        """Diagnostics keys; the longest pause restarts from 0 after each report."""
        values = {"gc_collections": json.dumps(self.collections), "gc_pause_max_ms": self.max_pause_ms}
        self.max_pause_ms = 0.0
        return values

    def close(self) -> None:
        if self._on_gc in self._gc.callbacks:
            self._gc.callbacks.remove(self._on_gc)


def input_values(loop, now: float, states_received: int, states_rejected: int) -> dict:
    """Diagnostics of the node's inputs and action queue: each input's age (JSON, seconds, null:
    never received), the stale or missing ones, the robot state counters, the queue."""
    ages = loop.input_ages(now)
    return {"input_ages_s": json.dumps({k: (None if v is None else round(v, 3)) for k, v in ages.items()}),
            "stale_inputs": ",".join(k for k, v in ages.items() if v is None or v > loop.stale_timeout_s),
            "states_received": states_received, "states_rejected": states_rejected,
            "actions_per_inference": loop.queue.actions_per_inference, "queued_actions": len(loop.queue),
            "chunks_queued": loop.queue.chunks}


__all__ = ["policy_status", "input_values", "GcWatch", "OK", "WARN", "ERROR"]
