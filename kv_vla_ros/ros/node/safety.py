"""Whole-chunk safety (no rclpy): every action chunk is checked, as the sequence of commands the
robot would receive (the commands last sent, then the chunk's queued actions), before any of it is
queued. A chunk that breaks a rule is rejected whole: none of its actions is ever published.

Rules, in the order they are checked (the first broken one is reported and counted):
- ``dimension``: ``(n, action_dim)`` with n >= 1;
- ``non_finite``: NaN or inf anywhere;
- ``action_id`` (discrete actions): every value an action id in ``[0, num_actions)``;
- ``bounds`` (continuous, with ``reject_out_of_bounds``): every value within ``[action_min, action_max]``
  (otherwise the values are clamped to them, today's rule);
- ``max_step``: ``|a[k+1] - a[k]| <= max_step`` per dimension, the seam with the command last sent
  included;
- ``max_jerk``: ``|a[k+3] - 3 a[k+2] + 3 a[k+1] - a[k]| / dt^3 <= max_jerk`` per dimension (``dt``:
  the control period), the three commands last sent included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("dimension", "non_finite", "action_id", "bounds", "max_step", "max_jerk")


@dataclass
class SafetyLimits:
    """The limits a continuous chunk is checked against; arrays of ``(action_dim,)``, inf = off."""

    action_min: np.ndarray
    action_max: np.ndarray
    max_step: np.ndarray
    max_jerk: np.ndarray
    reject_out_of_bounds: bool = False


@dataclass(frozen=True)
class Rejection:
    rule: str  # one of RULES
    reason: str


def check_chunk(chunk: np.ndarray, action_dim: int, discrete: bool, num_actions: int) -> Rejection | None:
    """The rules that need no history: dimension, finiteness, action ids. ``chunk``: (n, d) float64."""
    if chunk.ndim != 2 or chunk.shape[0] == 0 or chunk.shape[1] != action_dim:
        got = chunk.shape[1] if chunk.ndim == 2 else chunk.shape
        return Rejection("dimension", f"action: expected {action_dim} values per action, got {got}")
    if not np.all(np.isfinite(chunk)):
        bad = int(np.argwhere(~np.isfinite(chunk))[0, 0])
        return Rejection("non_finite", f"action: non-finite value in action {bad} of the chunk: {chunk[bad].tolist()}")
    if discrete:
        ids = chunk[:, 0]
        if np.any(ids != np.round(ids)) or np.any(ids < 0) or np.any(ids >= num_actions):
            return Rejection("action_id", f"action: {ids.tolist()} are not all action ids in [0, {num_actions})")
    return None


def check_sequence(actions: np.ndarray, sent: np.ndarray, limits: SafetyLimits, period_s: float) -> Rejection | None:
    """The rules on the commands as sent: ``actions`` (n, d) the queued actions (after clamping
    unless bounds reject), ``sent`` (k, d) the k <= 3 commands last sent, oldest first."""
    if limits.reject_out_of_bounds:
        low, high = actions < limits.action_min, actions > limits.action_max
        if np.any(low | high):
            row, dim = (int(v) for v in np.argwhere(low | high)[0])
            return Rejection("bounds", f"safety.reject_out_of_bounds: action {row} dimension {dim} is "
                                       f"{actions[row, dim]:.4g}, outside [{limits.action_min[dim]:.4g}, "
                                       f"{limits.action_max[dim]:.4g}]")
    sequence = np.concatenate([sent, actions]) if len(sent) else actions
    first = len(sent)  # index in `sequence` of the chunk's first action
    if np.all(np.isinf(limits.max_step)) and np.all(np.isinf(limits.max_jerk)):
        return None
    # only the steps and jerks that involve a new action count: the commands already sent are history
    steps = np.abs(np.diff(sequence, axis=0))  # steps[k]: sequence[k] -> sequence[k + 1]
    over = steps > limits.max_step
    over[: max(0, first - 1)] = False
    if np.any(over):
        k, dim = (int(v) for v in np.argwhere(over)[0])
        where = "across the seam (from the command last sent)" if k + 1 == first else f"into action {k + 1 - first}"
        return Rejection("max_step", f"safety.max_step: a step of {steps[k, dim]:.4g} in dimension {dim} {where}, "
                                     f"over {limits.max_step[dim]:.4g}")
    if len(sequence) >= 4:
        jerk = np.abs(np.diff(sequence, n=3, axis=0)) / period_s ** 3  # jerk[k]: sequence[k .. k + 3]
        over = jerk > limits.max_jerk
        over[: max(0, first - 3)] = False
        if np.any(over):
            k, dim = (int(v) for v in np.argwhere(over)[0])
            seam = " (across the seam)" if k < first else ""
            return Rejection("max_jerk", f"safety.max_jerk: {jerk[k, dim]:.4g} in dimension {dim} at action "
                                         f"{k + 3 - first}{seam}, over {limits.max_jerk[dim]:.4g}")
    return None


__all__ = ["RULES", "SafetyLimits", "Rejection", "check_chunk", "check_sequence"]
