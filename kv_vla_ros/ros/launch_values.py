"""Typed launch arguments, checked by name before any node starts. launch_ros converts a
``ParameterValue(LaunchConfiguration(name), value_type=int)`` only as the node starts, and a bad
value then ends the launch with Python's bare message, naming no argument:
``ros2 launch kv_vla_ros arm_demo.launch.py episodes:=abc`` printed "Caught exception in launch
(see debug for traceback): invalid literal for int() with base 10: 'abc'". `launch` is imported
inside `check_typed_arguments` only: the conversion itself is plain Python (tested without a
ROS 2 install)."""

from __future__ import annotations

KINDS = {int: "an integer", float: "a number"}


def typed_argument(name: str, text: str, kind: type) -> int | float:
    """``name:=text`` as ``kind`` (int or float); a ValueError naming the argument otherwise."""
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"launch argument {name}:={text}: expected {KINDS[kind]}") from None


def check_typed_arguments(kinds: dict[str, type]):
    """A launch action to list after the arguments and before the nodes: the launch ends with one
    line naming the first argument in ``kinds`` ({name: int or float}) that is not of its kind."""
    from launch.actions import OpaqueFunction
    from launch.substitutions import LaunchConfiguration

    def check(context) -> list:
        for name, kind in kinds.items():
            typed_argument(name, LaunchConfiguration(name).perform(context), kind)
        return []

    return OpaqueFunction(function=check)


__all__ = ["KINDS", "typed_argument", "check_typed_arguments"]
