"""Record live topics into a bag: rclpy generic subscriptions (``raw=True``) store each message's
serialized CDR as received, stamped with the receive time, types discovered from the graph.

Topics are subscribed as they appear (the graph is polled every ``--discovery-period`` seconds),
with a QoS adapted to their publishers, so a latched instruction published before the recorder
started is still recorded. Ctrl-C / SIGINT / SIGTERM or ``--duration`` finishes the bag cleanly;
an error leaves no bag at the output path.
"""

from __future__ import annotations

import argparse
import sys
import time

from kv_vla_ros.data.bagio import STORAGES, AtomicBagWriter, normalize_topic
from kv_vla_ros.data.errors import BagError, cli_errors

DEFAULT_TOPICS = ["/image", "/instruction", "/action", "/cmd_vel"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                        help=f"topics to record (default: {' '.join(DEFAULT_TOPICS)})")
    parser.add_argument("--all", action="store_true", help="record every topic of the graph")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="sqlite3")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    parser.add_argument("--discovery-period", type=float, default=0.2, help="seconds between graph polls")


class Recorder:
    """Subscribes wanted topics as they appear and writes what arrives into ``writer``."""

    def __init__(self, node, writer: AtomicBagWriter, topics: list[str] | None):
        self.node, self.writer, self.topics = node, writer, topics
        self.subscriptions: dict[str, object] = {}
        self.skipped: set[str] = set()

    def discover(self) -> None:
        from kv_vla_ros.ros.bags.live import adapted_qos, message_class, to_bag_qos

        for topic, types in self.node.get_topic_names_and_types():
            if topic in self.subscriptions or topic in self.skipped:
                continue
            if self.topics is not None and topic not in self.topics:
                continue
            if self.topics is None and topic in ("/rosout", "/parameter_events"):
                continue
            msgtype = types[0]
            if msgtype not in self.writer.typestore.types:
                if self.topics is not None:  # asked for by name: do not silently drop it
                    raise BagError(f"topic {topic}: unknown message type {msgtype} (no definition to store)")
                self.skipped.add(topic)
                self.node.get_logger().warning(f"{topic}: unknown message type {msgtype}, not recorded")
                continue
            cls = message_class(msgtype)
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:
                continue  # only a subscriber so far: wait for a publisher to adapt the QoS to
            qos = adapted_qos(infos)
            self.writer.add_connection(topic, msgtype, offered_qos_profiles=[to_bag_qos(i.qos_profile) for i in infos])
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, lambda data, t=topic: self._on_message(t, data), qos, raw=True)
            self.node.get_logger().info(f"recording {topic} ({msgtype})")

    def _on_message(self, topic: str, data: bytes) -> None:
        self.writer.write_raw(topic, self.node.get_clock().now().nanoseconds, data)


@cli_errors("bag record")
def run(args: argparse.Namespace) -> int:
    import rclpy

    from kv_vla_ros.ros.bags.live import StopFlag, init_ros, shutdown_ros

    if args.all and args.topics:
        raise ValueError("--all: give either --all or --topics, not both")
    if args.duration < 0 or args.discovery_period <= 0:
        raise ValueError("--duration/--discovery-period: must be >= 0 / > 0")
    topics = None if args.all else [normalize_topic(t, "--topics") for t in (args.topics or DEFAULT_TOPICS)]
    stop = StopFlag()
    node = init_ros("kv_vla_bag_recorder")
    writer = AtomicBagWriter(args.output, args.storage)
    try:
        recorder = Recorder(node, writer, topics)
        start = time.monotonic()
        next_poll = start
        print(f"recording {'all topics' if topics is None else ' '.join(topics)} into {args.output} "
              f"(Ctrl-C to stop)", flush=True)
        while not stop and (not args.duration or time.monotonic() - start < args.duration):
            if time.monotonic() >= next_poll:
                recorder.discover()
                next_poll = time.monotonic() + args.discovery_period
            rclpy.spin_once(node, timeout_sec=0.05)
        for sub in recorder.subscriptions.values():
            node.destroy_subscription(sub)
    except BaseException:
        writer.abort()
        shutdown_ros(node)
        raise
    path = writer.close()
    shutdown_ros(node)
    counts = ", ".join(f"{t} {n}" for t, n in sorted(writer.counts.items())) or "nothing"
    print(f"wrote {path} ({args.storage}): {counts}", flush=True)
    missing = [t for t in (topics or []) if t not in writer.counts]
    if missing:
        print(f"kv-vla bag record: warning: never saw {', '.join(missing)}", file=sys.stderr, flush=True)
    return 0


__all__ = ["Recorder", "configure", "run", "DEFAULT_TOPICS"]
