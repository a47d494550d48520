import time
from cli import Launch, sh

sh("ros2 daemon stop")
for k in range(3):
    launch = Launch("ros2 launch kv_vla_ros demo.launch.py episodes:=50", f"/work/scratch-ros/check/demo_{k}.log")
    launch.wait_for("episode 2", 120)
    time.sleep(0.5 + k)
    rc, text = launch.interrupt(times=1 if k == 0 else 2, gap=0.3 * k)
    print(
        "RUN",
        k,
        "launch rc",
        rc,
        "| finished cleanly:",
        text.count("finished cleanly"),
        "| died:",
        text.count("process has died"),
        "| Traceback:",
        text.count("Traceback"),
    )
