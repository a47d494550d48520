"""The launch arguments of kv_vla_node shared by launch/kv_vla.launch.py and launch/demo.launch.py
(needs `launch` / `launch_ros`: a ROS 2 install). Optional arguments left empty are not passed, so
the params file's values stand (``image_topics``, ``state_topic``); given ones override it, so that
``kv_vla.launch.py model_path:=... params_file:=.../pi0.yaml image_topics:="[a, b]"`` works as
written. ``autostart:=false`` starts the lifecycle node unconfigured (`ros2 lifecycle set`)."""

from __future__ import annotations

import yaml
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# Launch arguments with a fixed set of values: `ros2 launch` refuses anything else by name (a bare
# `autostart:=1` used to read as false, silently).
BOOL_CHOICES = ["true", "false"]
CHOICES = {"autostart": BOOL_CHOICES, "use_sim_time": BOOL_CHOICES}

POLICY_ARGUMENTS = (
    ("model_path", "", "VLA checkpoint directory (from_pretrained layout); empty: the shipped model "
                       "(models/kv-vla-minigrid)"),
    ("namespace", "", "namespace of the node(s) and of their relative topics (image, action, ...)"),
    ("autostart", "true", "configure and activate kv_vla_node at start-up (a lifecycle node); false: it waits "
                          "unconfigured for `ros2 lifecycle set /kv_vla_node configure` then `activate`"),
    ("use_sim_time", "false", "the node's clock from /clock (a simulator); it reports WARN while none arrives"),
    ("image_topics", "", "camera topics, one per camera the checkpoint takes, e.g. \"[cam_high/image_raw, "
                         "cam_wrist/image_raw]\"; empty: the params file's"),
    ("state_topic", "", "robot state topic (sensor_msgs/JointState); empty: the params file's"),
)


def policy_arguments() -> list[DeclareLaunchArgument]:
    params_file = PathJoinSubstitution([FindPackageShare("kv_vla_ros"), "config", "kv_vla.yaml"])
    return [DeclareLaunchArgument(name, default_value=default, description=text, **(
                {"choices": CHOICES[name]} if name in CHOICES else {}))
            for name, default, text in POLICY_ARGUMENTS] + [
        DeclareLaunchArgument("params_file", default_value=params_file,
                              description="kv_vla_node parameters file (ros__parameters under /**/kv_vla_node)")]


def policy_overrides(values: dict[str, str]) -> dict:
    """Launch argument strings -> the parameters passed on top of the params file."""
    for name, choices in CHOICES.items():  # the launch system checks choices; a direct caller may not
        if values[name] not in choices:
            raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {values[name]!r}")
    params = {"model_path": values["model_path"], "autostart": values["autostart"] == "true",
              "use_sim_time": values["use_sim_time"] == "true"}
    if values["image_topics"].strip():
        topics = yaml.safe_load(values["image_topics"])
        params["image_topics"] = [str(t) for t in (topics if isinstance(topics, list) else [topics])]
    if values["state_topic"].strip():
        params["state_topic"] = values["state_topic"]
    return params


def _policy_node(context, **node_kwargs) -> list[Node]:
    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in POLICY_ARGUMENTS}
    return [Node(package="kv_vla_ros", executable="kv_vla_node", name="kv_vla_node", namespace=values["namespace"],
                 output="screen", emulate_tty=True,
                 parameters=[LaunchConfiguration("params_file").perform(context), policy_overrides(values)],
                 **node_kwargs)]


def policy_node(**node_kwargs) -> OpaqueFunction:
    """kv_vla_node with the params file first, then the launch arguments that were given."""
    return OpaqueFunction(function=_policy_node, kwargs=node_kwargs)


__all__ = ["POLICY_ARGUMENTS", "CHOICES", "policy_arguments", "policy_node", "policy_overrides"]
