import subprocess
import time

from cli import ENV, Launch, sh

robot = subprocess.Popen(["python", "robot.py", "60", "3"], env=ENV)
sh("ros2 daemon stop")
# the launch arguments on top of the shipped params file (kv_vla.yaml: one camera 'image', no state)
launch = Launch(
    "ros2 launch kv_vla_ros kv_vla.launch.py model_path:=/tmp/tinypi0 "
    "image_topics:='[cam_high/image_raw, cam_wrist/image_raw]' state_topic:=joint_states "
    "params_file:=$(ros2 pkg prefix kv_vla_ros)/share/kv_vla_ros/config/pi0.yaml",
    "/work/scratch-ros/check/launch_args.log",
)
assert launch.wait_for("active: publishing commands", 120)
sh("ros2 param get /kv_vla_node image_topics")
rc, text = launch.interrupt(times=1)
print("\n".join(line for line in text.splitlines() if "configured" in line))
robot.kill()
launch = Launch("ros2 launch kv_vla_ros kv_vla.launch.py use_sim_time:=true", "/work/scratch-ros/check/sim_time.log")
assert launch.wait_for("waiting for /clock", 60)
time.sleep(1.5)
sh("ros2 topic echo --once /diagnostics diagnostic_msgs/msg/DiagnosticArray --field status", timeout=20)
rc, text = launch.interrupt(times=1)
print("\n".join(line for line in text.splitlines() if "clock" in line))
