import subprocess
import time
from cli import ENV, Launch, sh, wait_node


def until(cmd, text, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in subprocess.run(cmd, shell=True, capture_output=True, text=True, env=ENV).stdout:
            return
        time.sleep(0.5)


sh("ros2 daemon stop")
launch = Launch(
    "ros2 launch kv_vla_ros kv_vla.launch.py autostart:=false", "/work/scratch-ros/check/lifecycle_launch.log"
)
assert wait_node("/kv_vla_node")
until("ros2 lifecycle get /kv_vla_node", "unconfigured")
sh("ros2 lifecycle nodes")
sh("ros2 lifecycle get /kv_vla_node")
sh("ros2 lifecycle set /kv_vla_node activate")
sh("ros2 lifecycle set /kv_vla_node configure", timeout=120)
sh("ros2 lifecycle get /kv_vla_node")
sh("ros2 lifecycle set /kv_vla_node activate")
sh("ros2 lifecycle get /kv_vla_node")
sh("ros2 topic echo --once /action std_msgs/msg/Float32MultiArray", timeout=20)
sh("ros2 lifecycle set /kv_vla_node deactivate")
sh("ros2 lifecycle get /kv_vla_node")
sh("ros2 lifecycle set /kv_vla_node cleanup")
sh("ros2 lifecycle get /kv_vla_node")
sh("ros2 lifecycle set /kv_vla_node configure", timeout=120)
sh("ros2 lifecycle set /kv_vla_node activate")
sh("ros2 lifecycle get /kv_vla_node")
sh("ros2 lifecycle set /kv_vla_node shutdown")
time.sleep(2)
rc, text = launch.interrupt(times=1)
print("\n".join(line for line in text.splitlines() if "kv_vla_node" in line))
