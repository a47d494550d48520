"""Replay bags offline through `VLASession` (any policy: the package's own VLA or π0, with one or
more cameras and a robot state) under several cache configs, faster than real time
and with no ROS graph: agreement with the recorded actions and with the full cache, tokens and KV
bytes held, latency p50/p99 and FLOPs per step. Writes bag_eval.json, bag_eval.md and PNG plots
(tokens_held.png, gate_scores.png, agreement.png) into --out.

Many bags (several paths, or a directory whose subdirectories are bags) are one work item each,
spread over ``--workers`` processes or a Ray cluster (``--ray-address``); the table covers all
their episodes, bag_eval.json also has each bag's own rows (``per_bag``).

Cache specs: ``POLICY[:field=value,...]`` as for ``kv-vla eval`` (e.g. ``gated:budget_tokens=256``);
a ``full`` reference run is added when none is given.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kv_vla_ros.data.bagio import bag_paths  # noqa: F401 (re-exported: bag eval's paths rule)
from kv_vla_ros.data.errors import cli_errors


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.cache.spec import add_cache_argument
    from kv_vla_ros.parallel.runner import add_runner_arguments

    parser.add_argument("bag", nargs="+", help="rosbag2 directories (sqlite3 or mcap), single .db3/.mcap files, "
                                               "or directories of bags (every subdirectory with a metadata.yaml)")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    add_cache_argument(parser)
    parser.add_argument("--image-topic", action="append", default=None,
                        help="sensor_msgs/Image or CompressedImage topic (default /image); repeat it for more "
                             "cameras, in the policy's camera order (the first one drives the steps)")
    parser.add_argument("--camera-sync-slop-s", type=float, default=0.05,
                        help="pair every further camera (and the state) with the first camera's frame by header "
                             "stamp, the closest within this (kv_vla_node's camera_sync_slop_s); 0: arrival order")
    parser.add_argument("--state-topic", default=None,
                        help="robot state: sensor_msgs/JointState (positions) or std_msgs/Float32MultiArray")
    parser.add_argument("--instruction-topic", default="/instruction",
                        help="std_msgs/String; each message starts an episode")
    from kv_vla_ros.data.topic_flags import add_recording_arguments

    add_recording_arguments(parser, "recorded commands ('' if the bag has none)")
    parser.add_argument("--max-episodes", type=int, default=None, help="stop after this many episodes (per bag)")
    parser.add_argument("--flops-every", type=int, default=25, help="count FLOPs on every N-th inference (0: never)")
    parser.add_argument("--actions-per-inference", type=int, default=None,
                        help="infer on one recorded frame in N, each frame's action being the next of the chunk it "
                             "executes, as kv_vla_node and kv-vla eval run it (default: the checkpoint's; π0's "
                             "chunks, 1 for the package's own VLA)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (in-process run, --workers 1)")
    parser.add_argument("--out", required=True, help="output directory")
    add_runner_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")


@cli_errors("bag eval")
def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from kv_vla_ros.data.bagio import BagReader
    from kv_vla_ros.data.episodes import check_topics
    from kv_vla_ros.data.topic_flags import bag_topics
    from kv_vla_ros.eval.bag_eval import build_configs, check_inputs, merge_replays, replay_item
    from kv_vla_ros.eval.bag_report import markdown_table, write_report
    from kv_vla_ros.parallel.runner import Runner, runner_config

    topics = bag_topics(args, camera_sync_slop_s=args.camera_sync_slop_s)
    if args.camera_sync_slop_s < 0:
        raise ValueError(f"--camera-sync-slop-s: must be >= 0, got {args.camera_sync_slop_s}")
    if args.max_episodes is not None and args.max_episodes < 1:
        raise ValueError(f"--max-episodes: must be >= 1, got {args.max_episodes}")
    if args.actions_per_inference is not None and args.actions_per_inference < 1:
        raise ValueError(f"--actions-per-inference: must be >= 1, got {args.actions_per_inference}")
    config = runner_config(args, progress=not args.no_progress)
    bags, frames = bag_paths(args.bag), []
    for path in bags:
        with BagReader(path) as bag:  # a bad bag fails in a second, before the model loads
            check_topics(bag, topics)
            frames.append(bag.topics[topics.image][1])
    import torch

    from kv_vla_ros.vla import load_policy, model_path_or_default

    torch.set_num_threads(args.threads)
    model_path = Path(model_path_or_default(args.model))
    if not (model_path / "config.json").is_file():
        raise ValueError(f"--model: no checkpoint at {model_path} (expected config.json there)")
    model = load_policy(str(model_path))  # the package's own VLA or π0, by config.json model_type
    configs = build_configs(model, args.cache or ["full"])  # a bad spec fails before the bag is read
    names = getattr(model, "state_names", None)  # the checkpoint's joints and rate: JointState read by name
    topics = replace(topics, state_names=tuple(names) if names else None,
                     default_rate_hz=getattr(model, "control_rate_hz", None))
    check_inputs(model, topics)
    t0 = time.perf_counter()
    items = [(str(path), configs, topics, args.flops_every, args.max_episodes, args.actions_per_inference)
             for path in bags]
    with Runner(load_policy, (str(model_path),), config, total=sum(frames), unit="frame",
                desc=f"bag eval {len(bags)} bag(s) x {len(configs)} configs", local_state=model) as runner:
        replays = runner.map(replay_item, items, units=frames)
        workers = runner.workers
    result = merge_replays(replays, model, topics, args.flops_every)
    wall = time.perf_counter() - t0
    result["meta"].update({"model": str(model_path), "wall_s": wall, "threads": args.threads, "workers": workers,
                           "realtime_factor": result["meta"]["bag_duration_s"] / wall})
    paths = write_report(result, args.out)
    m = result["meta"]
    print(f"{m['bag']}: {m['episodes']} episodes, {m['steps']} steps, {m['bag_duration_s']:.1f} s of bag in "
          f"{m['wall_s']:.1f} s ({m['realtime_factor']:.2f}x real time, {len(result['results'])} configs; "
          f"typestore {m['typestore']})")
    if m["frames_without_instruction"]:
        print(f"note: {m['frames_without_instruction']} frames came before any instruction on "
              f"{m['instruction_topic']} and were skipped")
    print(markdown_table(result), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


__all__ = ["configure", "run", "bag_paths"]
