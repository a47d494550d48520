"""The policy node's parameters as plain data (no rclpy): names, types, defaults, ranges, help and
when a change takes effect, all from one place: the field metadata of `NodeSettings` (the node's
own settings) and of `CacheConfig` (``cache.<field>``), see `kv_vla_ros.cache.settings`. The node
declares exactly these (`kv_vla_ros.ros.node.param_descriptors`); config/*.yaml's comments and
docs/ros.md's table are generated from them (``python scripts/generate_docs.py``; a test fails
when the committed files differ).

ROS parameters have no null: ``cache.budget_tokens: -1`` and ``cache.layer_budgets: [-1]`` (or an
empty list) mean ``None``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from kv_vla_ros.cache.config import CacheConfig
from kv_vla_ros.cache.settings import FIXED, LIVE, RESTART, SettingInfo, setting, settings_of

NONE_INT = -1  # ROS value standing for None in int / int-array cache fields


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter.

    kind: ``bool``, ``int``, ``double``, ``string``, ``int_array``, ``double_array`` or ``string_array``.
    bounds: inclusive (low, high) for ``int`` / ``double``; None when unbounded.
    applies: when a change takes effect: ``live``, ``next episode``, ``restart`` (read-only) or
        ``fixed by the checkpoint`` (read-only: other values than the checkpoint's are rejected).
    when: a detail of ``applies`` (e.g. "from the next tick").
    """

    name: str
    kind: str
    default: Any
    description: str
    bounds: tuple[float, float] | None = None
    applies: str = LIVE
    when: str = ""

    @property
    def read_only(self) -> bool:
        return self.applies in (RESTART, FIXED)

    @property
    def applies_text(self) -> str:
        return f"{self.applies} ({self.when})" if self.when else self.applies


# MiniGrid actions: left, right, forward, pickup, drop, toggle, done. Left turns counter-clockwise
# (positive angular.z, REP 103); only forward moves.
MINIGRID_LINEAR = [0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0]
MINIGRID_ANGULAR = [0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0]


@dataclass
class NodeSettings:
    """The policy node's own settings (besides ``cache.*``); each field is one ROS parameter, named
    as the field unless ``param=`` says otherwise. To add one: a field here (`setting` with help,
    bounds, applies), then ``python scripts/generate_docs.py``."""

    model_path: str = setting("", "checkpoint directory (from_pretrained layout); empty: the shipped model "
                              "kv_vla_ros.vla.DEFAULT_MODEL_PATH", applies=RESTART)
    device: str = setting("cpu", "torch device for inference (cpu, cuda, cuda:1, ...)", applies=RESTART)
    dtype: str = setting("float32", "weights, activations and KV cache dtype: float32, bfloat16, or float16 (CUDA "
                         "only); gate scores stay float32", applies=RESTART)
    compile: bool = setting(False, "run the decode step compiled (a CUDA graph on a GPU); needs cache.static: true",
                            applies=RESTART)
    num_threads: int = setting(1, "torch CPU threads for inference (0: torch's default)", bounds=(0, 256),
                               applies=RESTART)
    control_thread_priority: int = setting(50, "SCHED_FIFO priority (1-99) of the control tick's thread, as "
                                           "ros2_control's controller_manager thread_priority; 0: the normal "
                                           "scheduler. Needs an rtprio limit (limits.conf) or CAP_SYS_NICE; "
                                           "without it the node warns once and ticks on the normal scheduler",
                                           bounds=(0, 99), applies=RESTART)
    use_compressed: bool = setting(False, "also subscribe <image topic>/compressed (sensor_msgs/CompressedImage) "
                                   "for every image topic", applies=RESTART)
    image_topics: list[str] = setting(help="camera topics (sensor_msgs/Image), one per camera the checkpoint takes "
                                      "per step, in its order; the first drives the control steps",
                                      applies=RESTART, default_factory=lambda: ["image"])
    state_topic: str = setting("", "robot state topic (empty: none); needed when the checkpoint takes a state (π0 "
                               "with state statistics)", applies=RESTART)
    state_type: str = setting("joint_state", "state_topic's type: joint_state (sensor_msgs/JointState, its "
                              "positions) or float32_multi_array (std_msgs/Float32MultiArray, its data)",
                              applies=RESTART)
    autostart: bool = setting(True, "configure and activate the lifecycle node at start-up (what `ros2 run` needs); "
                              "false: it waits unconfigured for `ros2 lifecycle set <node> configure` then "
                              "`activate`", applies=RESTART)
    actions_per_inference: int = setting(0, "actions of each predicted action chunk executed (one per control "
                                         "tick) before the next inference, as LeRobot's n_action_steps; 0: the "
                                         "checkpoint's default; at most the action chunk length (1 for the shipped "
                                         "model)", bounds=(0, 1 << 16),
                                         when="from the next action chunk; a smaller value also trims the current one")
    action_chunk_threshold: float = setting(0.0, "start the next inference while the current action chunk still "
                                            "runs, once at most this share of its executed actions remain (LeRobot's "
                                            "chunk_size_threshold); 0: only when it is used up (the last action is "
                                            "held while the model thinks)", bounds=(0.0, 1.0))
    action_chunk_merge: str = setting("replace", "where a new action chunk overlaps the actions still queued (the "
                                      "rows for the ticks already executed since its inference started are "
                                      "skipped): replace (the new chunk's actions), blend (a linear crossfade "
                                      "from the old actions to the new over the overlap) or rtc (real-time "
                                      "chunking, flow policies such as π0: the new chunk is sampled guided "
                                      "toward the actions queued when its inference started, those executed "
                                      "before it arrives fully, the rest with a decaying soft mask; then "
                                      "replace)")
    wait_for_action_view: bool = setting(False, "lockstep: an inference waits for the view after the newest action "
                                         "(row k of a chunk inferred on camera frame v: frame v + k + 1, the one a "
                                         "lockstep simulator sends once it applied that row), with a state no "
                                         "older than it, so the closed loop is the offline one whatever the "
                                         "machine's speed (make demo-arm); false: the newest frame, even one taken "
                                         "before that action ran (the node infers ahead)")
    camera_sync_slop_s: float = setting(0.05, "pair every further camera's frame and the JointState state with the "
                                        "first camera's frame by header stamp: the closest within this many "
                                        "seconds, waiting up to this long for one at or after the frame's stamp "
                                        "(an approximate-time rule; a state with no stamp or none that close: the "
                                        "newest); 0: each input's newest message (arrival order)",
                                        bounds=(0.0, 10.0))
    state_joint_names: list[str] = setting(help="JointState state: the joints the checkpoint's state takes, in its "
                                           "order, picked from each message by name (a missing name rejects the "
                                           "message: the state goes stale, named in diagnostics); [\"\"]: the "
                                           "joints the checkpoint recorded (state_names in kv_vla_policy.json), "
                                           "else JointState.position in message order", applies=RESTART,
                                           default_factory=lambda: [""])
    instruction: str = setting("", "instruction to start with when none arrives on the instruction topic; setting "
                               "it starts a new episode")
    control_rate_hz: float = setting(20.0, "rate of action/cmd_vel publishing", bounds=(0.1, 1000.0),
                                     when="from the next tick")
    stale_timeout_s: float = setting(1.0, "publish stop (and report WARN) after this long without a fresh message "
                                     "on any input (every image topic, the state topic) or a fresh action",
                                     bounds=(0.001, 3600.0))
    enabled: bool = setting(True, "false: publish stop commands only (inference keeps running)")
    enable_topic: str = setting("", "deadman: a std_msgs/Bool heartbeat topic (empty: off); when set, the node "
                                "publishes stop and runs no inference unless a true arrived within enable_timeout_s",
                                applies=RESTART)
    enable_timeout_s: float = setting(0.5, "deadman: how long one true on enable_topic allows acting",
                                      bounds=(0.001, 3600.0))
    max_image_pixels: int = setting(4096 * 4096, "frames with more pixels are rejected", bounds=(1, 1 << 30),
                                    when="from the next frame")
    action_min: list[float] = setting(help="lower clamp of continuous actions, one value per dimension or one for "
                                      "all", param="action.min", default_factory=lambda: [-math.inf],
                                      when="from the next tick, the held action too")
    action_max: list[float] = setting(help="upper clamp of continuous actions, one value per dimension or one for "
                                      "all", param="action.max", default_factory=lambda: [math.inf],
                                      when="from the next tick, the held action too")
    safety_reject_out_of_bounds: bool = setting(False, "a chunk with a value outside [action.min, action.max] is "
                                                "rejected whole (false: its values are clamped to the bounds)",
                                                param="safety.reject_out_of_bounds")
    safety_max_step: list[float] = setting(help="largest change between consecutive commands per dimension (one "
                                           "value for all, or one per dimension; across the seam with the command "
                                           "last sent too): a chunk that asks for more is rejected whole",
                                           param="safety.max_step", when="from the next action chunk",
                                           default_factory=lambda: [math.inf])
    safety_max_jerk: list[float] = setting(help="largest jerk (third difference of consecutive commands / control "
                                           "period^3, per dimension; the commands last sent included): a chunk over "
                                           "it is rejected whole", param="safety.max_jerk",
                                           when="from the next action chunk",
                                           default_factory=lambda: [math.inf])
    safety_on_reject: str = setting("stop", "what the robot does after a rejected chunk until the next good one: "
                                    "stop (the stop command of action_output) or hold (the command last sent, "
                                    "repeated)", param="safety.on_reject")
    action_output: str = setting("twist", "published besides the action array: twist (geometry_msgs/Twist on "
                                 "cmd_vel), twist_stamped (geometry_msgs/TwistStamped on cmd_vel), trajectory "
                                 "(trajectory_msgs/JointTrajectory on joint_trajectory, positions only, one point "
                                 "per queued action) or float64_multi_array (std_msgs/Float64MultiArray on "
                                 "forward_position_controller/commands: what forward_command_controller takes)",
                                 applies=RESTART)
    output_topic: str = setting("", "topic of action_output (empty: its default above; e.g. "
                                "/forward_velocity_controller/commands)", applies=RESTART)
    forward_command_stop: str = setting("hold", "action_output float64_multi_array: the stop, sent once per stop: "
                                        "hold (the command last sent again: a position controller stays where it "
                                        "is) or zeros (a zero per joint: a velocity or effort controller stops)",
                                        applies=RESTART)
    joint_names: list[str] = setting(help="action_output trajectory: the joint name of every action dimension, in "
                                     "order", applies=RESTART, default_factory=lambda: [""])
    twist_frame_id: str = setting("base_link", "action_output twist_stamped: header.frame_id",
                                  param="twist.frame_id")
    max_linear: float = setting(0.5, "cmd_vel |linear.x| limit (m/s)", bounds=(0.0, 100.0))
    max_angular: float = setting(1.5, "cmd_vel |angular.z| limit (rad/s)", bounds=(0.0, 100.0))
    twist_discrete_linear: list[float] = setting(help="discrete actions: linear.x per action index (indices past "
                                                 "the end: 0)", param="twist.discrete_linear",
                                                 default_factory=lambda: list(MINIGRID_LINEAR))
    twist_discrete_angular: list[float] = setting(help="discrete actions: angular.z per action index (indices past "
                                                  "the end: 0)", param="twist.discrete_angular",
                                                  default_factory=lambda: list(MINIGRID_ANGULAR))
    twist_linear_index: int = setting(-1, "continuous actions: dimension sent as linear.x (-1: none)",
                                      bounds=(-1, 1 << 16), param="twist.linear_index")
    twist_angular_index: int = setting(-1, "continuous actions: dimension sent as angular.z (-1: none)",
                                       bounds=(-1, 1 << 16), param="twist.angular_index")


# annotation -> ROS parameter kind
_KINDS = {"str": "string", "int": "int", "int | None": "int", "float": "double", "bool": "bool",
          "list[int] | None": "int_array", "list[int]": "int_array", "list[float]": "double_array",
          "list[str]": "string_array"}


def _kind(info: SettingInfo) -> str:
    if info.annotation not in _KINDS:  # a new field type: teach this table, do not guess
        raise ValueError(f"{info.param}: no ROS parameter type for the annotation {info.annotation!r}")
    return _KINDS[info.annotation]


def spec_of(info: SettingInfo, prefix: str = "", default: Any = dataclasses.MISSING) -> ParamSpec:
    """The ROS parameter of one setting (``prefix`` + its param name)."""
    value = info.default if default is dataclasses.MISSING else default
    return ParamSpec(prefix + info.param, _kind(info), value, info.help, info.bounds, info.applies, info.when)


NODE_PARAMS: list[ParamSpec] = [spec_of(info) for info in settings_of(NodeSettings)]

# Declared once the checkpoint is loaded: their range depends on it.
POLICY_PARAMS = ("actions_per_inference",)


def policy_param_specs(action_chunk_length: int) -> list[ParamSpec]:
    """The POLICY_PARAMS specs for a policy predicting ``action_chunk_length`` actions per inference
    (``actions_per_inference`` ranges over 0 = the checkpoint's default, 1 .. action_chunk_length)."""
    return [dataclasses.replace(spec, bounds=(0, int(action_chunk_length))) for spec in NODE_PARAMS
            if spec.name in POLICY_PARAMS]


# ROS notes on the None encoding, appended to the cache fields' help.
_NONE_NOTES = {"budget_tokens": " (-1: None)", "layer_budgets": " ([-1] or []: None)"}


def cache_param_specs(defaults: CacheConfig | None = None) -> list[ParamSpec]:
    """One ``cache.<field>`` spec per CacheConfig field, defaults from ``defaults`` (the
    checkpoint's cache config)."""
    defaults = defaults or CacheConfig()
    specs = []
    for info in settings_of(CacheConfig):
        spec = spec_of(info, "cache.", cache_value_to_param(info.name, getattr(defaults, info.name)))
        bounds = spec.bounds
        if info.name == "budget_tokens" and bounds is not None:
            bounds = (NONE_INT, bounds[1])
        specs.append(dataclasses.replace(spec, description=spec.description + _NONE_NOTES.get(info.name, ""),
                                         bounds=bounds))
    return specs


def all_param_specs(cache_defaults: CacheConfig | None = None) -> list[ParamSpec]:
    return NODE_PARAMS + cache_param_specs(cache_defaults)


def cache_value_to_param(field: str, value: Any) -> Any:
    """CacheConfig value -> ROS parameter value (None becomes -1 / [-1])."""
    if value is None:
        return [NONE_INT] if field == "layer_budgets" else NONE_INT
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return value


def param_to_cache_value(field: str, value: Any) -> Any:
    """ROS parameter value -> CacheConfig value (-1 / [-1] / [] become None)."""
    if field == "budget_tokens" and value == NONE_INT:
        return None
    if field == "layer_budgets":
        values = [int(v) for v in (value or [])]
        return None if values in ([], [NONE_INT]) else values
    if field in ("gate_threshold", "summary_threshold") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def cache_changes_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """``{"cache.x": v, "other": w}`` -> ``{"x": CacheConfig value}`` for the cache entries only."""
    return {name[len("cache."):]: param_to_cache_value(name[len("cache."):], value)
            for name, value in params.items() if name.startswith("cache.")}


_KIND_NAMES = {"bool": "a bool", "int": "an integer", "double": "a double", "string": "a string",
               "int_array": "an integer array", "double_array": "a double array", "string_array": "a string array"}


def describe_value(value: Any) -> str:
    """How a parameter value reads to a user: ``an integer (40)``, ``a string ('fast')``, ..."""
    if value is None:
        return "no value (parameter not set)"
    if isinstance(value, bool):
        return f"a bool ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a double ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, (bytes, bytearray)):
        return "a byte array"
    items = list(value)
    if not items:
        return "an empty array"
    return f"{describe_value(items[0]).split(' (')[0]} array ({items!r})"


def coerce_param(spec: ParamSpec, value: Any) -> Any:
    """``value`` as ``spec``'s type, or ValueError naming the parameter, the expected and the given
    type. Integers pass for doubles (``ros2 param set ... control_rate_hz 40`` sends an integer)."""
    kind = spec.kind
    ok = {"bool": lambda v: isinstance(v, bool), "string": lambda v: isinstance(v, str),
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "double": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    if kind in ok:
        if value is not None and ok[kind](value):
            return float(value) if kind == "double" else value
    elif value is not None and not isinstance(value, (str, bytes, bytearray, bool, int, float)):
        items = list(value)  # rclpy hands arrays over as array.array or list
        element = kind[: -len("_array")]
        if all(ok[element](v) for v in items):
            if element == "string":
                return [str(v) for v in items]
            return [float(v) for v in items] if element == "double" else [int(v) for v in items]
    example = {"bool": "true", "int": "3", "double": "1.0", "string": "'text'", "int_array": "[1, 2]",
               "double_array": "[0.5, 1.0]", "string_array": "['image']"}[kind]
    raise ValueError(f"{spec.name}: expected {_KIND_NAMES[kind]} (e.g. {example}), got {describe_value(value)}")


__all__ = ["ParamSpec", "NodeSettings", "NODE_PARAMS", "POLICY_PARAMS", "policy_param_specs", "NONE_INT",
           "cache_param_specs", "all_param_specs", "spec_of", "cache_value_to_param",
           "param_to_cache_value", "cache_changes_from_params", "render_params_yaml", "MINIGRID_LINEAR",
           "MINIGRID_ANGULAR", "coerce_param", "describe_value", "PARAMS_FILE_KEY"]

# Parameters files are keyed so that they apply under any namespace: ``kv_vla_node:`` alone only
# matches the node at the root (``/kv_vla_node``), silently ignored under ``namespace:=robot1``.
PARAMS_FILE_KEY = "/**/{node}"


def render_params_yaml(specs: list[ParamSpec], node_name: str = "kv_vla_node", header: str = "",
                       values: dict[str, Any] | None = None) -> str:
    """A ``ros__parameters`` file listing ``specs``, one comment per entry (its help and when a
    change applies), keyed ``/**/<node_name>`` (applies under any namespace). ``values`` overrides
    the specs' defaults; ``header``: comment lines above the key (kept as given)."""
    import json

    values = values or {}
    lines = [*header.splitlines(), f"{PARAMS_FILE_KEY.format(node=node_name)}:", "  ros__parameters:"]
    for spec in specs:
        value = values.get(spec.name, spec.default)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(json.dumps(v) if isinstance(v, str) else _yaml_number(v) for v in value) + "]"
        else:
            text = _yaml_number(value)
        lines.append(f"    # {spec.description} [{spec.applies_text}]")
        lines.append(f"    {spec.name}: {text}")
    return "\n".join(lines) + "\n"


def _yaml_number(value) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    return str(value)
