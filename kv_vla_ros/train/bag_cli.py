"""``kv-vla train --bags``: bags -> episodes -> π0 trained with a streamed, budgeted history (the
package's own VLA from bags, ``--policy-type kv_vla``: ``kv_vla_ros.train.own_bags``)."""

from __future__ import annotations

import argparse
import sys

from kv_vla_ros.data.errors import cli_errors
from kv_vla_ros.data.topic_flags import add_recording_arguments, bag_topics


def add_bag_topic_arguments(group) -> None:
    """The topic flags of a bag-reading command, with ``kv-vla bag eval``'s names and defaults."""
    group.add_argument("--image-topic", action="append", default=None,
                       help="camera topic, Image or CompressedImage (default /image; repeat per camera, in order)")
    group.add_argument("--state-topic", default=None, help="JointState (positions) or Float32MultiArray state topic")
    group.add_argument("--instruction-topic", default="/instruction",
                       help="std_msgs/String; each message starts an episode")
    add_recording_arguments(group)


def read_bag_data(args: argparse.Namespace, image_size: int | None = None, check=None, policy=None):
    """``BagDataset`` of ``args.bags`` (refusals printed, one line each, on stderr; ``check``: see
    ``read_bags``; ``policy``: the checkpoint trained on, whose joint names and rate apply)."""
    from kv_vla_ros.data.bagio import bag_paths
    from kv_vla_ros.train.bag_episodes import read_bags

    data = read_bags(bag_paths(args.bags), bag_topics(args, policy), image_size=image_size,
                     control_rate_hz=args.control_rate_hz, progress=not args.no_progress,
                     log=lambda line: print(line, file=sys.stderr, flush=True), check=check)
    steps = sum(len(e) for e in data.episodes)
    print(f"{len(data.episodes)} episodes, {steps} steps from {len(args.bags)} path(s); "
          f"{len(data.refused)} bag(s) refused", flush=True)
    return data


def train_config(args: argparse.Namespace):
    from kv_vla_ros.train.pi0_train import PI0TrainConfig

    cfg = PI0TrainConfig(minutes=args.minutes, max_steps=args.max_steps, seed=args.seed, threads=args.threads,
                         checkpoint_minutes=args.checkpoint_minutes)
    for name, value in (("lr", args.lr), ("aux_weight", args.aux_weight), ("evict_prob", args.evict_prob),
                        ("evict_from", args.evict_from), ("evict_held_chunks", args.evict_held_chunks),
                        ("init_from", args.init_from), ("chunk_size", args.chunk_size),
                        ("actions_per_inference", args.actions_per_inference),
                        ("episodes_per_step", args.episodes_per_step)):
        if value is not None:
            setattr(cfg, name, value)
    if args.pi0_model:
        cfg.model = {k: {**cfg.model.get(k, {}), **v} for k, v in {**cfg.model, **args.pi0_model}.items()}
    for name in ("chunk_size", "actions_per_inference", "episodes_per_step"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(cfg, name)}")
    return cfg


@cli_errors("train")
def run_bags(args: argparse.Namespace) -> int:
    from kv_vla_ros.train.pi0_train import train_pi0

    cfg = train_config(args)
    size = base = None
    if cfg.init_from:
        from kv_vla_ros.vla import load_policy
        from kv_vla_ros.vla.pi0.processing import load_processor

        size = load_processor(cfg.init_from).image_processor.size.get("max_height")
        base = load_policy(cfg.init_from)
    data = read_bag_data(args, size, policy=base)
    cfg.state_names, cfg.action_names = data.info.get("state_names"), data.info.get("action_names")
    cfg.control_rate_hz = data.info.get("control_rate_hz")
    train_pi0(cfg, data.episodes, args.out, resume=args.resume, progress_bar=not args.no_progress)
    return 0


__all__ = ["add_bag_topic_arguments", "bag_topics", "read_bag_data", "run_bags", "train_config"]
