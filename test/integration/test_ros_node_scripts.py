"""The installed node scripts (``nodes/``, what ``ros2 run`` and ``ros2 launch`` start) and a Ctrl-C
in their first hundredths of a second: exit 0, no traceback, no node started. The SIGINT is sent
while the script imports its n-th module (an import hook: deterministic where a timed signal is
not; on a loaded machine the real ros2 CLI showed tracebacks 0.03-0.05 s after start, inside the
package's `import signal`). Needs neither rclpy nor launch (but one test): the node is stopped
before either loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (REPO / "nodes").iterdir())

# Runs a script as its shebang would, after arming a finder that sends this process SIGINT when the
# script asks for its n-th module not yet loaded (those the wrapper loaded itself are not counted).
CTRL_C_AT_IMPORT = """
import os, pkgutil, runpy, signal, sys  # pkgutil: what run_path imports
signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as at a script's start
class CtrlC:
    left = {n}
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        cls.left -= 1
        if cls.left == 0:
            print("SIGINT at import of", name, flush=True)
            os.kill(os.getpid(), signal.SIGINT)
        return None
def report_then_exit(code, _exit=os._exit):  # the scripts end with os._exit (no finally runs)
    print("loaded:", sorted(m for m in ("rclpy", "torch", "numpy") if m in sys.modules), flush=True)
    _exit(code)
os._exit = report_then_exit
sys.meta_path.insert(0, CtrlC)
sys.argv = [{script!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_the_scripts_are_the_three_nodes():
    assert SCRIPTS == ["arm_sim_node", "kv_vla_node", "minigrid_sim_node"]


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("nth_import", [1, 2, 3, 5])
def test_a_ctrl_c_during_the_scripts_first_imports_ends_it_with_exit_0(name, nth_import):
    code = CTRL_C_AT_IMPORT.format(n=nth_import, script=str(REPO / "nodes" / name))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert "SIGINT at import of" in out, out  # the signal was sent while the script was importing
    assert done.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "[INFO]" not in out and "[ERROR]" not in out, out  # no node came up
    assert "loaded: []" in out, out  # ended at once: neither rclpy nor torch was loaded


def test_a_ctrl_c_while_the_node_loads_rclpy_and_torch_abandons_the_loading_with_exit_0():
    """Past the package's first modules the stop request raises while the node's modules load
    (seconds; over 10 s on a busy machine, past ros2 launch's SIGTERM and SIGKILL): exit 0 at once."""
    pytest.importorskip("rclpy")
    code = CTRL_C_AT_IMPORT.format(n=400, script=str(REPO / "nodes" / "kv_vla_node"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert "SIGINT at import of" in out, out
    assert done.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out and "[INFO]" not in out, out
    loaded = next(line for line in out.splitlines() if line.startswith("loaded:"))
    assert "'numpy'" in loaded, out  # the signal came while the heavy modules loaded, not before
    assert "'torch'" not in loaded, out  # and what was left to load was abandoned (torch comes after rclpy)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_through_a_pipe_is_printed_whole_before_the_script_exits(name):
    """The scripts end with os._exit (no interpreter teardown): what was printed must be flushed."""
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout a pipe: block-buffered
    done = subprocess.run([sys.executable, str(REPO / "nodes" / name), "--help"], capture_output=True, text=True,
                          timeout=60, env=buffered)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: ros2 run kv_vla_ros {name}"), done.stdout
    assert done.stdout.rstrip().endswith("Stop it with Ctrl-C (exit 0)."), done.stdout


def test_a_signal_recorded_by_the_script_is_taken_over_by_the_stop_request():
    code = ("import signal, sys; from kv_vla_ros.ros.signals import catch_stop_signals; "
            "stop = catch_stop_signals([signal.SIGINT]); "
            "print(stop.is_set(), stop.signals, signal.getsignal(signal.SIGINT) == stop._on_signal)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "1", "True"], done.stdout + done.stderr
