"""The node executables as a ROS user first meets them: ``--help`` explains and does not start the
node; a parameter out of its range ends the node with one line naming it, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

NODES = {"kv_vla_node": "kv_vla_ros.ros.node.kv_vla_node",
         "minigrid_sim_node": "kv_vla_ros.ros.worlds.minigrid_sim_node",
         "arm_sim_node": "kv_vla_ros.ros.worlds.arm_sim_node"}


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(NODES))
def test_help_explains_the_node_without_starting_it(name):
    done = _run(NODES[name], "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: ros2 run kv_vla_ros {name}"), done.stdout
    assert "ros2 param describe" in done.stdout
    assert "[INFO]" not in done.stdout + done.stderr  # no node came up


@pytest.mark.parametrize("name, param", [("arm_sim_node", "episodes:=-1"), ("minigrid_sim_node", "max_steps:=-5")])
def test_a_parameter_out_of_range_is_one_line_naming_it(name, param):
    done = _run(NODES[name], "--ros-args", "-p", param)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out, out
    assert param.split(":=")[0] in out and "out of range" in out, out
