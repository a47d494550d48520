"""What ``--help`` on a node executable prints (before rclpy is imported; it starts no node)."""

from __future__ import annotations

import sys

HELP = """usage: ros2 run kv_vla_ros {name} [--ros-args -p NAME:=VALUE ... --params-file FILE]

{what}

Parameters: `ros2 param describe /{name} <name>` on the running node, or docs/ros.md
(the policy node's table, generated from its settings). Stop it with Ctrl-C (exit 0).
"""

WHAT = {
    "kv_vla_node": "A VLA policy as a ROS 2 lifecycle node: camera frames and an instruction in, action commands "
                   "out at a fixed\ncontrol rate, over a bounded, RNN-gated chunked KV cache.",
    "minigrid_sim_node": "A MiniGrid / BabyAI level as a camera robot (image, instruction out; action in).",
    "arm_sim_node": "The robot-arm memory task (a Franka Panda in PyBullet) as a camera + joint-state robot.",
}


def asks_for_help(name: str, argv: list[str] | None = None) -> bool:
    """``--help`` / ``-h`` before ``--ros-args``: print what the node is and how to set its
    parameters, without starting it (a ROS user's first try; it used to start the node)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argv[:argv.index("--ros-args")] if "--ros-args" in argv else argv
    if "--help" in own or "-h" in own:
        print(HELP.format(name=name, what=WHAT[name]))
        return True
    return False


__all__ = ["asks_for_help"]
