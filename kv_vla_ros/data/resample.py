"""The one rule that resamples a recording to the control rate (numpy only; no rclpy).

A robot records at its own rates: a camera at 30 Hz, joint states at 100+ Hz, commands at the
controller's rate, each message with its own header stamp. A policy steps at the control rate.
Every reader of recordings (training, ``kv-vla bag eval``, ``kv-vla bag inspect``) turns the
streams into control *ticks* with the functions below:

- **Ticks**: ``t0 + k x period`` (integer ns, ``period = 1 / control_rate_hz``), ``t0`` the first
  frame of the first camera in the episode, up to its last frame (and half its median frame
  interval after it).
- **Cameras**: each camera's newest frame stamped at or before the tick, no older than its
  ``max_age`` (default 1.5 x the larger of the control period and the camera's median interval).
- **State**: the newest state stamped at or before the tick (never interpolated: a policy on a
  robot only ever has a measured state, and interpolation would invent one between two
  measurements), within the same kind of ``max_age``.
- **Command**: the first command received (header stamp, or bag time for messages without a
  header) after the tick and no later than one period after it: the command that answers the
  tick. A trajectory (a plan covering several ticks) that is not renewed in that window still
  answers the tick with its point that applies then (`trajectory_point`).
- A tick whose camera or state is missing or too old is **dropped and counted** by reason; a tick
  with no command keeps no recorded action (training holds the previous command; counted).
- A **gap** of more than ``gap_periods`` control periods between two frames of the first camera
  splits the episode (a recording paused, a robot reset off camera).

Stamps: the header stamp when the message has a non-zero one, else the bag's receive time. When
the first camera's header stamps are on another clock than the receive times (a second or more
apart: simulated time, a camera's own clock), the topics timed by receive time are moved onto the
camera's clock by that offset (``clock_offset_s`` in the reader's info; `kv-vla bag inspect` says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_GAP_PERIODS = 5.0
AGE_FACTOR = 1.5  # default max age: this many times max(control period, the input's median interval)


@dataclass(frozen=True)
class ResampleRule:
    """``rate_hz``: control rate; ``max_age_s`` None: per input, `AGE_FACTOR` x max(period, its
    median interval); ``gap_periods``: a first-camera gap longer than this many periods splits."""

    rate_hz: float
    max_age_s: float | None = None
    gap_periods: float = DEFAULT_GAP_PERIODS

    def __post_init__(self) -> None:
        if not (isinstance(self.rate_hz, (int, float)) and np.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"control_rate_hz: must be a finite number > 0, got {self.rate_hz!r}")
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise ValueError(f"max_age_s: must be > 0, got {self.max_age_s!r}")
        if not self.gap_periods >= 1:
            raise ValueError(f"gap_periods: must be >= 1, got {self.gap_periods!r}")

    @property
    def period_ns(self) -> int:
        return int(round(1e9 / self.rate_hz))

    def max_age_ns(self, stamps: np.ndarray) -> int:
        """The oldest an input with these (sorted) stamps may be at a tick."""
        if self.max_age_s is not None:
            return int(self.max_age_s * 1e9)
        return int(AGE_FACTOR * max(self.period_ns, median_interval_ns(stamps) or 0))


def median_interval_ns(stamps) -> int | None:
    """Median interval between consecutive (sorted) stamps; None with fewer than two."""
    stamps = np.asarray(stamps, dtype=np.int64)
    if stamps.size < 2:
        return None
    gaps = np.diff(stamps)
    gaps = gaps[gaps > 0]
    return int(np.median(gaps)) if gaps.size else None


def measured_rate_hz(stamps) -> float | None:
    """1 / the median interval (robust to pauses between episodes); None if unmeasurable."""
    gap = median_interval_ns(stamps)
    return 1e9 / gap if gap else None


def interval_jitter_ms(stamps) -> tuple[float, float] | None:
    """p50 and p99 of the intervals' absolute deviation from the median interval, in ms."""
    stamps = np.asarray(stamps, dtype=np.int64)
    if stamps.size < 3:
        return None
    gaps = np.diff(stamps).astype(np.float64)
    dev = np.abs(gaps - np.median(gaps)) / 1e6
    return float(np.percentile(dev, 50)), float(np.percentile(dev, 99))


def tick_times(first_ns: int, last_ns: int, period_ns: int) -> np.ndarray:
    """``first, first + period, ...`` up to ``last`` (int64 ns)."""
    if last_ns < first_ns:
        return np.zeros(0, dtype=np.int64)
    return first_ns + period_ns * np.arange((last_ns - first_ns) // period_ns + 1, dtype=np.int64)


def newest_at_or_before(stamps: np.ndarray, tick_ns: int, max_age_ns: int) -> tuple[int | None, str | None]:
    """Index of the newest of the sorted ``stamps`` at or before ``tick_ns``, with why not:
    ``(index, None)``, ``(None, "missing")`` (nothing yet) or ``(None, "too_old")``."""
    i = int(np.searchsorted(stamps, tick_ns, side="right")) - 1
    if i < 0:
        return None, "missing"
    if tick_ns - int(stamps[i]) > max_age_ns:
        return None, "too_old"
    return i, None


def closest_within(stamps, target_ns: int, slop_ns: int) -> int | None:
    """Index of the stamp closest to ``target_ns`` (the first on a tie) if within ``slop_ns``;
    stamps that are None or 0 (no stamp) never pair. The pairing of further cameras and the state
    with a driving frame that shares their stamp (kv_vla_node's ``camera_sync_slop_s``, and the
    lockstep bag reader, which replays what the node saw)."""
    best, gap = None, None
    for i, stamp in enumerate(stamps):
        if not stamp:
            continue
        d = abs(int(stamp) - int(target_ns))
        if gap is None or d < gap:
            best, gap = i, d
    return best if gap is not None and gap <= slop_ns else None


def answering(times: np.ndarray, tick_ns: int, period_ns: int) -> int | None:
    """Index of the first of the sorted command ``times`` in ``(tick, tick + period]``: the command
    that answers the tick; None when none came in that window."""
    i = int(np.searchsorted(times, tick_ns, side="right"))
    return i if i < len(times) and int(times[i]) <= tick_ns + period_ns else None


def trajectory_point(start_ns: int, times_from_start_ns: list[int], tick_ns: int, period_ns: int) -> int | None:
    """The point of a trajectory (started at ``start_ns``) that applies at the tick: the first
    whose time is at or after ``tick + period`` (the target to reach by the next tick), else the
    last (the held end of the plan); None for an empty trajectory (a stop)."""
    if not times_from_start_ns:
        return None
    for i, tfs in enumerate(times_from_start_ns):
        if start_ns + tfs >= tick_ns + period_ns:
            return i
    return len(times_from_start_ns) - 1


def split_at_gaps(stamps: np.ndarray, period_ns: int, gap_periods: float) -> list[tuple[int, int]]:
    """``[(first index, last index)]`` of the runs of sorted ``stamps`` with no gap longer than
    ``gap_periods`` control periods."""
    if stamps.size == 0:
        return []
    cuts = np.nonzero(np.diff(stamps) > gap_periods * period_ns)[0]
    starts = [0, *(cuts + 1).tolist()]
    ends = [*cuts.tolist(), int(stamps.size) - 1]
    return list(zip(starts, ends))


__all__ = ["AGE_FACTOR", "DEFAULT_GAP_PERIODS", "ResampleRule", "answering", "closest_within", "interval_jitter_ms",
           "measured_rate_hz", "median_interval_ns", "newest_at_or_before", "split_at_gaps", "tick_times",
           "trajectory_point"]
