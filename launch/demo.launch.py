"""The closed-loop demo on a ROS 2 install: minigrid_sim_node + kv_vla_node; the launch ends when
the simulator has run its episodes. ``ros2 launch kv_vla_ros demo.launch.py episodes:=10``.

(`make demo` runs the same two nodes without a ROS 2 install and prints a summary.)
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    namespace = LaunchConfiguration("namespace")
    sim = Node(
        package="kv_vla_ros",
        executable="minigrid_sim_node",
        name="minigrid_sim_node",
        namespace=namespace,
        output="screen",
        parameters=[{"task": LaunchConfiguration("task"), "episodes": LaunchConfiguration("episodes"),
                     "max_steps": 100, "seed_offset": 0}],
    )
    policy = Node(
        package="kv_vla_ros",
        executable="kv_vla_node",
        name="kv_vla_node",
        namespace=namespace,
        output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"model_path": ParameterValue(LaunchConfiguration("model_path"), value_type=str)}],
    )
    return LaunchDescription([
        DeclareLaunchArgument("model_path", default_value="",
                              description="VLA checkpoint directory; empty: the shipped model"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("kv_vla_ros"), "config",
                                                                  "kv_vla.yaml"]),
                              description="kv_vla_node parameters file"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes and their topics"),
        DeclareLaunchArgument("episodes", default_value="10", description="episodes before the launch ends"),
        DeclareLaunchArgument("task", default_value="MiniGrid-MemoryS13Random-v0",
                              description="MiniGrid/BabyAI task of the simulator"),
        sim,
        policy,
        RegisterEventHandler(OnProcessExit(target_action=sim, on_exit=[EmitEvent(event=Shutdown(
            reason="minigrid_sim_node finished its episodes"))])),
    ])
