"""The closed-loop demo on a ROS 2 install: minigrid_sim_node + kv_vla_node; the launch ends when
the simulator has run its episodes. ``ros2 launch kv_vla_ros demo.launch.py episodes:=10``.

(`make demo` runs the same two nodes without a ROS 2 install and prints a summary.)
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from kv_vla_ros.ros.node.launch_args import policy_arguments, policy_node


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
    return LaunchDescription([
        *policy_arguments(),
        DeclareLaunchArgument("episodes", default_value="10", description="episodes before the launch ends"),
        DeclareLaunchArgument("task", default_value="MiniGrid-MemoryS13Random-v0",
                              description="MiniGrid/BabyAI task of the simulator"),
        sim,
        policy_node(),
        RegisterEventHandler(OnProcessExit(target_action=sim, on_exit=[EmitEvent(event=Shutdown(
            reason="minigrid_sim_node finished its episodes"))])),
    ])
