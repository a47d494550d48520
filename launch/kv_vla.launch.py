"""Launch kv_vla_node: ``ros2 launch kv_vla_ros kv_vla.launch.py model_path:=/path/to/ckpt``."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    model_path = LaunchConfiguration("model_path")
    params_file = LaunchConfiguration("params_file")
    namespace = LaunchConfiguration("namespace")
    return LaunchDescription([
        DeclareLaunchArgument("model_path", default_value="",
                              description="VLA checkpoint directory (from_pretrained layout); empty: the shipped "
                                          "model (models/kv-vla-minigrid)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("kv_vla_ros"), "config",
                                                                  "kv_vla.yaml"]),
                              description="kv_vla_node parameters file (ros__parameters under kv_vla_node)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and of its relative topics (image, action, ...)"),
        Node(
            package="kv_vla_ros",
            executable="kv_vla_node",
            name="kv_vla_node",
            namespace=namespace,
            output="screen",
            emulate_tty=True,
            # the file first, then model_path on top; typed str so that an empty value (= the
            # shipped model) is not read as YAML null
            parameters=[params_file, {"model_path": ParameterValue(model_path, value_type=str)}],
        ),
    ])
