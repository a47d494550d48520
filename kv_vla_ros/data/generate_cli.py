"""``kv-vla bag generate``: simulator episodes (the expert's, or a checkpoint's in closed loop) written
straight into a bag (``kv_vla_ros.data.generate``), the rollouts spread over ``--workers`` processes
(the package's Ray runner) while this process writes the bag in seed order.

Arm tasks (``Arm-CueCarryShort``, ``Arm-CueCarryLong``, ``Arm-CueCarryDistract``) also record
``sensor_msgs/JointState`` on ``--state-topic`` (default ``/joint_states``) and 4-dimensional actions;
``--split train`` writes demonstrations from the training seeds (never the held-out ones ``kv-vla eval`` scores on).
"""

from __future__ import annotations

import argparse

from kv_vla_ros.data.bagio import STORAGES
from kv_vla_ros.data.errors import cli_errors
from kv_vla_ros.data.generate import DEFAULT_TOPICS, ROLES, generate_bag
from kv_vla_ros.sim import SPLITS, split_seeds

BATCH = 8  # seeds per work item: a worker's result stays a few tens of MB at most


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.parallel.runner import add_runner_arguments

    parser.add_argument("-o", "--output", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--task", default="MiniGrid-MemoryS13Random-v0",
                        help="simulator task (MiniGrid/BabyAI, or an arm task: Arm-CueCarryShort, Arm-CueCarryLong, "
                             "Arm-CueCarryDistract)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes (seeds) to write")
    parser.add_argument("--split", choices=SPLITS, default="eval",
                        help="seed range: eval (held out, what kv-vla eval scores) or train (demonstrations)")
    parser.add_argument("--seed-offset", type=int, default=0, help="offset into the split's seed range")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="sqlite3")
    parser.add_argument("--frame-rate", type=float, default=10.0,
                        help="camera and control rate in Hz (header stamp spacing; the arm tasks run at 10 Hz)")
    parser.add_argument("--frame-size", type=int, default=None, help="frame side in pixels (default: 56 MiniGrid, "
                                                                     "64 arm)")
    parser.add_argument("--max-steps", type=int, default=None, help="episode step cap (default: the task's)")
    parser.add_argument("--start-time", type=float, default=None,
                        help="first stamp in seconds since the epoch (default: now)")
    for role in ROLES:
        parser.add_argument(f"--{role}-topic", default=DEFAULT_TOPICS[role],
                            help="sensor_msgs/JointState, arm tasks only" if role == "state" else None)
    parser.add_argument("--driver", choices=("expert", "model"), default="expert",
                        help="who acts: the simulator's expert, or --model in closed loop (full cache)")
    parser.add_argument("--model", default=None, help="checkpoint for --driver model (default: the shipped model)")
    add_runner_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")


def rollout_worker(task: str, frame_size, max_steps) -> dict:
    """A worker's state: one robot and its expert."""
    from kv_vla_ros.sim import make_sim
    from kv_vla_ros.sim.rollout import make_expert_for

    robot = make_sim(task, frame_size, max_steps)
    return {"robot": robot, "expert": make_expert_for(robot)}


def rollout_batch(state: dict, item: tuple, tick=None) -> list:
    """``(first episode index, seeds)`` -> their expert `Rollout` s, in order."""
    from kv_vla_ros.sim.rollout import expert_rollout

    first, seeds = item
    out = []
    for k, seed in enumerate(seeds):
        out.append(expert_rollout(state["robot"], state["expert"], seed, first + k))
        if tick is not None:
            tick(1)
    return out


def parallel_rollouts(args, seeds: list[int], config):
    """Expert rollouts of ``seeds`` on the runner's workers, yielded in seed order as they finish."""
    import queue
    import threading

    from kv_vla_ros.parallel.runner import Runner

    batches = [(i, seeds[i:i + BATCH]) for i in range(0, len(seeds), BATCH)]
    done: queue.Queue = queue.Queue()
    ready: dict[int, list] = {}

    def produce() -> None:
        try:
            with Runner(rollout_worker, (args.task, args.frame_size, args.max_steps), config, total=len(seeds),
                        desc=f"bag generate {args.task}") as runner:
                runner.map(rollout_batch, batches, units=[len(b[1]) for b in batches],
                           on_result=lambda i, value: done.put((i, value)))
        except Exception as exc:  # noqa: BLE001  (any failure is handed to the writer, which aborts the bag)
            done.put((-1, exc))
        done.put((None, None))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    want = 0
    while want < len(batches):
        i, value = done.get()
        if i == -1:
            raise value
        if i is None:
            break
        ready[i] = value
        while want in ready:  # results arrive in any order: write in seed order
            yield from ready.pop(want)
            want += 1
    thread.join()


@cli_errors("bag generate")
def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.parallel.runner import runner_config
    from kv_vla_ros.sim import normalize_task

    normalize_task(args.task)  # a bad task fails before any worker starts
    start = None if args.start_time is None else int(args.start_time * 1e9)
    topics = {r: getattr(args, f"{r}_topic") for r in ROLES}
    config = runner_config(args, progress=not args.no_progress)
    model = rollouts = None
    if args.driver == "model":
        from pathlib import Path

        import torch

        from kv_vla_ros.vla import VLAModel, model_path_or_default

        torch.set_num_threads(1)
        path = Path(model_path_or_default(args.model))
        if not (path / "config.json").is_file():
            raise ValueError(f"--model: no checkpoint at {path} (expected config.json there)")
        model = VLAModel.from_pretrained(str(path))
    elif args.model:
        raise ValueError("--model: only used with --driver model")
    elif config.uses_ray:
        seeds = split_seeds(args.split, args.episodes, args.seed_offset)  # a bad range fails before Ray starts
        rollouts = parallel_rollouts(args, seeds, config)
    s = generate_bag(args.output, args.task, args.episodes, args.seed_offset, args.storage, args.frame_rate,
                     args.frame_size, args.max_steps, start, topics, progress=not args.no_progress and rollouts is None,
                     model=model, split=args.split, rollouts=rollouts)
    rate = s["successes"] / s["episodes"]
    print(f"wrote {s['output']} ({args.storage}): {s['episodes']} episodes of {s['task']} ({args.split} seeds), "
          f"{s['steps']} steps, {s['driver']} success {rate:.0%}")
    return 0


__all__ = ["configure", "rollout_batch", "rollout_worker", "run"]
