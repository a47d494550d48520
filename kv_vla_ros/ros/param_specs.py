"""The policy node's parameters as plain data (no rclpy): names, types, defaults, ranges, docs and
when a change takes effect. The node declares exactly these; config/kv_vla.yaml lists exactly
these (a test checks both ways).

The ``cache.*`` parameters are generated from ``dataclasses.fields(CacheConfig)`` (types from
the annotations, descriptions from the class docstring), so they cannot drift from the config.
ROS parameters have no null: ``cache.budget_tokens: -1`` and ``cache.layer_budgets: [-1]`` (or an
empty list) mean ``None``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from kv_vla_ros.cache.config import CacheConfig

NONE_INT = -1  # ROS value standing for None in int / int-array cache fields


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter.

    kind: ``bool``, ``int``, ``double``, ``string``, ``int_array``, ``double_array`` or ``string_array``.
    bounds: inclusive (low, high) for ``int`` / ``double``; None when unbounded.
    applies: when a change takes effect: ``live``, ``next episode`` or ``restart`` (read-only).
    """

    name: str
    kind: str
    default: Any
    description: str
    bounds: tuple[float, float] | None = None
    applies: str = "live"

    @property
    def read_only(self) -> bool:
        return self.applies == "restart"


# MiniGrid actions: left, right, forward, pickup, drop, toggle, done. Left turns counter-clockwise
# (positive angular.z, REP 103); only forward moves.
MINIGRID_LINEAR = [0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0]
MINIGRID_ANGULAR = [0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0]

NODE_PARAMS: list[ParamSpec] = [
    ParamSpec("model_path", "string", "", "checkpoint directory (from_pretrained layout); empty: the shipped "
              "model kv_vla_ros.vla.DEFAULT_MODEL_PATH", applies="restart"),
    ParamSpec("device", "string", "cpu", "torch device for inference (cpu, cuda, cuda:1, ...)", applies="restart"),
    ParamSpec("dtype", "string", "float32", "weights, activations and KV cache dtype: float32, bfloat16, or "
              "float16 (CUDA only)", applies="restart"),
    ParamSpec("compile", "bool", False, "run the decode step compiled (a CUDA graph on a GPU); needs "
              "cache.static: true", applies="restart"),
    ParamSpec("num_threads", "int", 1, "torch CPU threads for inference (0: torch's default)", (0, 256),
              applies="restart"),
    ParamSpec("use_compressed", "bool", False, "also subscribe <image topic>/compressed "
              "(sensor_msgs/CompressedImage) for every image topic", applies="restart"),
    ParamSpec("image_topics", "string_array", ["image"], "camera topics (sensor_msgs/Image), one per camera the "
              "checkpoint takes per step, in its order; the first drives the control steps", applies="restart"),
    ParamSpec("state_topic", "string", "", "robot state topic (empty: none); needed when the checkpoint takes a "
              "state (π0 with state statistics)", applies="restart"),
    ParamSpec("state_type", "string", "joint_state", "state_topic's type: joint_state (sensor_msgs/JointState, "
              "its positions) or float32_multi_array (std_msgs/Float32MultiArray, its data)", applies="restart"),
    ParamSpec("actions_per_inference", "int", 0, "actions of each predicted chunk executed (one per control tick) "
              "before the next inference, as LeRobot's n_action_steps; 0: the checkpoint's default; at most the "
              "chunk length (1 for the shipped model)", (0, 1 << 16)),
    ParamSpec("instruction", "string", "", "instruction to start with when none arrives on the instruction "
              "topic; setting it starts a new episode"),
    ParamSpec("control_rate_hz", "double", 20.0, "rate of action/cmd_vel publishing", (0.1, 1000.0)),
    ParamSpec("stale_timeout_s", "double", 1.0, "publish stop (and report WARN) after this long without a fresh "
              "message on any input (every image topic, the state topic) or a fresh action", (0.001, 3600.0)),
    ParamSpec("enabled", "bool", True, "false: publish stop commands only (inference keeps running)"),
    ParamSpec("max_image_pixels", "int", 4096 * 4096, "frames with more pixels are rejected", (1, 1 << 30)),
    ParamSpec("action.min", "double_array", [-math.inf], "lower clamp of continuous actions, one value per "
              "dimension or one for all"),
    ParamSpec("action.max", "double_array", [math.inf], "upper clamp of continuous actions, one value per "
              "dimension or one for all"),
    ParamSpec("max_linear", "double", 0.5, "cmd_vel |linear.x| limit (m/s)", (0.0, 100.0)),
    ParamSpec("max_angular", "double", 1.5, "cmd_vel |angular.z| limit (rad/s)", (0.0, 100.0)),
    ParamSpec("twist.discrete_linear", "double_array", MINIGRID_LINEAR, "discrete actions: linear.x per action "
              "index (indices past the end: 0)"),
    ParamSpec("twist.discrete_angular", "double_array", MINIGRID_ANGULAR, "discrete actions: angular.z per "
              "action index (indices past the end: 0)"),
    ParamSpec("twist.linear_index", "int", -1, "continuous actions: dimension sent as linear.x (-1: none)",
              (-1, 1 << 16)),
    ParamSpec("twist.angular_index", "int", -1, "continuous actions: dimension sent as angular.z (-1: none)",
              (-1, 1 << 16)),
]

# Declared once the checkpoint is loaded: their range depends on it.
POLICY_PARAMS = ("actions_per_inference",)


def policy_param_specs(chunk_length: int) -> list[ParamSpec]:
    """The POLICY_PARAMS specs for a policy predicting ``chunk_length`` actions per inference
    (``actions_per_inference`` ranges over 0 = the checkpoint's default, 1 .. chunk_length)."""
    return [dataclasses.replace(spec, bounds=(0, int(chunk_length))) for spec in NODE_PARAMS
            if spec.name in POLICY_PARAMS]


# Bounds the ROS descriptors enforce before CacheConfig.validate sees the value.
_CACHE_BOUNDS: dict[str, tuple[float, float]] = {
    "chunk_size": (1, 1 << 20), "recent_chunks": (1, 1 << 20), "sink_tokens": (0, 1 << 20),
    "budget_tokens": (NONE_INT, 1 << 30), "gate_threshold": (0.0, 1.0), "summary_threshold": (0.0, 1.0),
    "seed": (0, (1 << 31) - 1),
}
# The VLA session fixes these to the model (instruction length, tokens per step): other values
# are rejected; they are parameters so that the node mirrors CacheConfig one to one.
_CACHE_FIXED_BY_MODEL = ("chunk_size", "sink_tokens")


def _cache_field_docs() -> dict[str, str]:
    """``name: description`` pairs from the Attributes section of CacheConfig's docstring."""
    doc = (CacheConfig.__doc__ or "").split("Attributes:", 1)[-1]
    docs: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        match = re.match(r"^\s{8}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def _cache_kind(annotation: str) -> str:
    kinds = {"str": "string", "int": "int", "int | None": "int", "float": "double", "bool": "bool",
             "list[int] | None": "int_array"}
    if annotation not in kinds:  # a new CacheConfig field type: teach this table, do not guess
        raise ValueError(f"cache: no ROS parameter type for CacheConfig annotation {annotation!r}")
    return kinds[annotation]


def cache_param_specs(defaults: CacheConfig | None = None) -> list[ParamSpec]:
    """One ``cache.<field>`` spec per CacheConfig field, defaults from ``defaults``."""
    defaults = defaults or CacheConfig()
    docs = _cache_field_docs()
    specs = []
    for f in dataclasses.fields(CacheConfig):
        kind = _cache_kind(str(f.type))
        description = docs.get(f.name, f.name)
        if f.name == "budget_tokens":
            description += " (-1: None)"
        if f.name == "layer_budgets":
            description += " ([-1] or []: None)"
        applies = "live"  # VLASession.set_cache_config reconfigures the running cache
        if f.name in _CACHE_FIXED_BY_MODEL:
            description += " (fixed by the model: other values are rejected)"
        specs.append(ParamSpec(f"cache.{f.name}", kind, cache_value_to_param(f.name, getattr(defaults, f.name)),
                               description, _CACHE_BOUNDS.get(f.name), applies))
    return specs


# Old parameter names that keep working for one release: {old: new}. Each is declared as a string
# whose empty default means "not given"; a value given (params file, command line, `ros2 param set`)
# is applied as the new parameter's, with a warning in the log.
RENAMED_PARAMS = {"cache.policy": "cache.eviction"}


def renamed_param_specs() -> list[ParamSpec]:
    return [ParamSpec(old, "string", "", f"deprecated: the old name of {new}, which takes the value given here")
            for old, new in RENAMED_PARAMS.items()]


def apply_renamed_params(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``values`` with each old name given a value (`RENAMED_PARAMS`) moved to its new name, and
    one warning per old name used. Empty old values (not given) are dropped."""
    out, warnings = dict(values), []
    for old, new in RENAMED_PARAMS.items():
        if old not in out:
            continue
        value = out.pop(old)
        if value in ("", None):
            continue
        out[new] = value
        warnings.append(f"{old} is deprecated: use {new} (the old name goes in the next release); "
                        f"applied as {new}={value}")
    return out, warnings


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


__all__ = ["ParamSpec", "NODE_PARAMS", "POLICY_PARAMS", "policy_param_specs", "NONE_INT", "cache_param_specs", "all_param_specs", "cache_value_to_param",
           "param_to_cache_value", "cache_changes_from_params", "render_params_yaml", "RENAMED_PARAMS",
           "renamed_param_specs", "apply_renamed_params", "MINIGRID_LINEAR",
           "MINIGRID_ANGULAR", "coerce_param", "describe_value", "PARAMS_FILE_KEY"]

# Parameters files are keyed so that they apply under any namespace: ``kv_vla_node:`` alone only
# matches the node at the root (``/kv_vla_node``), silently ignored under ``namespace:=robot1``.
PARAMS_FILE_KEY = "/**/{node}"


def render_params_yaml(specs: list[ParamSpec], node_name: str = "kv_vla_node") -> str:
    """A ``ros__parameters`` file listing ``specs`` with their defaults, one comment per entry,
    keyed ``/**/<node_name>`` (applies under any namespace)."""
    import json

    lines = [f"{PARAMS_FILE_KEY.format(node=node_name)}:", "  ros__parameters:"]
    for spec in specs:
        value = spec.default
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(json.dumps(v) if isinstance(v, str) else _yaml_number(v) for v in value) + "]"
        else:
            text = _yaml_number(value)
        lines.append(f"    # {spec.description} [{spec.applies}]")
        lines.append(f"    {spec.name}: {text}")
    return "\n".join(lines) + "\n"


def _yaml_number(value) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    return str(value)
