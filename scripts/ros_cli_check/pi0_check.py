import os
import signal
import subprocess
import time

from cli import ENV, Launch, sh

PI0 = "/tmp/tinypi0"
robot = subprocess.Popen(["python", "robot.py", "40", "3"], env=ENV)
sh("ros2 daemon stop")
# the documented π0 launch line, as written (a two-camera checkpoint with a 3-joint state)
launch = Launch(
    f"ros2 launch kv_vla_ros kv_vla.launch.py model_path:={PI0} "
    "params_file:=$(ros2 pkg prefix kv_vla_ros)/share/kv_vla_ros/config/pi0.yaml",
    "/work/scratch-ros/check/pi0_launch.log",
)
assert launch.wait_for("active: publishing commands", 120)
sh("ros2 topic pub --once /instruction std_msgs/msg/String \"{data: 'pick up the cube'}\"", timeout=30)
time.sleep(2)
sh("ros2 topic echo --once /action std_msgs/msg/Float32MultiArray", timeout=20)
rc, text = launch.interrupt(times=2, gap=0.3)
print("\n".join(line for line in text.splitlines() if "kv_vla_node" in line)[-3000:])
# trajectory output and the deadman, with ros2 run
run = Launch(
    "ros2 run kv_vla_ros kv_vla_node --ros-args "
    "--params-file $(ros2 pkg prefix kv_vla_ros)/share/kv_vla_ros/config/pi0.yaml "
    f"-p model_path:={PI0} -p action_output:=trajectory -p 'joint_names:=[j0, j1]' "
    "-p 'state_joint_names:=[shoulder, elbow, wrist]' -p enable_topic:=enable -p enable_timeout_s:=0.5",
    "/work/scratch-ros/check/pi0_run.log",
)
robot.kill()
robot = subprocess.Popen(["python", "robot.py", "120", "4"], env=ENV)
assert run.wait_for("active: publishing commands", 120)
sh("ros2 topic pub --once /instruction std_msgs/msg/String \"{data: 'pick up the cube'}\"", timeout=30)
time.sleep(2)
sh("ros2 topic echo --once /joint_trajectory trajectory_msgs/msg/JointTrajectory", timeout=10)
heart = subprocess.Popen(
    "ros2 topic pub -r 10 /enable std_msgs/msg/Bool '{data: true}'",
    shell=True,
    env=ENV,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
)
time.sleep(4)
sh("ros2 topic echo --once /joint_trajectory trajectory_msgs/msg/JointTrajectory", timeout=20)
os.killpg(heart.pid, signal.SIGINT)
heart.wait(10)
time.sleep(2)
sh("ros2 topic echo --once /action std_msgs/msg/Float32MultiArray", timeout=20)
sh("ros2 topic echo --once /diagnostics diagnostic_msgs/msg/DiagnosticArray --field status", timeout=20)
rc, text = run.interrupt(times=2, gap=1.0)
print("\n".join(line for line in text.splitlines() if "kv_vla_node" in line or "state" in line)[-3000:])
robot.kill()
