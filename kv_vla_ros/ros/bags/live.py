"""rclpy helpers shared by ``record`` and ``play`` (the only bag modules that import rclpy):
message classes from type names, QoS between rclpy and the rosbag2 metadata, SIGINT handling."""

from __future__ import annotations

import importlib
import signal
import threading

import rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from kv_vla_ros.data.errors import BagError


def message_class(msgtype: str):
    """``sensor_msgs/msg/Image`` -> the rclpy message class; `BagError` if its package is missing."""
    package, _, name = msgtype.replace("/msg/", "/").partition("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        raise BagError(f"unknown message type {msgtype}: its Python package {package} is not installed") from None


def adapted_qos(publisher_infos) -> QoSProfile:
    """A subscription QoS that matches every publisher (rosbag2's rule): reliable only if all
    offer reliable, transient-local only if all offer it (so a latched instruction is caught)."""
    profiles = [info.qos_profile for info in publisher_infos]
    reliable = bool(profiles) and all(p.reliability == ReliabilityPolicy.RELIABLE for p in profiles)
    latched = bool(profiles) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


_ZERO = QosTime(0, 0)


def to_bag_qos(profile: QoSProfile) -> Qos:
    """A publisher's offered QoS as rosbag2 metadata (so ``play`` can offer it again)."""
    reliable = profile.reliability == ReliabilityPolicy.RELIABLE
    latched = profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    return Qos(QosHistory.KEEP_LAST, int(profile.depth),
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
               _ZERO, _ZERO, QosLiveliness.AUTOMATIC, _ZERO, False)


def from_bag_qos(offered: list, msgtype: str) -> QoSProfile:
    """The publisher QoS for playback: the recorded offer when the bag has one; else reliable, and
    transient-local for String topics (an instruction must reach a node that starts later)."""
    reliable, latched = True, msgtype == "std_msgs/msg/String"
    if offered:
        reliable = all(q.reliability != QosReliability.BEST_EFFORT for q in offered)
        latched = all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10 if not latched else 1,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class StopFlag:
    """Set by SIGINT/SIGTERM so the loop finishes the bag cleanly instead of dying mid-write."""

    def __init__(self):
        self.event = threading.Event()
        self.signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.signal = signum
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()


def init_ros(node_name: str):
    """rclpy without its own signal handlers (ours finish the bag first); returns the node."""
    from rclpy.signals import SignalHandlerOptions

    # args: not sys.argv, whose "--remap a:=b" rcl would take for its own (deprecated) remap rule
    rclpy.init(args=["kv-vla"], signal_handler_options=SignalHandlerOptions.NO)
    return rclpy.create_node(node_name)


def shutdown_ros(node) -> None:
    try:
        node.destroy_node()
    finally:
        if rclpy.ok():
            rclpy.shutdown()


__all__ = ["message_class", "adapted_qos", "to_bag_qos", "from_bag_qos", "StopFlag", "init_ros", "shutdown_ros"]
