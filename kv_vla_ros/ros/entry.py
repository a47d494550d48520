"""What the node executables run (``nodes/``: ``ros2 run kv_vla_ros kv_vla_node``): the stop signals are caught
before rclpy, numpy or torch are imported, so a Ctrl-C in the first second of start-up ends the
node cleanly instead of printing the import's traceback."""

from __future__ import annotations

from kv_vla_ros.ros.usage import asks_for_help


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


__all__ = ["kv_vla_node", "minigrid_sim_node", "arm_sim_node"]
