"""The command-line flags that name a recording's topics and how it is resampled, shared by
``kv-vla train --bags``, ``kv-vla train-gate --bags``, ``kv-vla bag eval`` and ``kv-vla bag inspect``,
and the `BagTopics` they make."""

from __future__ import annotations

import argparse


def add_recording_arguments(group, action_help: str = "commanded actions") -> None:
    """The flags of a robot's recording (shared by train --bags, bag eval and bag inspect)."""
    group.add_argument("--action-topic", action="append", default=None,
                       help=f"{action_help} (default /action): Float64/Float32MultiArray, JointTrajectory, "
                            "Twist(Stamped) or JointState; repeat to concatenate several topics in this order")
    group.add_argument("--reset-topic", default=None, help="split episodes at messages here instead of at instructions")
    group.add_argument("--instruction", default=None, metavar="TEXT",
                       help="every episode's instruction when a bag has no instruction topic (one episode per bag, "
                            "split at gaps)")
    group.add_argument("--control-rate-hz", type=float, default=None,
                       help="resample a robot's recording to this rate (default: the checkpoint's trained rate, else "
                            "the command topic's measured rate); a lockstep bag: keep one frame per period")
    group.add_argument("--max-age-s", type=float, default=None,
                       help="oldest camera frame or state a control tick takes (default: 1.5 x the larger of the "
                            "control period and the input's median interval)")
    group.add_argument("--gap-periods", type=float, default=5.0,
                       help="a camera gap longer than this many control periods splits an episode")


def bag_topics(args: argparse.Namespace, policy=None, **extra):
    """``BagTopics`` from the flags (``kv-vla bag eval``'s names and defaults); ``policy``: a
    checkpoint whose recorded state joint names and control rate apply."""
    from kv_vla_ros.data.bagio import normalize_topic
    from kv_vla_ros.data.episodes import BagTopics

    images = [normalize_topic(t, "--image-topic") for t in (args.image_topic or ["/image"])]
    actions = [normalize_topic(t, "--action-topic") for t in (args.action_topic or ["/action"]) if t]
    if len(set(actions)) != len(actions):
        raise ValueError("--action-topic: the same topic is given twice")
    for name in ("control_rate_hz", "max_age_s"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be > 0, got {value}")
    if not getattr(args, "gap_periods", 5.0) >= 1:
        raise ValueError(f"--gap-periods: must be >= 1, got {args.gap_periods}")
    if args.instruction is not None and not args.instruction.strip():
        raise ValueError("--instruction: empty text")
    names = getattr(policy, "state_names", None)
    return BagTopics(image=images[0], extra_images=tuple(images[1:]),
                     state=normalize_topic(args.state_topic, "--state-topic") if args.state_topic else None,
                     instruction=normalize_topic(args.instruction_topic, "--instruction-topic"),
                     action=actions[0] if actions else None, extra_actions=tuple(actions[1:]),
                     reset=normalize_topic(args.reset_topic, "--reset-topic") if args.reset_topic else None,
                     instruction_text=args.instruction, control_rate_hz=args.control_rate_hz,
                     default_rate_hz=getattr(policy, "control_rate_hz", None),
                     state_names=tuple(names) if names else None, max_age_s=args.max_age_s,
                     gap_periods=args.gap_periods, **extra)


__all__ = ["add_recording_arguments", "bag_topics"]
