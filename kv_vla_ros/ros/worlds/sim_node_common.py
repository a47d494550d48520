"""What the simulator nodes (`minigrid_sim_node`, `arm_sim_node`) share: their QoS, read-only
parameter descriptors, view stamps, the episode result message, and the spin loop that ends a
node cleanly on its last episode or a stop signal."""

from __future__ import annotations

import json
import sys

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

from kv_vla_ros.ros.signals import catch_stop_signals, ignore_stop_signals
from kv_vla_ros.ros.usage import asks_for_help

LATCHED = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
# Every episode result stays available to a late subscriber (the demo's monitor).
RESULTS_QOS = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


def read_only_descriptor(text: str, int_range=None, float_range=None) -> ParameterDescriptor:
    d = ParameterDescriptor(description=text, read_only=True)
    if int_range:
        d.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=0)]
    if float_range:
        d.floating_point_range = [FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)]
    return d


def next_view_stamp(clock, previous):
    """The stamp of a new view: now, or 1 ns after ``previous`` (stamps must differ between views,
    even within one clock tick)."""
    now = clock.now().to_msg()
    if previous is not None and (now.sec, now.nanosec) <= (previous.sec, previous.nanosec):
        now.sec, now.nanosec = previous.sec, previous.nanosec + 1
    return now


def report_episode(node, record: dict, detail: str = "") -> None:
    """A simulator node's finished episode: ``record`` out on ``~/episode`` and in the log (with
    ``detail``), then the next episode starts, or the node is finished after ``episodes``."""
    node.results.append(record)
    node.episode_pub.publish(String(data=json.dumps(record)))
    rate = sum(r["success"] for r in node.results) / len(node.results)
    node.get_logger().info(f"episode {node.episode_index + 1}: {'success' if record['success'] else 'failure'} in "
                           f"{record['steps']} steps{detail} (success so far {rate:.0%})")
    node.episode_index += 1
    if node.episodes and node.episode_index >= node.episodes:
        node.finished = True
        node.get_logger().info(f"done: {node.episode_index} episodes, success rate {rate:.1%}")
    else:
        node._start_episode()


def run_sim_node(make_node, argv: list[str] | None = None, stop=None) -> int:
    """Spin a simulator node (``make_node()``; it has ``finished``, ``episode_pub`` and
    ``robot``) until it has run its episodes or a stop signal came (any number of them, at any
    moment: exit 0, no traceback; see kv_vla_ros.ros.signals); then let its results drain."""
    stop = stop or catch_stop_signals()
    if asks_for_help(make_node.NODE_NAME, argv[1:] if argv is not None else None):
        return 0
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        try:
            node = make_node()
        except (ValueError, ParameterException) as exc:  # a parameter out of its range, a bad task id
            rclpy.logging.get_logger(make_node.NODE_NAME).error(f"cannot start: {exc}")
            return 1
        while rclpy.ok() and not node.finished and not stop.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
        if node.finished and not stop.is_set():  # let the last results and their late subscribers drain
            # reliable results: first until every matched subscriber (the demo's monitor) has them
            node.episode_pub.wait_for_all_acked(Duration(seconds=5.0))
            end = node.get_clock().now().nanoseconds + int(1e9)
            while rclpy.ok() and node.get_clock().now().nanoseconds < end and not stop.is_set():
                rclpy.spin_once(node, timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        if node is not None:
            node.robot.close()
            node.destroy_node()
        rclpy.try_shutdown()
        ignore_stop_signals()
    return 0


__all__ = ["LATCHED", "RESULTS_QOS", "read_only_descriptor", "next_view_stamp", "report_episode", "run_sim_node"]
