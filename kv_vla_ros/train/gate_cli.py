"""``kv-vla train-gate``: the chunk gate with the policy frozen, from simulator rollouts of the
package's own VLA (``gate_train``) or, with ``--bags``, for a π0 checkpoint from recorded bags only
(``pi0_gate``: keep-alone values teacher-forced on the bags' episodes, no simulator)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kv_vla_ros.data.errors import cli_errors
from kv_vla_ros.train import gate_train


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.train.bag_cli import add_bag_topic_arguments

    gate_train.configure(parser)
    bags = parser.add_argument_group("a π0 checkpoint's gate from recorded bags (--bags; target: value)")
    bags.add_argument("--bags", nargs="+", default=None, metavar="BAG",
                      help="rosbag2 bags or directories of bags: keep-alone values teacher-forced on their episodes "
                           "(no simulator); --model is then a π0 checkpoint; the values are spread over --workers "
                           "(default 1 with --bags) or --ray-address")
    bags.add_argument("--max-episodes", type=int, default=None, help="use at most this many episodes of the bags")
    add_bag_topic_arguments(bags)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.bags:
        return run_bags(args)
    return gate_train.run(args)


@cli_errors("train-gate")
def run_bags(args: argparse.Namespace) -> int:
    """``--bags``: the gate of a π0 checkpoint from keep-alone values on the bags' episodes."""
    import torch

    from kv_vla_ros.parallel.runner import RunnerConfig
    from kv_vla_ros.train.bag_cli import read_bag_data
    from kv_vla_ros.train.pi0_gate import train_gate_from_bags
    from kv_vla_ros.vla import load_policy

    for name in ("epochs", "hidden", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}: must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    policy = load_policy(args.model, dtype="float32")
    if policy.model_type != "pi0":
        raise ValueError(f"--model: --bags trains the gate of a π0 checkpoint, {args.model} is {policy.model_type}")
    data = read_bag_data(args, policy.image_size, policy=policy)
    episodes = data.episodes[: args.max_episodes] if args.max_episodes else data.episodes
    recent = policy.default_cache_config().recent_chunks if args.recent_chunks is None else args.recent_chunks
    # --bags: in-process unless --workers/--ray-address ask for more (the default path stays one process)
    workers = args.workers if args.workers is not None or args.ray_address else 1
    runner = RunnerConfig(workers=workers, ray_address=args.ray_address, progress=not args.no_progress)
    gate, log = train_gate_from_bags(policy, episodes, recent, args.epochs, args.lr, args.hidden, args.seed,
                                     progress=not args.no_progress, runner=runner, model_path=str(args.model))
    out = Path(args.out or args.model)
    path = gate.save(str(out))
    log.update(seconds=time.time() - t0, bags=[str(b) for b in args.bags], episodes=len(episodes),
               refused=data.refused, recent_chunks=recent,
               target="value of keeping the chunk alone (flow-matching loss gain over the window, percentile), BCE")
    (out / "gate_training.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"gate (value, from {len(episodes)} recorded episodes): {log['parameters']} parameters, val loss "
          f"{log['val_loss'][0]:.4f} -> {log['val_loss'][-1]:.4f}; wrote {path}")
    return 0


__all__ = ["configure", "run", "run_bags"]
