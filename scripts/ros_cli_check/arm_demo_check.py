"""arm_demo.launch.py on a ROS 2 install: with no model_path the shipped arm π0 (installed under
share/kv_vla_ros/models/kv-vla-arm-pi0) drives arm_sim_node through kv_vla_node; the launch ends by
itself once the simulator finished its episodes. Then expert:=true (the scripted expert)."""
import subprocess
import time

from cli import ENV, sh

sh("ros2 daemon stop")
for args, name in (("episodes:=2 control_rate_hz:=20.0", "shipped_model"), ("episodes:=1 expert:=true", "expert")):
    log = f"/work/scratch-ros/check/arm_demo_{name}.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.run(f"exec ros2 launch kv_vla_ros arm_demo.launch.py {args}", shell=True, stdout=out,
                            stderr=subprocess.STDOUT, env=ENV, timeout=150).returncode
    text = open(log).read()
    lines = [line for line in text.splitlines() if "episode " in line or "done:" in line or "model" in line.lower()]
    print(f"$ ros2 launch kv_vla_ros arm_demo.launch.py {args}   # {time.monotonic() - t0:.0f} s, exit code {rc}")
    print("\n".join(lines[-8:]))
    print(f"[kv_vla_node started: {'kv_vla_node' in text}; Traceback in log: {'Traceback' in text}]\n", flush=True)
