"""Behaviour-clone the VLA on expert demonstrations (MiniGrid Memory + BabyAI mixture), with
DAgger rounds, periodic checkpoints and a wall-clock cap; or, with ``--bags``, train π0 from
recorded rosbags to use a streamed, budgeted history (``kv_vla_ros.train.pi0_train``), or with
``--bags --policy-type kv_vla`` the package's own VLA on bags of discrete (or binned) actions
(``kv_vla_ros.train.own_bags``, the same loop as the simulator's demonstrations)."""

from __future__ import annotations

import argparse
import json

from kv_vla_ros.data.errors import cli_errors


# Flags of the package's own VLA that π0 from bags has no use for, with their defaults: given with
# --bags (π0) they are refused by name rather than silently ignored.
OWN_VLA_ONLY = (("--backbone", "backbone", None), ("--vla", "vla", None), ("--batch-tokens", "batch_tokens", 8192),
                ("--focal-gamma", "focal_gamma", 2.0), ("--scan-turns", "scan_turns", None),
                ("--dagger-at", "dagger_at", None), ("--dagger-episodes", "dagger_episodes", None),
                ("--dagger-tasks", "dagger_tasks", None), ("--data-dir", "data_dir", "runs/data"))
DEFAULTS = {name: default for _, name, default in OWN_VLA_ONLY}


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.train.bc import DEFAULT_TASKS

    parser.add_argument("--out", required=True, help="output directory (model + checkpoint/ + logs)")
    parser.add_argument("--minutes", type=float, default=55.0, help="wall-clock cap, data generation included")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--tasks", nargs="+", metavar="TASK=N",
                        default=[f"{t}={n}" for t, n in DEFAULT_TASKS.items()],
                        help="tasks and demonstration counts (train seeds 0..N-1)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3; --bags with π0: 2e-3)")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULTS["batch_tokens"])
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scan-turns", type=int, default=None, help="Memory expert start-room scan turns")
    parser.add_argument("--backbone", type=json.loads, default=None,
                        help='backbone overrides as JSON, e.g. \'{"hidden_size": 192}\'')
    parser.add_argument("--vla", type=json.loads, default=None,
                        help='other VLAConfig fields as JSON, e.g. \'{"vision_frame_context": false}\'')
    parser.add_argument("--dagger-at", type=float, nargs="*", default=None,
                        help="progress points (0..1) of DAgger rounds; none to disable")
    parser.add_argument("--dagger-episodes", type=int, default=None, help="episodes per task per DAgger round")
    parser.add_argument("--dagger-tasks", nargs="*", default=None,
                        help="tasks of DAgger rounds (default: BabyAI-GoToLocal)")
    parser.add_argument("--focal-gamma", type=float, default=DEFAULTS["focal_gamma"],
                        help="focal-loss exponent (0: plain CE)")
    parser.add_argument("--aux-weight", type=float, default=None,
                        help="weight of the auxiliary-target loss (default 1; privileged labels, e.g. the Memory cue; "
                             "--bags with π0: where the episode ends up, the mean command over its last quarter, "
                             "from the bags only); 0: off")
    parser.add_argument("--evict-prob", type=float, default=None,
                        help="share of episodes trained under a random eviction mask (0: whole histories only)")
    parser.add_argument("--evict-from", type=float, default=None,
                        help="progress (0..1) from which eviction training starts")
    parser.add_argument("--evict-held-chunks", type=int, nargs="+", default=None,
                        help="old-chunk budgets drawn for eviction training")
    parser.add_argument("--init-from", default=None,
                        help="start from this model's weights (fine-tuning) instead of a new model")
    parser.add_argument("--data-dir", default=DEFAULTS["data_dir"], help="cache of expert demonstrations (.npz)")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--log-every", type=int, default=None,
                        help="optimizer steps between train_log.jsonl lines (default 20; --bags with π0: 10)")
    parser.add_argument("--no-progress", action="store_true")
    bags = parser.add_argument_group("training from recorded bags (--bags)")
    bags.add_argument("--workers", type=int, default=None,
                      help="data-parallel training processes (Ray workers, gradients summed, one global batch; "
                           "default 1: in-process, no Ray; with --ray-address: the cluster's CPUs); each uses "
                           "--threads torch threads")
    bags.add_argument("--ray-address", default=None, metavar="ADDR",
                      help="train on a running Ray cluster (HEAD_IP:6379 from `ray start --head`); --out and the "
                           "bags must be paths every node sees")
    bags.add_argument("--cache-episodes", type=int, default=64,
                      help="π0 with --workers > 1: decoded episodes each worker keeps (its memory bound)")
    bags.add_argument("--bags", nargs="+", default=None, metavar="BAG",
                      help="rosbag2 bags (sqlite3 or mcap) or directories of bags: train a policy on their episodes")
    bags.add_argument("--policy-type", choices=("pi0", "kv_vla"), default=None,
                      help="the policy trained from --bags: pi0, or kv_vla (the package's own VLA; bags of discrete "
                           "action ids, or binned ones with --action-bins); default: --init-from's checkpoint "
                           "type, else pi0")
    bags.add_argument("--action-bins", type=int, default=None,
                      help="kv_vla from bags of continuous actions: a new model's bins per action dimension "
                           "(over the bags' 1st-99th percentiles); default: discrete action ids")
    from kv_vla_ros.train.bag_cli import add_bag_topic_arguments

    add_bag_topic_arguments(bags)
    bags.add_argument("--chunk-size", type=int, default=None, help="π0 actions per predicted chunk (default 10)")
    bags.add_argument("--actions-per-inference", type=int, default=None,
                      help="control steps between inferences: one stream block each (default 5)")
    bags.add_argument("--episodes-per-step", type=int, default=None, help="episodes per optimizer step (default 4)")
    bags.add_argument("--pi0-model", type=json.loads, default=None,
                      help='π0 config sections from scratch as JSON, e.g. \'{"text": {"num_hidden_layers": 4}}\'')


def parse_tasks(items: list[str]) -> dict[str, int]:
    from kv_vla_ros.sim import normalize_task

    tasks = {}
    for item in items:
        name, _, n = item.partition("=")
        try:
            count = int(n) if n else 1000
        except ValueError:
            raise ValueError(f"--tasks: bad count in {item!r} (expected TASK=N)") from None
        tasks[normalize_task(name)] = count
    return tasks


def train_config(args: argparse.Namespace, tasks: dict[str, int]):
    """``TrainConfig`` of the package's own VLA from the flags (simulator tasks, or ``{}`` for bags)."""
    from kv_vla_ros.sim import normalize_task
    from kv_vla_ros.train.bc import TrainConfig
    from kv_vla_ros.vla import default_backbone

    cfg = TrainConfig(tasks=tasks, lr=3e-3 if args.lr is None else args.lr,
                      batch_tokens=args.batch_tokens,
                      max_steps=args.max_steps, minutes=args.minutes, seed=args.seed, threads=args.threads,
                      data_dir=args.data_dir, checkpoint_minutes=args.checkpoint_minutes)
    if args.scan_turns is not None:
        cfg.scan_turns = args.scan_turns
    if args.backbone:
        cfg.backbone = {**default_backbone(), **args.backbone}
    if args.vla is not None:
        cfg.vla = {**cfg.vla, **args.vla}
    if args.dagger_at is not None:
        cfg.dagger_at = list(args.dagger_at)
    if args.dagger_tasks is not None:
        cfg.dagger_tasks = [normalize_task(t) for t in args.dagger_tasks]
    cfg.focal_gamma = args.focal_gamma
    cfg.aux_weight = 1.0 if args.aux_weight is None else args.aux_weight
    if args.dagger_episodes is not None:
        cfg.dagger_episodes = args.dagger_episodes
    for name in ("evict_prob", "evict_from", "evict_held_chunks", "init_from", "log_every"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return cfg


@cli_errors("train")
def run_bags(args: argparse.Namespace) -> int:
    """``--bags``: π0 (``bag_cli``) or, by ``--policy-type``, the package's own VLA (``own_bags``)."""
    from kv_vla_ros.train.own_bags import resolve_policy_type, run_own_bags

    if resolve_policy_type(args) == "kv_vla":
        return run_own_bags(args, train_config(args, tasks={}))
    if args.action_bins is not None:
        raise ValueError("--action-bins: bins the kv_vla policy's actions (--policy-type kv_vla); π0 predicts them")
    for flag, name, default in OWN_VLA_ONLY:
        if getattr(args, name) != default:
            raise ValueError(f"{flag}: applies to the package's own VLA (simulator demonstrations, or --bags "
                             "--policy-type kv_vla); π0 from bags is shaped by --pi0-model, --chunk-size, "
                             "--actions-per-inference and --episodes-per-step")
    from kv_vla_ros.train.bag_cli import run_bags as run_pi0_bags

    return run_pi0_bags(args)


@cli_errors("train")
def run(args: argparse.Namespace) -> int:
    if args.bags:
        return run_bags(args)
    from kv_vla_ros.train.bag_cli import data_parallel

    if data_parallel(args):
        raise ValueError("--workers/--ray-address: data-parallel training reads --bags; simulator demonstrations "
                         "train in one process")
    if args.policy_type == "pi0":
        raise ValueError("--policy-type pi0: π0 trains from --bags; simulator demonstrations train kv_vla")
    if args.action_bins is not None:
        raise ValueError("--action-bins: applies to --bags --policy-type kv_vla")
    from kv_vla_ros.train.bc import train

    cfg = train_config(args, parse_tasks(args.tasks))
    train(cfg, args.out, resume=args.resume, progress_bar=not args.no_progress)
    print(f"model written to {args.out}")
    return 0
