"""Declare `ParamSpec`s (`kv_vla_ros.ros.node.param_specs`, plain data) on an rclpy node: descriptors with
descriptions, ranges and read-only flags, and the type checks around setting them."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter

from kv_vla_ros.cache.settings import FIXED, LIVE, NEXT_EPISODE, RESTART
from kv_vla_ros.ros.node.param_specs import ParamSpec, coerce_param

_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
          "double": ParameterType.PARAMETER_DOUBLE, "string": ParameterType.PARAMETER_STRING,
          "int_array": ParameterType.PARAMETER_INTEGER_ARRAY, "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY,
          "string_array": ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    when = {LIVE: "applies live", NEXT_EPISODE: "applies at the next episode", RESTART: "read-only: set at start-up",
            FIXED: "read-only: fixed by the checkpoint, other values are rejected"}[spec.applies]
    if spec.when:
        when += f"; {spec.when}"
    # dynamic_typing: rclpy's own type check answers "Wrong parameter type, expected '2' got '4'";
    # the node checks types itself (`coerce_param`) and names them.
    desc = ParameterDescriptor(name=spec.name, type=_TYPES[spec.kind], description=f"{spec.description} ({when})",
                               read_only=spec.read_only, dynamic_typing=True)
    if spec.bounds is not None and spec.kind == "int":
        desc.integer_range = [IntegerRange(from_value=int(spec.bounds[0]), to_value=int(spec.bounds[1]), step=0)]
    elif spec.bounds is not None and spec.kind == "double":
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.bounds[0]),
                                                        to_value=float(spec.bounds[1]), step=0.0)]
    return desc


def declare_specs(node: Node, specs: list[ParamSpec]) -> dict:
    """Declare every spec (overrides from params files / command line apply); returns the values.

    Raises ValueError (one line naming the parameter and the types) for an override of the wrong
    type or out of range: the node turns it into a start-up error. An integer given for a double
    is stored as a double.
    """
    values = {}
    for spec in specs:
        default = coerce_param(spec, spec.default)
        try:
            param = node.declare_parameter(spec.name, default, descriptor(spec))
        except Exception as exc:  # InvalidParameterValueException (range)
            raise ValueError(f"{spec.name}: {exc}") from None
        value = coerce_param(spec, param.value)
        if spec.kind.startswith("double") and value != [] and Parameter(spec.name, value=value).type_ != param.type_:
            node.set_parameters([Parameter(spec.name, value=value)])  # 40 -> 40.0: keep the declared type
        values[spec.name] = value
    return values


def coerce_parameters(params: list[Parameter], specs: dict[str, ParamSpec]) -> list[Parameter]:
    """Pre-set callback body: integers for doubles become doubles (what ``ros2 param set x 40``
    means); everything else passes unchanged, to be checked by the on-set callback."""
    out = []
    for param in params:
        spec = specs.get(param.name)
        if spec is not None and spec.kind in ("double", "double_array"):
            try:
                value = coerce_param(spec, param.value)
            except ValueError:  # the on-set callback rejects it with the reason
                value = None
            if value is not None and value != []:  # an empty array's element type is unknown: as is
                param = Parameter(param.name, value=value)
        out.append(param)
    return out


__all__ = ["declare_specs", "descriptor", "coerce_parameters"]
