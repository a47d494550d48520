"""Console scripts of the nodes (``ros2 run kv_vla_ros kv_vla_node``): the stop signals are caught
before rclpy, numpy or torch are imported, so a Ctrl-C in the first second of start-up ends the
node cleanly instead of printing the import's traceback."""

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


def kv_vla_node() -> int:
    from kv_vla_ros.ros.signals import catch_stop_signals

    stop = catch_stop_signals()
    if asks_for_help("kv_vla_node"):
        return 0
    from kv_vla_ros.ros.node.kv_vla_node import main

    return main(stop=stop)


def minigrid_sim_node() -> int:
    from kv_vla_ros.ros.signals import catch_stop_signals

    stop = catch_stop_signals()
    if asks_for_help("minigrid_sim_node"):
        return 0
    from kv_vla_ros.ros.worlds.minigrid_sim_node import main

    return main(stop=stop)


def arm_sim_node() -> int:
    from kv_vla_ros.ros.signals import catch_stop_signals

    stop = catch_stop_signals()
    if asks_for_help("arm_sim_node"):
        return 0
    from kv_vla_ros.ros.worlds.arm_sim_node import main

    return main(stop=stop)


__all__ = ["kv_vla_node", "minigrid_sim_node", "arm_sim_node", "asks_for_help"]
