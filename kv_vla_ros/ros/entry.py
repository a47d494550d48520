"""What the node executables run (``nodes/``: ``ros2 run kv_vla_ros kv_vla_node``): the stop signals are caught
before rclpy, numpy or torch are imported (the scripts record them from their first line, see
`kv_vla_ros.ros.signals`), so a Ctrl-C in the first second of start-up ends the node cleanly
instead of printing the import's traceback; one that comes before the node is built ends it at
once (exit 0), without loading rclpy or torch. The scripts end through `end_process`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import NoReturn

from kv_vla_ros.ros.usage import asks_for_help

MAINS = {"kv_vla_node": "kv_vla_ros.ros.node.kv_vla_node",
         "minigrid_sim_node": "kv_vla_ros.ros.worlds.minigrid_sim_node",
         "arm_sim_node": "kv_vla_ros.ros.worlds.arm_sim_node"}


def run_node(name: str, received: Sequence[int] = ()) -> int:
    """The node ``name``'s ``main`` with the process's stop request; ``received``: the stop signals
    its script recorded before this module could be imported."""
    from kv_vla_ros.ros.signals import StopDuringLoad, catch_stop_signals, ignore_stop_signals

    stop = catch_stop_signals(received)
    if asks_for_help(name):
        return 0
    try:
        with stop.interrupting():  # rclpy, numpy, torch: seconds; a Ctrl-C abandons them
            main: Callable[..., int] = import_module(MAINS[name]).main
    except StopDuringLoad:
        ignore_stop_signals()  # stopped before the node was built: nothing to shut down (see signals.py)
        return 0
    return main(stop=stop)


def end_process(code: int) -> NoReturn:
    """End the process with ``code`` once ``main`` has returned (the node destroyed, rclpy shut
    down and its logging finalized), skipping the interpreter's teardown: with torch, transformers
    and rclpy loaded that is seconds of garbage collection over every module on a busy 2-core
    machine (5-8 s measured after "finalized: model freed, exiting"), past the 5 s that `ros2
    launch` waits after SIGINT: it logged "[ERROR] ... failed to terminate '5' seconds after
    receiving 'SIGINT', escalating to 'SIGTERM'" at Ctrl-C. The nodes write no files."""
    if "logging" in sys.modules:  # transformers' and torch's handlers (stderr)
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code)


def kv_vla_node(received: Sequence[int] = ()) -> int:
    return run_node("kv_vla_node", received)


def minigrid_sim_node(received: Sequence[int] = ()) -> int:
    return run_node("minigrid_sim_node", received)


def arm_sim_node(received: Sequence[int] = ()) -> int:
    return run_node("arm_sim_node", received)


__all__ = ["MAINS", "run_node", "end_process", "kv_vla_node", "minigrid_sim_node", "arm_sim_node"]
