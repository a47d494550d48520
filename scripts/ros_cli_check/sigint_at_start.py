"""SIGINT (to the process group, as Ctrl-C) at fixed delays after start, 5 runs each; a traceback is
classed by where it was raised: in the package or its script ("package"), in the `ros2` command's
own start-up ("ros2cli start-up"), or in CPython's start-up before the script's first line
("interpreter start-up": <frozen site>, line 0; the same for any Python program).

    python sigint_at_start.py /work/scratch-ros/ws/install/kv_vla_ros/lib/kv_vla_ros/kv_vla_node
    DELAYS="4 8" python sigint_at_start.py ros2 run kv_vla_ros kv_vla_node
"""
import collections
import os
import re
import signal
import subprocess
import sys
import time

from cli import spawn_like_a_terminal


def where(out: str) -> str:
    if 'bin/ros2"' in out:
        return "ros2cli start-up"
    if "site-packages/kv_vla_ros/" in out or re.search(r'lib/kv_vla_ros/\w+", line [1-9]', out):
        return "package"
    return "interpreter start-up"


cmd = sys.argv[1:]
for delay in [float(d) for d in os.environ.get("DELAYS", "0.03 0.05 0.1 0.3").split()]:
    rcs, kinds, walls = [], collections.Counter(), []
    for _ in range(5):
        p = spawn_like_a_terminal(cmd, subprocess.PIPE)
        time.sleep(delay)
        t = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            p.returncode = "killed"
        walls.append(time.monotonic() - t)
        rcs.append(p.returncode)
        if "Traceback" in out or "KeyboardInterrupt" in out:
            kinds[where(out)] += 1
            if where(out) == "package":
                print(out[-1200:])
    print(f"{' '.join(os.path.basename(c) for c in cmd[:4])}: SIGINT {delay} s after start x5 -> exit codes "
          f"{dict(collections.Counter(rcs))}, tracebacks {dict(kinds) or 0}, exit {min(walls):.1f}-{max(walls):.1f} s "
          f"after SIGINT", flush=True)
