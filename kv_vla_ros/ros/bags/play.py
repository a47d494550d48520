"""Publish a bag onto live topics with its original timing: each message's serialized CDR goes
out as-is (rclpy publishes raw bytes), at its bag timestamp scaled by ``--rate``.

QoS: the recorded publisher offer when the bag has one, else reliable (transient-local for String
topics, so an instruction reaches a node that subscribes late). Ctrl-C stops cleanly.
"""

from __future__ import annotations

import argparse
import time

from kv_vla_ros.data.bagio import BagReader, normalize_topic
from kv_vla_ros.data.errors import BagError, cli_errors


def parse_remaps(items: list[str]) -> dict[str, str]:
    """``["image:=/camera/image"]`` -> ``{"/image": "/camera/image"}``."""
    out = {}
    for item in items or []:
        old, sep, new = item.partition(":=")
        if not sep:
            raise ValueError(f"--remap: expected OLD:=NEW, got {item!r}")
        out[normalize_topic(old, "--remap")] = normalize_topic(new, "--remap")
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 directory (sqlite3 or mcap), or a single .db3/.mcap file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--loop", action="store_true", help="start over at the end")
    parser.add_argument("--start-offset", type=float, default=0.0, help="skip the first seconds of the bag")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD:=NEW", help="rename a topic")
    parser.add_argument("--topics", nargs="+", default=None, help="play only these topics")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds between creating the publishers and the first message (discovery)")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="TIMEOUT",
                        help="before playing, wait up to TIMEOUT seconds until every topic has a subscriber")


def play_once(node, bag: BagReader, publishers: dict, rate: float, start_ns: int, stop) -> int:
    """One pass over the bag from ``start_ns``; returns the messages published."""
    wall0, bag0, sent = time.monotonic(), None, 0
    for conn, stamp, raw in bag.raw_messages(list(publishers), start=start_ns):
        bag0 = stamp if bag0 is None else bag0
        due = wall0 + (stamp - bag0) / 1e9 / rate
        while not stop and (wait := due - time.monotonic()) > 0:
            time.sleep(min(wait, 0.05))
        if stop:
            break
        publishers[conn.topic].publish(bytes(raw))
        sent += 1
    return sent


@cli_errors("bag play")
def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.ros.bags.live import StopFlag, from_bag_qos, init_ros, message_class, shutdown_ros

    if not args.rate > 0:
        raise ValueError(f"--rate: must be > 0, got {args.rate}")
    if args.start_offset < 0 or args.delay < 0:
        raise ValueError("--start-offset/--delay: must be >= 0")
    remaps = parse_remaps(args.remap)
    wanted = None if args.topics is None else [normalize_topic(t, "--topics") for t in args.topics]
    with BagReader(args.bag) as bag:
        if bag.message_count == 0:
            raise BagError(f"bag {bag.path}: the bag is empty (no messages)")
        for topic in wanted or []:
            bag.require_topic(topic)
        classes = {}
        for conn in bag.connections:
            if (wanted is None or conn.topic in wanted) and conn.topic not in classes:
                classes[conn.topic] = (message_class(conn.msgtype), conn)
        stop = StopFlag()
        node = init_ros("kv_vla_bag_player")
        try:
            publishers = {topic: node.create_publisher(cls, remaps.get(topic, topic),
                                                       from_bag_qos(conn.ext.offered_qos_profiles, conn.msgtype))
                          for topic, (cls, conn) in classes.items()}
            for old, new in remaps.items():
                if old not in publishers:
                    raise BagError(f"--remap {old}:={new}: the bag has no topic {old}")
            if args.wait_for_subscribers > 0:
                deadline = time.monotonic() + args.wait_for_subscribers
                while not stop and time.monotonic() < deadline and \
                        not all(p.get_subscription_count() for p in publishers.values()):
                    time.sleep(0.05)
            stop.event.wait(args.delay)
            start_ns = bag.start_time + int(args.start_offset * 1e9)
            total = 0
            while not stop:
                sent = play_once(node, bag, publishers, args.rate, start_ns, stop)
                total += sent
                if not args.loop or not sent:  # an offset past the end would loop on nothing
                    break
            time.sleep(0.2)  # let reliable writers hand the last messages to DDS before teardown
        finally:
            shutdown_ros(node)
    print(f"published {total} messages from {args.bag}" + (" (stopped)" if stop else ""), flush=True)
    return 0


__all__ = ["parse_remaps", "play_once", "configure", "run"]
