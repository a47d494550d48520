"""Declare `ParamSpec`s on an rclpy node: descriptors with descriptions, ranges and read-only flags."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.node import Node

from kv_vla_ros.ros.params import ParamSpec

_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
          "double": ParameterType.PARAMETER_DOUBLE, "string": ParameterType.PARAMETER_STRING,
          "int_array": ParameterType.PARAMETER_INTEGER_ARRAY, "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    when = {"live": "applies live", "next episode": "applies at the next episode",
            "restart": "read-only: set at start-up"}[spec.applies]
    desc = ParameterDescriptor(name=spec.name, type=_TYPES[spec.kind], description=f"{spec.description} ({when})",
                               read_only=spec.read_only)
    if spec.bounds is not None and spec.kind == "int":
        desc.integer_range = [IntegerRange(from_value=int(spec.bounds[0]), to_value=int(spec.bounds[1]), step=0)]
    elif spec.bounds is not None and spec.kind == "double":
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.bounds[0]),
                                                        to_value=float(spec.bounds[1]), step=0.0)]
    return desc


def declare_specs(node: Node, specs: list[ParamSpec]) -> dict:
    """Declare every spec (overrides from params files / command line apply); returns the values.

    Raises ValueError (one line naming the parameter) for an override of the wrong type or out
    of range: the node turns it into a start-up error.
    """
    values = {}
    for spec in specs:
        default = spec.default
        if spec.kind == "double" and isinstance(default, int):
            default = float(default)
        try:
            param = node.declare_parameter(spec.name, default, descriptor(spec))
        except Exception as exc:  # InvalidParameterTypeException, InvalidParameterValueException
            raise ValueError(f"{spec.name}: {exc}") from None
        value = param.value
        if spec.kind.endswith("_array"):
            value = list(value)
        values[spec.name] = value
    return values


__all__ = ["declare_specs", "descriptor"]
