import os
import signal
import subprocess
import time
from cli import spawn_like_a_terminal

for cmd in (
    ["ros2", "run", "kv_vla_ros", "kv_vla_node"],
    ["/work/scratch-ros/ws/install/kv_vla_ros/lib/kv_vla_ros/kv_vla_node"],
):
    for gap in (0.3, 1.0):
        p = spawn_like_a_terminal(cmd, subprocess.PIPE)
        time.sleep(10)
        os.killpg(p.pid, signal.SIGINT)
        time.sleep(gap)
        os.killpg(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=30)
        print(" ".join(cmd[:3]), f"2 x SIGINT {gap} s apart -> rc {p.returncode}; Traceback: {'Traceback' in out}")
