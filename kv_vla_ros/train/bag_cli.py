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
                        ("episodes_per_step", args.episodes_per_step), ("log_every", args.log_every)):
        if value is not None:
            setattr(cfg, name, value)
    if args.pi0_model:
        cfg.model = {k: {**cfg.model.get(k, {}), **v} for k, v in {**cfg.model, **args.pi0_model}.items()}
    for name in ("chunk_size", "actions_per_inference", "episodes_per_step", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(cfg, name)}")
    return cfg


def data_parallel(args: argparse.Namespace) -> bool:
    """Whether ``--workers``/``--ray-address`` ask for Ray workers (else today's in-process run);
    ``ValueError`` naming a bad value."""
    workers, address = getattr(args, "workers", None), getattr(args, "ray_address", None)
    if workers is not None and (workers < 1):
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    if address is not None and not address.strip():
        raise ValueError("--ray-address: empty; give HOST:PORT or leave it out")
    if getattr(args, "cache_episodes", 1) < 1:
        raise ValueError(f"--cache-episodes: must be >= 1, got {args.cache_episodes}")
    return bool(address) or (workers or 1) > 1


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
    if data_parallel(args):
        return run_bags_parallel(args, cfg, size, base)
    data = read_bag_data(args, size, policy=base)
    cfg.state_names, cfg.action_names = data.info.get("state_names"), data.info.get("action_names")
    cfg.control_rate_hz = data.info.get("control_rate_hz")
    train_pi0(cfg, data.episodes, args.out, resume=args.resume, progress_bar=not args.no_progress)
    return 0


def run_bags_parallel(args: argparse.Namespace, cfg, image_size: int | None, policy=None) -> int:
    """``--workers N`` / ``--ray-address``: π0 trained data-parallel (``kv_vla_ros.train.pi0_parallel``).
    The bags are read with the same topics and rule as one process (``policy``: the checkpoint trained
    on, whose joint names and rate apply); the names and rate a recording declares are not yet
    written into the checkpoint on this path (they are on the one-process path)."""
    import json
    from pathlib import Path

    from kv_vla_ros.data.bagio import bag_paths
    from kv_vla_ros.parallel.data_parallel import WorkerFailed, run_data_parallel
    from kv_vla_ros.parallel.runner import RunnerConfig
    from kv_vla_ros.train.pi0_parallel import log_progress, train_worker

    bags = [str(p.resolve()) for p in bag_paths(args.bags)]
    out = Path(args.out).resolve()
    if args.resume and not (out / "checkpoint" / "train_state.json").is_file():
        raise ValueError(f"--resume: no checkpoint in {out / 'checkpoint'}")
    out.mkdir(parents=True, exist_ok=True)
    poll = log_progress(out, cfg.max_steps, not args.no_progress)
    work = (cfg, bags, bag_topics(args, policy), image_size, args.control_rate_hz, str(out), args.resume,
            args.cache_episodes)
    try:
        placement: list = []
        ranks = run_data_parallel(train_worker, work, RunnerConfig(workers=args.workers, ray_address=args.ray_address),
                                  threads=cfg.threads, poll=poll, placement=placement)
    except WorkerFailed as exc:
        print(f"kv-vla train: error: {exc}; continue from the last checkpoint with --resume", file=sys.stderr,
              flush=True)
        return 1
    finally:
        poll.close()
    for line in ranks[0]["refused"]:
        print(f"refused: {line}", file=sys.stderr, flush=True)
    for rank, (pid, node) in zip(ranks, placement):
        rank.update(pid=pid, node=node)
    (out / "train_workers.json").write_text(json.dumps(ranks, indent=1) + "\n")
    print(f"{ranks[0]['episodes']} episodes, {ranks[0]['steps']} steps from {len(args.bags)} path(s); "
          f"{len(ranks[0]['refused'])} bag(s) refused; {len(ranks)} workers, peak memory per worker "
          f"{max(r['peak_rss_mb'] for r in ranks):.0f} MiB; π0 written to {out}", flush=True)
    return 0


__all__ = ["add_bag_topic_arguments", "bag_topics", "data_parallel", "read_bag_data", "run_bags", "run_bags_parallel",
           "train_config"]
