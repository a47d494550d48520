"""Launch kv_vla_node: ``ros2 launch kv_vla_ros kv_vla.launch.py model_path:=/path/to/ckpt``.

The node is a lifecycle node; it comes up active (``autostart:=true``, the default) or unconfigured
(``autostart:=false``: ``ros2 lifecycle set /kv_vla_node configure`` then ``activate``). Arguments:
model_path, params_file, namespace, autostart, use_sim_time, image_topics, state_topic (the last two
override the params file only when given).
"""

from launch import LaunchDescription

from kv_vla_ros.ros.node.launch_args import policy_arguments, policy_node


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*policy_arguments(), policy_node()])
