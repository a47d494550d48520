"""The arm demo on a ROS 2 install: arm_sim_node (a Franka Panda in PyBullet that must remember a
cue, docs/arm.md) in closed loop; the launch ends when the simulator has run its episodes.

    ros2 launch kv_vla_ros arm_demo.launch.py episodes:=5                    # the shipped arm π0 drives
    ros2 launch kv_vla_ros arm_demo.launch.py model_path:=/path/to/arm-pi0   # your checkpoint drives
    ros2 launch kv_vla_ros arm_demo.launch.py expert:=true                   # the scripted expert drives

kv_vla_node runs the checkpoint (default: the shipped models/kv-vla-arm-pi0, trained from rosbags
by `make model-arm`, with its own cache: the trained gate at a quarter of the history;
config/pi0.yaml, actions clamped to [-1, 1]). With expert:=true (or an empty model_path, from an
including launch file: `ros2 launch` refuses `model_path:=` on its command line) the simulator's
scripted expert drives instead. `make demo-arm` runs the same nodes without a ROS 2 install.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from kv_vla_ros.ros.launch_values import check_typed_arguments
from kv_vla_ros.ros.node.launch_args import BOOL_CHOICES

# the arguments converted by ParameterValue below: checked first, so that a bad value is refused by name
TYPED = {"episodes": int, "seed_offset": int, "control_rate_hz": float}


def generate_launch_description() -> LaunchDescription:
    namespace = LaunchConfiguration("namespace")
    model_path = LaunchConfiguration("model_path")
    rate = ParameterValue(LaunchConfiguration("control_rate_hz"), value_type=float)
    # "True" / "False": the expert drives when asked, or when there is no checkpoint to run
    expert = PythonExpression(["'", LaunchConfiguration("expert"), "'.lower() == 'true' or '", model_path, "' == ''"])
    sim = Node(
        package="kv_vla_ros",
        executable="arm_sim_node",
        name="arm_sim_node",
        namespace=namespace,
        output="screen",
        parameters=[{"task": LaunchConfiguration("task"),
                     "episodes": ParameterValue(LaunchConfiguration("episodes"), value_type=int),
                     "seed_offset": ParameterValue(LaunchConfiguration("seed_offset"), value_type=int),
                     "mode": PythonExpression(["'expert' if ", expert, " else 'policy'"]),
                     # the expert starts at once (nothing else need listen); to record its episodes, start
                     # the recorder first and pass wait_for_subscribers:=true
                     "wait_for_subscribers": ParameterValue(LaunchConfiguration("wait_for_subscribers"),
                                                            value_type=bool),
                     "control_rate_hz": rate, "frame_rate_hz": rate}],
    )
    policy = Node(
        package="kv_vla_ros",
        executable="kv_vla_node",
        name="kv_vla_node",
        namespace=namespace,
        output="screen",
        condition=UnlessCondition(expert),
        parameters=[LaunchConfiguration("params_file"),
                    {"model_path": ParameterValue(model_path, value_type=str), "control_rate_hz": rate,
                     "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
                     "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                     "action.min": [-1.0], "action.max": [1.0],
                     # the simulator's one camera and its joint state (pi0.yaml is for a two-camera arm)
                     "image_topics": ["image"], "state_topic": "joint_states",
                     # lockstep: each inference on the view after the last action (the world waits)
                     "wait_for_action_view": True, "stale_timeout_s": 60.0}],
    )
    return LaunchDescription([
        DeclareLaunchArgument("model_path",
                              default_value=PathJoinSubstitution([FindPackageShare("kv_vla_ros"), "models",
                                                                  "kv-vla-arm-pi0"]),
                              description="π0 checkpoint for the arm (9 joint positions in, 4 actions out; default: "
                                          "the shipped kv-vla-arm-pi0); empty: as expert:=true"),
        DeclareLaunchArgument("expert", default_value="false", choices=BOOL_CHOICES,
                              description="true: the simulator's scripted expert drives the arm, no kv_vla_node"),
        DeclareLaunchArgument("wait_for_subscribers", default_value="false", choices=BOOL_CHOICES,
                              description="expert only: hold the first episode until the image, joint_states and "
                                          "action topics each have a subscriber (e.g. kv-vla bag record)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("kv_vla_ros"), "config",
                                                                  "pi0.yaml"]),
                              description="kv_vla_node parameters file (unused when the expert drives)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the nodes and their topics"),
        DeclareLaunchArgument("autostart", default_value="true", choices=BOOL_CHOICES,
                              description="configure and activate kv_vla_node at start-up; false: it waits "
                                          "unconfigured for `ros2 lifecycle set /kv_vla_node configure`, `activate`"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=BOOL_CHOICES,
                              description="kv_vla_node's clock from /clock (a simulator publishing one)"),
        DeclareLaunchArgument("episodes", default_value="3", description="episodes before the launch ends"),
        DeclareLaunchArgument("task", default_value="Arm-CueCarryLong-v0",
                              description="arm task: Arm-CueCarryShort-v0, Arm-CueCarryLong-v0 (cue >= 150 steps "
                                          "before the decision) or Arm-CueCarryDistract-v0 (the long lane with "
                                          "distractors)"),
        DeclareLaunchArgument("seed_offset", default_value="0", description="offset into the held-out eval seeds"),
        DeclareLaunchArgument("control_rate_hz", default_value="10.0",
                              description="control steps per second of the simulator and kv_vla_node (the camera "
                                          "renders once per step)"),
        check_typed_arguments(TYPED),
        sim,
        policy,
        RegisterEventHandler(OnProcessExit(target_action=sim, on_exit=[EmitEvent(event=Shutdown(
            reason="arm_sim_node finished its episodes"))])),
    ])
