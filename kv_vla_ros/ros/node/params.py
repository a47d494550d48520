"""kv_vla_node's on-set parameter callback body: validate every change first, then apply it to the
running node (`NodeRuntime`) when it is configured; an unconfigured node only stores the values
(``configure`` reads them). Raises ValueError naming the parameter to reject a change."""

from __future__ import annotations

import math

from kv_vla_ros.ros.node.control import ON_REJECT, RollingStats, broadcast_limits
from kv_vla_ros.ros.node.param_specs import cache_changes_from_params, coerce_param
from kv_vla_ros.ros.node.session_setup import cache_error, reconfigure
from kv_vla_ros.vla.action_queue import MERGE_RULES

TWIST_FIELDS = {"twist.discrete_linear": "discrete_linear", "twist.discrete_angular": "discrete_angular",
                "twist.linear_index": "linear_index", "twist.angular_index": "angular_index",
                "max_linear": "max_linear", "max_angular": "max_angular"}
CHOICES = {"safety.on_reject": ON_REJECT, "action_chunk_merge": MERGE_RULES}


def _check(values: dict, get, action_dim: int | None) -> None:
    for name, choices in CHOICES.items():
        if name in values and values[name] not in choices:
            raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {values[name]!r}")
    if action_dim is None:  # unconfigured: the dimension is the checkpoint's, checked at configure
        return
    lo, hi = get("action.min"), get("action.max")
    lo_arr, hi_arr = broadcast_limits("action.min", lo, action_dim), broadcast_limits("action.max", hi, action_dim)
    if any(math.isnan(v) for v in list(lo) + list(hi)) or any(a > b for a, b in zip(lo_arr, hi_arr)):
        raise ValueError(f"action.min: must be <= action.max (and not NaN), got {list(lo)} / {list(hi)}")
    for name in ("safety.max_step", "safety.max_jerk"):
        arr = broadcast_limits(name, get(name), action_dim)
        if any(math.isnan(v) or v <= 0 for v in arr):
            raise ValueError(f"{name}: every value must be > 0 (inf: no limit), got {list(get(name))}")


def apply_parameters(node, values: dict) -> str:
    """Validate ``values`` ({name: value}) against the node's specs and its running state, then
    apply them; returns a note for the caller (e.g. a cache change waiting for the next episode)."""
    values = {name: coerce_param(node._specs[name], value) if name in node._specs else value
              for name, value in values.items()}

    def get(name):
        return values.get(name, node.get_parameter(name).value)
    rt = node.rt
    _check(values, get, rt.loop.action_dim if rt is not None else None)
    if rt is None:
        return ""
    note = ""
    changes = cache_changes_from_params(values)
    if changes:  # last check that can fail: the session validates against the model
        try:  # on top of a change still waiting for the next episode, if any
            cfg = rt.session.requested_cache_config.replace(**changes)
        except ValueError as exc:
            raise cache_error(exc) from None
        live = rt.worker.call(lambda session: reconfigure(session, cfg))
        if not live:
            note = "applies from the next episode: the running cache cannot take it live"
        node.get_logger().info(f"cache config: {', '.join(f'{k}={v}' for k, v in changes.items())}"
                               + (f" ({note})" if note else " (live)"))
        rt.warn_if_unbounded(cfg)
    _apply_loop(node, rt, values, get)
    for name, attr in TWIST_FIELDS.items():
        if name in values:
            value = values[name]
            setattr(rt.twist, attr, [float(v) for v in value] if isinstance(value, (list, tuple)) else value)
    if "twist.frame_id" in values:
        rt.outputs.frame_id = values["twist.frame_id"]
    if "camera_sync_slop_s" in values:
        rt.worker.sync_slop_s = float(values["camera_sync_slop_s"])
    if "max_image_pixels" in values:
        rt.max_pixels = int(values["max_image_pixels"])
    if values.get("instruction"):
        rt.start_episode(values["instruction"])
    return note


def _apply_loop(node, rt, values: dict, get) -> None:
    loop = rt.loop
    if "action.min" in values or "action.max" in values:
        loop.set_limits(get("action.min"), get("action.max"))
    if any(name.startswith("safety.") for name in values):
        loop.set_safety(values.get("safety.max_step"), values.get("safety.max_jerk"),
                        values.get("safety.reject_out_of_bounds"), values.get("safety.on_reject"))
    if "action_chunk_threshold" in values or "action_chunk_merge" in values:
        loop.set_chunking(values.get("action_chunk_threshold"), values.get("action_chunk_merge"))
    if "control_rate_hz" in values:
        rt.rate_hz = float(values["control_rate_hz"])
        if hasattr(rt.control_timer, "timer_period_ns"):  # the rcl timer (use_sim_time)
            rt.control_timer.timer_period_ns = int(1e9 / rt.rate_hz)
        else:
            rt.control_timer.period_s = 1.0 / rt.rate_hz
        loop.period_s = 1.0 / rt.rate_hz
        rt.tick_interval_ms = RollingStats()
    if "actions_per_inference" in values:
        loop.set_actions_per_inference(int(values["actions_per_inference"]) or rt.policy.default_actions_per_inference)
    if "stale_timeout_s" in values:
        loop.stale_timeout_s = float(values["stale_timeout_s"])
    if "enable_timeout_s" in values:
        loop.enable_timeout_s = float(values["enable_timeout_s"])
    if "enabled" in values:
        loop.enabled = bool(values["enabled"])


__all__ = ["apply_parameters"]
