"""Motion quality of the commanded actions of an episode: the step (first difference) and the jerk
(third difference) of consecutive commands, at action-chunk seams against inside chunks.

A difference window is *at a seam* when the commands it spans come from more than one chunk (a held
command belongs to the chunk it came from). Measured on the motion dimensions: every action
dimension except a gripper (named ``grip...``), whose open/close switches are jumps by design; the
Euclidean norm over them, in action units per control step (divide the jerk by the period cubed
for units per s^3).
"""

from __future__ import annotations

import numpy as np

KEYS = ("seam_step", "inner_step", "seam_jerk", "inner_jerk")


def motion_dims(action_names, dim: int) -> list[int]:
    """The dimensions measured: all but those named like a gripper (all when unnamed)."""
    names = list(action_names or [])
    dims = [i for i, name in enumerate(names[:dim]) if "grip" not in str(name).lower()]
    return dims if names and dims else list(range(dim))


def motion_record(commands: np.ndarray, sources, action_names=None) -> dict[str, list[float]]:
    """``commands (T, d)`` executed in order, ``sources (T,)`` the chunk id of each -> the steps and
    jerks at seams and inside chunks (lists of floats, pooled over episodes by `motion_summary`)."""
    x = np.asarray(commands, dtype=np.float64)
    x = x[:, motion_dims(action_names, x.shape[1])]
    src = np.asarray(sources)
    out = {key: [] for key in KEYS}
    if len(x) >= 2:
        step = np.linalg.norm(np.diff(x, axis=0), axis=1)
        seam = src[1:] != src[:-1]
        out["seam_step"], out["inner_step"] = step[seam].tolist(), step[~seam].tolist()
    if len(x) >= 4:
        jerk = np.linalg.norm(x[3:] - 3 * x[2:-1] + 3 * x[1:-2] - x[:-3], axis=1)
        seam = np.array([len(set(src[i:i + 4].tolist())) > 1 for i in range(len(x) - 3)])
        out["seam_jerk"], out["inner_jerk"] = jerk[seam].tolist(), jerk[~seam].tolist()
    return out


def motion_summary(records: list[dict]) -> dict[str, float]:
    """p50/p99 of each of `KEYS` over the episodes' ``motion`` records (NaN when none)."""
    out = {}
    for key in KEYS:
        values = [v for r in records for v in r.get("motion", {}).get(key, [])]
        for q in (50, 99):
            out[f"{key}_p{q}"] = float(np.percentile(values, q)) if values else float("nan")
    return out


__all__ = ["motion_record", "motion_summary", "motion_dims", "KEYS"]
